"""The model factory shared by SFT, DPO and GRPO: model + tokenizer + PEFT plan from config.

`model:` config section (schema: ModelConfig). `name_or_path` is a hub id, a local folder, or
`tiny://base` / `tiny://sft` for the tiny model align builds itself (see align/tiny.py).
The adapter itself is not applied here: the PEFT config goes to trl's trainer, which wraps
the model (and, for DPO, uses the base model with the adapter disabled as its reference).

`kind` selects the Auto classes:
  causal_lm            AutoModelForCausalLM + AutoTokenizer (text)
  image_text_to_text   AutoModelForImageTextToText + AutoProcessor (vision-language models:
                       LLaVA, Qwen2-VL / Qwen2.5-VL, Gemma 3, Idefics3 ...; `tiny://vlm` offline).
                       The processor is the trainers' processing_class; it is saved with the model.
                       `freeze_vision_tower` / `freeze_projector` / `freeze_language_model` stop
                       those parts from training (full fine-tuning); `peft.apply_to` says where
                       adapters go. `min_pixels` / `max_pixels` bound the image resolution for
                       processors that resize dynamically (the Qwen2-VL family).

    python align/sft.py model=tiny_vlm data=shapes                 # offline, CPU
    python align/sft.py model=tiny_vlm model.freeze_vision_tower=true data=local_vlm \
        data.path=data.json data.image_folder=images/
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from align.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
KINDS = ("causal_lm", "image_text_to_text")
#: Kinds whose processing class is a processor (tokenizer + image processor) and whose data keep images.
VISION_KINDS = ("image_text_to_text",)
#: Attribute names (on the model or its `.model`) of the parts of a vision-language model, across
#: the architectures transformers ships: LLaVA/Gemma 3 (vision_tower, multi_modal_projector),
#: Qwen2-VL family (visual, with the projector `visual.merger`), Idefics3/SmolVLM (vision_model,
#: connector).
VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model")
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector")
LANGUAGE_MODEL_NAMES = ("language_model",)


@dataclass
class ModelConfig:
    #: hub id, local folder, or tiny://base | tiny://sft
    name_or_path: str = "tiny://base"
    revision: Optional[str] = None
    #: tokenizer to load when it differs from the model's
    tokenizer: Optional[str] = None
    #: auto = bfloat16 on a CUDA GPU that supports it, float32 otherwise
    dtype: str = "auto"
    #: auto = flash_attention_2 when flash-attn is installed and a GPU is present, else sdpa
    attn_implementation: str = "auto"
    #: off unless asked: it runs code from the model's repository
    trust_remote_code: bool = False
    #: true | false | auto: on only when the job would not fit in 80% of the GPU without it
    #: (align.plan; it costs ~1.3x the step time); off on CPU
    gradient_checkpointing: Any = "auto"
    #: a Jinja chat template (string or path to a file) for tokenizers without one
    chat_template: Optional[str] = None
    #: pad token to use when the tokenizer has none (default: its eos token)
    pad_token: Optional[str] = None
    #: causal_lm | image_text_to_text
    kind: str = "causal_lm"
    #: extra keyword arguments for from_pretrained
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    #: vision-language models: image resolution bounds in pixels (processors that take them)
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    #: vision-language models: extra keyword arguments for AutoProcessor.from_pretrained
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    #: vision-language models, full fine-tuning: keep these parts at their loaded weights
    freeze_vision_tower: bool = False
    freeze_projector: bool = False
    freeze_language_model: bool = False


def check_model_config(cfg: ModelConfig) -> list[str]:
    """Value checks that need no torch: choices and optional packages."""
    errors = []
    if cfg.dtype not in DTYPES:
        errors.append(f"model.dtype={cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
    if cfg.attn_implementation not in ATTENTION:
        errors.append(f"model.attn_implementation={cfg.attn_implementation!r}: choose one of "
                      f"{', '.join(ATTENTION)}")
    if cfg.kind not in KINDS:
        errors.append(f"model.kind={cfg.kind!r}: choose one of {', '.join(KINDS)}")
    if cfg.gradient_checkpointing not in (True, False, "auto"):
        errors.append(f"model.gradient_checkpointing={cfg.gradient_checkpointing!r}: choose "
                      "true, false or auto")
    if cfg.attn_implementation.startswith("flash_attention") and not _has("flash_attn"):
        raise MissingExtraError(f"model.attn_implementation={cfg.attn_implementation}",
                                "flash-attn", "flash-attn")
    if "trust_remote_code" in cfg.model_kwargs:
        errors.append("set model.trust_remote_code, not model.model_kwargs.trust_remote_code")
    vision_keys = [k for k in ("min_pixels", "max_pixels", "processor_kwargs", "freeze_vision_tower",
                               "freeze_projector", "freeze_language_model") if getattr(cfg, k)]
    if cfg.kind not in VISION_KINDS:
        errors += [f"model.{k} applies to vision-language models (model.kind=image_text_to_text)"
                   for k in vision_keys]
    else:
        for key in ("min_pixels", "max_pixels"):
            value = getattr(cfg, key)
            if value is not None and value < 1:
                errors.append(f"model.{key}={value} must be a positive number of pixels")
        if cfg.min_pixels and cfg.max_pixels and cfg.min_pixels > cfg.max_pixels:
            errors.append(f"model.min_pixels={cfg.min_pixels} is above model.max_pixels={cfg.max_pixels}")
        if cfg.freeze_vision_tower and cfg.freeze_projector and cfg.freeze_language_model:
            errors.append("model.freeze_vision_tower, freeze_projector and freeze_language_model are "
                          "all true: nothing would train")
        if cfg.tokenizer:
            errors.append("model.tokenizer does not apply to vision-language models: the processor "
                          "(tokenizer + image processor) is loaded from model.name_or_path")
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise MissingExtraError("model.kind=image_text_to_text", "vision", "pillow") from None
    return errors


def check_vision_peft(cfg: ModelConfig, peft_section: Any) -> list[str]:
    """Combinations of model and `peft:` options that contradict each other."""
    from align.config import to_container

    section = to_container(peft_section) or {}
    apply_to = section.get("apply_to")
    errors = []
    if apply_to is not None and cfg.kind not in VISION_KINDS:
        errors.append("peft.apply_to chooses the parts of a vision-language model; remove it for "
                      f"model.kind={cfg.kind}")
    if section.get("method", "none") != "none" and cfg.kind in VISION_KINDS:
        frozen = [k for k in ("freeze_vision_tower", "freeze_projector", "freeze_language_model")
                  if getattr(cfg, k)]
        if frozen:
            errors.append(f"model.{frozen[0]} is for full fine-tuning; with an adapter the base stays "
                          "frozen anyway: choose where adapters go with peft.apply_to="
                          "language_model|all")
    return errors


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_dtype(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def resolve_attention(name: str) -> str:
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available() and _has("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def resolve_path(name_or_path: str) -> str:
    from align.tiny import resolve_model_path

    return resolve_model_path(name_or_path)


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer with a pad token and a chat template, ready for trl."""
    from transformers import AutoTokenizer

    source = resolve_path(cfg.tokenizer or cfg.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
    )
    if cfg.chat_template:
        tokenizer.chat_template = _chat_template(cfg)
    _ensure_pad_token(tokenizer, cfg, source)
    return tokenizer


