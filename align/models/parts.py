"""The parts of a vision-language model (vision tower, projector, language model) found by
module name across the architectures transformers ships, and freezing them."""

from __future__ import annotations

import logging

from align.errors import ConfigError
from align.models.config import ModelConfig

log = logging.getLogger(__name__)

#: Attribute names (on the model or its `.model`) of the parts of a vision-language model, across
#: the architectures transformers ships: LLaVA/Gemma 3 (vision_tower, multi_modal_projector),
#: Qwen2-VL family (visual, with the projector `visual.merger`), Idefics3/SmolVLM (vision_model,
#: connector).
VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model")


PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector")


LANGUAGE_MODEL_NAMES = ("language_model",)


def vision_parts(model) -> dict[str, list[str]]:
    """Parameter-name prefixes of each part of a vision-language model:
    {"vision_tower": [...], "projector": [...], "language_model": [...]}.

    A projector that lives inside the vision tower (Qwen2-VL's `visual.merger`) counts as the
    projector, not the tower."""
    import torch

    prefixes: dict[str, list[str]] = {"vision_tower": [], "projector": [], "language_model": []}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if not isinstance(module, torch.nn.Module) or not name:
            continue
        for part, names in (("vision_tower", VISION_TOWER_NAMES), ("projector", PROJECTOR_NAMES),
                            ("language_model", LANGUAGE_MODEL_NAMES)):
            # the outermost match only (a language model has no nested "language_model")
            if leaf in names and not any(name.startswith(p + ".") for p in prefixes[part]):
                prefixes[part].append(name)
    if not prefixes["vision_tower"] or not prefixes["language_model"]:
        raise ConfigError(f"{type(model).__name__}: cannot find its vision tower "
                          f"({'/'.join(VISION_TOWER_NAMES)}) and language model "
                          f"({'/'.join(LANGUAGE_MODEL_NAMES)}) modules")
    return prefixes


def part_of(name: str, parts: dict[str, list[str]]) -> str | None:
    """Which part a parameter/module name belongs to (projector before tower: it may nest)."""
    for part in ("projector", "vision_tower", "language_model"):
        if any(name == p or name.startswith(p + ".") for p in parts[part]):
            return part
    return None


def freeze_parts(model, cfg: ModelConfig) -> None:
    frozen = {part for part, flag in (("vision_tower", cfg.freeze_vision_tower),
                                      ("projector", cfg.freeze_projector),
                                      ("language_model", cfg.freeze_language_model)) if flag}
    if not frozen:
        return
    parts = vision_parts(model)
    if "projector" in frozen and not parts["projector"]:
        raise ConfigError(f"model.freeze_projector: {type(model).__name__} has no projector module "
                          f"({'/'.join(PROJECTOR_NAMES)})")
    count = 0
    for name, param in model.named_parameters():
        if part_of(name, parts) in frozen:
            param.requires_grad_(False)
            count += param.numel()
    log.info("froze %s: %d parameters", ", ".join(sorted(frozen)), count)
