"""The `model:` config section (ModelConfig) and its value checks, which need no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from align.errors import MissingExtraError

DTYPES = ("auto", "float32", "bfloat16", "float16")


#: The attention implementations transformers 5 names, and auto (align.device.attention). A hub
#: kernel is accepted too, named as transformers takes it: `org/repo[@revision][:kernel]`, e.g.
#: kernels-community/flash-attn3 (the `kernels` extra; the run spec checks the name with
#: transformers' own pattern).
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3",
             "flash_attention_4", "flex_attention")


KINDS = ("causal_lm", "image_text_to_text", "sequence_classification")


#: peft's task type for each kind: a sequence classifier's score head is new (randomly
#: initialised), so peft trains and saves it in full beside the adapter (SEQ_CLS).
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "image_text_to_text": "CAUSAL_LM",
                   "sequence_classification": "SEQ_CLS"}


#: Kinds whose processing class is a processor (tokenizer + image processor) and whose data keep images.
VISION_KINDS = ("image_text_to_text",)


@dataclass(frozen=True)
class ModelConfig:
    #: hub id, local folder, or tiny://base | tiny://sft
    name_or_path: str = "tiny://base"
    revision: Optional[str] = None
    #: tokenizer to load when it differs from the model's
    tokenizer: Optional[str] = None
    #: auto = bfloat16 on a CUDA GPU that supports it, float32 otherwise
    dtype: str = "auto"
    #: auto = the best FlashAttention installed for the GPU (FA3 on Hopper, FA4 on Blackwell,
    #: else flash-attn 2; align.device.attention), sdpa otherwise; or a hub kernel
    #: (kernels-community/flash-attn3)
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
    #: causal_lm | image_text_to_text | sequence_classification (one scalar score per sequence,
    #: num_labels=1, read at the last non-pad token: what a reward model is; the rm stage's)
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

    @property
    def is_vision(self) -> bool:
        """A vision-language model: its processing class is a processor and its data keep images."""
        return self.kind in VISION_KINDS


def check_model_config(cfg: ModelConfig) -> list[str]:
    """Value checks that need no torch: choices and optional packages."""
    errors = []
    if cfg.dtype not in DTYPES:
        errors.append(f"model.dtype={cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
    if cfg.attn_implementation not in ATTENTION and "/" not in str(cfg.attn_implementation):
        errors.append(f"model.attn_implementation={cfg.attn_implementation!r}: choose one of "
                      f"{', '.join(ATTENTION)}, or a hub kernel such as "
                      "kernels-community/flash-attn3")
    if cfg.kind not in KINDS:
        errors.append(f"model.kind={cfg.kind!r}: choose one of {', '.join(KINDS)}")
    if cfg.gradient_checkpointing not in (True, False, "auto"):
        errors.append(f"model.gradient_checkpointing={cfg.gradient_checkpointing!r}: choose "
                      "true, false or auto")
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
    from align.schema import to_container

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