def _chat_template(cfg: ModelConfig) -> str:
    """model.chat_template: a Jinja string, or the path of a file holding one."""
    template = cfg.chat_template
    return Path(template).read_text() if Path(template).is_file() else template


def _ensure_pad_token(tokenizer, cfg: ModelConfig, source: str) -> None:
    if tokenizer.pad_token is not None:
        return
    if cfg.pad_token:
        tokenizer.pad_token = cfg.pad_token
    elif tokenizer.eos_token is not None:
        # Safe for training: trl masks padding by the attention mask, not by token id.
        tokenizer.pad_token = tokenizer.eos_token
    else:
        raise ConfigError(f"tokenizer of {source} has neither a pad nor an eos token: set "
                          "model.pad_token")


def load_processor(cfg: ModelConfig):
    """The processor of a vision-language model (tokenizer + image processor), its tokenizer
    given a pad token and the chat template as for text models."""
    from transformers import AutoProcessor

    source = resolve_path(cfg.name_or_path)
    kwargs = dict(cfg.processor_kwargs)
    processor = AutoProcessor.from_pretrained(
        source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **kwargs
    )
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise ConfigError(f"model.kind=image_text_to_text, but {source} has no image processor "
                          f"(AutoProcessor gave {type(processor).__name__}); use model.kind=causal_lm")
    bounds = {k: v for k, v in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels))
              if v is not None}
    if bounds:
        if not _takes_pixel_bounds(processor.image_processor):
            raise ConfigError(
                f"model.min_pixels/max_pixels: the image processor of {source} "
                f"({type(processor.image_processor).__name__}) resizes every image to a fixed size, so "
                "pixel bounds do not apply; set its size with model.processor_kwargs (e.g. "
                "'{size: {shortest_edge: 336}}')")
        # Given at load time, the processor sets its resize bounds from them (size.shortest_edge /
        # longest_edge in pixels), as Qwen2-VL-Finetune's --image_min_pixels/--image_max_pixels do.
        processor = AutoProcessor.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
            **kwargs, **bounds)
    if cfg.chat_template:
        processor.chat_template = processor.tokenizer.chat_template = _chat_template(cfg)
    _ensure_pad_token(processor.tokenizer, cfg, source)
    return processor


