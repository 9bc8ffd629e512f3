"""PEFT methods as one table: the `peft:` config group maps onto peft's own config classes.

`conf/peft/<method>.yaml` holds `method: <name>` plus fields of the peft config class that the
method uses (LoraConfig for the LoRA family, PromptTuningConfig / PromptEncoderConfig for
prompt methods), so every peft option can be set from config and typos are caught against
peft's own dataclass. Two keys are align's own:

- `quantization`: BitsAndBytesConfig arguments for loading the base model in 4/8 bit (QLoRA);
- `optimizer_8bit`: full fine-tuning with bitsandbytes' 8-bit AdamW (`method: none` only);
- `apply_to` (vision-language models, LoRA family): `language_model` (the default; adapters on the
  language model only, vision tower and projector frozen: Qwen2-VL-Finetune's "LoRA") or `all`
  (also on the vision tower and the projector: its "LoRA-vision"). `target_modules` then names
  linear layers inside those parts (default: all of them), resolved on the loaded model.

Supported methods: none (full fine-tuning), lora, qlora, dora, rslora, loftq, pissa,
prompt_tuning, p_tuning. Target modules default to every linear layer but the output head
(peft's "all-linear").
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from align.errors import ConfigError, MissingExtraError
from align.schema import init_params, suggest, to_container, unknown_keys

ALIGN_KEYS = ("method", "quantization", "optimizer_8bit", "apply_to")
#: Where adapters go on a vision-language model (see the module docstring).
APPLY_TO = {"language_model": ("language_model",),
            "all": ("language_model", "vision_tower", "projector")}


@dataclass(frozen=True)
class Method:
    config_class: str  # name of the peft config class
    fixed: dict[str, Any] = field(default_factory=dict)  # kwargs the method implies
    quantized: bool = False  # base model loaded through bitsandbytes
    needs_bitsandbytes: bool = False  # peft uses bitsandbytes' quantiser (LoftQ)
    needs_accelerator: bool = False  # peft computes the initialisation on CUDA/XPU only


METHODS: dict[str, Method | None] = {
    "none": None,
    "lora": Method("LoraConfig"),
    "qlora": Method("LoraConfig", quantized=True),
    "dora": Method("LoraConfig", {"use_dora": True}),
    "rslora": Method("LoraConfig", {"use_rslora": True}),
    # LoftQ initialises A/B so that base + adapter approximates the full-precision weights
    # of a quantised base; peft computes it from the unquantised weights at wrap time.
    "loftq": Method("LoraConfig", {"init_lora_weights": "loftq"},
                    needs_bitsandbytes=True, needs_accelerator=True),
    # PiSSA: adapters start from the principal singular vectors (fast SVD, 4 iterations).
    "pissa": Method("LoraConfig", {"init_lora_weights": "pissa_niter_4"}),
    "prompt_tuning": Method("PromptTuningConfig"),
    "p_tuning": Method("PromptEncoderConfig"),
}

DEFAULT_QUANTIZATION = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
}


@dataclass(frozen=True)
class PeftPlan:
    """What the factory needs: the peft config (None = full fine-tuning) and how to load."""

    method: str
    peft_config: Any = None
    quantization: dict[str, Any] | None = None
    optimizer_8bit: bool = False
    #: vision-language models: the parts that get adapters (peft.apply_to), None for text models
    apply_to: str | None = None

    @property
    def uses_adapter(self) -> bool:
        return self.peft_config is not None


def check_peft_section(section: Any) -> list[str]:
    """Validate the `peft:` section against peft's config classes, without importing torch."""
    section = to_container(section) or {}
    method = section.get("method", "none")
    if method not in METHODS:
        return [f"unknown peft method 'peft.method={method}'. Choose one of: "
                f"{', '.join(METHODS)}.{suggest(str(method), METHODS)}"]
    spec = METHODS[method]
    rest = {k: v for k, v in section.items() if k not in ALIGN_KEYS}
    errors: list[str] = []
    if spec is None:
        errors += [f"config key 'peft.{k}' has no meaning with peft.method=none (full "
                   f"fine-tuning); choose an adapter method, e.g. peft=lora" for k in rest]
    else:
        from align.fields import PEFT_CONFIGS, dataclass_fields

        fields = dataclass_fields(PEFT_CONFIGS[spec.config_class], spec.config_class)
        errors += unknown_keys(rest, fields, "peft", f"peft.{spec.config_class}")
    apply_to = section.get("apply_to")
    if apply_to is not None:
        if apply_to not in APPLY_TO:
            errors.append(f"peft.apply_to={apply_to!r}: choose one of {', '.join(APPLY_TO)}")
        elif not (spec and spec.config_class == "LoraConfig"):
            errors.append(f"peft.apply_to applies to the LoRA family (got peft={method})")
    if section.get("optimizer_8bit") and method != "none":
        errors.append("peft.optimizer_8bit applies to full fine-tuning (peft=none) only")
    if section.get("quantization") and not (spec and spec.quantized):
        errors.append(f"peft.quantization is used by peft=qlora only (got peft={method})")
    if spec and spec.quantized and section.get("quantization"):
        from transformers import BitsAndBytesConfig

        errors += unknown_keys(section["quantization"], init_params(BitsAndBytesConfig),
                               "peft.quantization", "transformers.BitsAndBytesConfig")
    if (spec and (spec.quantized or spec.needs_bitsandbytes)) or section.get("optimizer_8bit"):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise MissingExtraError(f"peft={method}", "quant", "bitsandbytes")
    return errors