def _takes_pixel_bounds(image_processor) -> bool:
    # Image processors declare the keyword arguments they take (valid_kwargs); the Qwen2-VL
    # family takes min_pixels / max_pixels, fixed-size ones (LLaVA, Gemma 3) do not.
    valid = getattr(type(image_processor), "valid_kwargs", None)
    return "min_pixels" in getattr(valid, "__annotations__", {})


def load_processing_class(cfg: ModelConfig):
    """What trl's trainers take as processing_class: the tokenizer of a text model, the processor
    of a vision-language model. Also what merge/export saves next to a model."""
    if cfg.kind in VISION_KINDS:
        return load_processor(cfg)
    return load_tokenizer(cfg)


def load_model(cfg: ModelConfig, quantization: dict[str, Any] | None = None):
    """Load the model (optionally 4/8-bit through bitsandbytes for QLoRA)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    kwargs.update(
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        dtype=resolve_dtype(cfg.dtype),
        attn_implementation=resolve_attention(cfg.attn_implementation),
    )
    if quantization:
        from transformers import BitsAndBytesConfig

        quant = dict(quantization)
        if "bnb_4bit_compute_dtype" not in quant:
            quant["bnb_4bit_compute_dtype"] = kwargs["dtype"]
        kwargs["quantization_config"] = BitsAndBytesConfig(**quant)
    path = resolve_path(cfg.name_or_path)
    log.info("loading %s (%s, attention=%s)", path, kwargs["dtype"], kwargs["attn_implementation"])
    auto = AutoModelForImageTextToText if cfg.kind in VISION_KINDS else AutoModelForCausalLM
    model = auto.from_pretrained(path, **kwargs)
    if cfg.kind in VISION_KINDS:
        freeze_parts(model, cfg)
    if cfg.gradient_checkpointing is True:
        # KV caching is useless with checkpointing during training and transformers warns.
        model.config.use_cache = False
    return model


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


def build_model(model_cfg: ModelConfig, peft_section: Any):
    """(model, processing class, peft plan) for any stage. The trainer applies the adapter.

    The processing class is the tokenizer for text models and the processor for
    vision-language models; pass it to trl as processing_class either way."""
    from align.adapters import build_peft_plan, target_vision_parts

    errors = check_vision_peft(model_cfg, peft_section)
    if errors:
        raise ConfigError("; ".join(errors))
    plan = build_peft_plan(peft_section)
    processing_class = load_processing_class(model_cfg)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    model = load_model(model_cfg, plan.quantization)
    if model_cfg.kind in VISION_KINDS:
        target_vision_parts(plan, model)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processing_class, plan