def build_peft_plan(section: Any, vision: bool = False, task_type: str = "CAUSAL_LM") -> PeftPlan:
    """Turn a checked `peft:` section into peft/transformers objects (peft's own checks run
    here: ValueError/TypeError for values it rejects). `vision`: a vision-language model, whose
    LoRA adapters go on the language model unless peft.apply_to says otherwise. `task_type`:
    peft's, from the model's kind (models.config.PEFT_TASK_TYPES); SEQ_CLS makes peft train and
    save the score head in full (its modules_to_save) next to the adapter."""
    section = dict(to_container(section) or {})
    method = section.pop("method", "none")
    quantization = section.pop("quantization", None)
    optimizer_8bit = bool(section.pop("optimizer_8bit", False))
    apply_to = section.pop("apply_to", None)
    spec = METHODS[method]
    if spec is None:
        return PeftPlan(method, optimizer_8bit=optimizer_8bit)
    import peft

    kwargs: dict[str, Any] = {"task_type": task_type, **spec.fixed, **section}
    if spec.config_class == "LoraConfig":
        kwargs.setdefault("target_modules", "all-linear")
        if method == "loftq" and not kwargs.get("loftq_config"):
            kwargs["loftq_config"] = {"loftq_bits": 4, "loftq_iter": 1}
        if isinstance(kwargs.get("loftq_config"), dict):
            kwargs["loftq_config"] = peft.LoftQConfig(**kwargs["loftq_config"])
    config = getattr(peft, spec.config_class)(**kwargs)
    if vision and spec.config_class == "LoraConfig":
        apply_to = apply_to or "language_model"
    if spec.quantized:
        quantization = {**DEFAULT_QUANTIZATION, **(quantization or {})}
    return PeftPlan(method, config, quantization, optimizer_8bit, apply_to)


def target_vision_parts(config, apply_to: str | None, model) -> None:
    """Point a LoRA-family adapter config of a vision-language model at the parts `apply_to`
    names (peft.apply_to, default language_model).

    peft's "all-linear" would put adapters on the vision tower and projector too; here
    target_modules becomes the explicit list of linear layers (full module names) inside the
    chosen parts, keeping the user's own target names when given (e.g. [q_proj, v_proj]). A regex
    string is the user's exact choice and is left alone.
    """
    import torch

    from align.models.parts import part_of, vision_parts

    if config is None or not hasattr(config, "target_modules"):
        return
    wanted = config.target_modules
    if isinstance(wanted, str) and wanted != "all-linear":
        return
    names = None if wanted in (None, "all-linear") else set(wanted)
    parts = vision_parts(model)
    keep = APPLY_TO[apply_to or "language_model"]
    output = model.get_output_embeddings()
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        if part_of(name, parts) not in keep:
            continue
        if names is None or name.rsplit(".", 1)[-1] in names:
            targets.append(name)
    if not targets:
        raise ConfigError(f"peft.target_modules={sorted(names) if names else wanted} matches no linear "
                          f"layer in the {' / '.join(keep)} of {type(model).__name__}")
    config.target_modules = set(targets)
