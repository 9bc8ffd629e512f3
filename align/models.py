"""The model factory shared by SFT, DPO and GRPO: model + tokenizer + PEFT plan from config.

`model:` config section (schema: ModelConfig). `name_or_path` is a hub id, a local folder, or
`tiny://base` / `tiny://sft` for the tiny model align builds itself (see align/tiny.py).
The adapter itself is not applied here: the PEFT config goes to trl's trainer, which wraps
the model (and, for DPO, uses the base model with the adapter disabled as its reference).

`kind` selects the Auto class; only causal language models are wired today, and the
vision-language kind plugs in here (AutoModelForImageTextToText + AutoProcessor).
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
KINDS = ("causal_lm",)


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
    gradient_checkpointing: bool = False
    #: a Jinja chat template (string or path to a file) for tokenizers without one
    chat_template: Optional[str] = None
    #: pad token to use when the tokenizer has none (default: its eos token)
    pad_token: Optional[str] = None
    kind: str = "causal_lm"
    #: extra keyword arguments for from_pretrained
    model_kwargs: dict[str, Any] = field(default_factory=dict)


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
    if cfg.attn_implementation.startswith("flash_attention") and not _has("flash_attn"):
        raise MissingExtraError(f"model.attn_implementation={cfg.attn_implementation}",
                                "flash-attn", "flash-attn")
    if "trust_remote_code" in cfg.model_kwargs:
        errors.append("set model.trust_remote_code, not model.model_kwargs.trust_remote_code")
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
        template = cfg.chat_template
        if Path(template).is_file():
            template = Path(template).read_text()
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        if cfg.pad_token:
            tokenizer.pad_token = cfg.pad_token
        elif tokenizer.eos_token is not None:
            # Safe for training: trl masks padding by the attention mask, not by token id.
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ConfigError(f"tokenizer of {source} has neither a pad nor an eos token: set "
                              "model.pad_token")
    return tokenizer


def load_model(cfg: ModelConfig, quantization: dict[str, Any] | None = None):
    """Load the model (optionally 4/8-bit through bitsandbytes for QLoRA)."""
    from transformers import AutoModelForCausalLM

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
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if cfg.gradient_checkpointing:
        # KV caching is useless with checkpointing during training and transformers warns.
        model.config.use_cache = False
    return model


def build_model(model_cfg: ModelConfig, peft_section: Any):
    """(model, tokenizer, peft plan) for any stage. The trainer applies the adapter."""
    from align.adapters import build_peft_plan

    plan = build_peft_plan(peft_section)
    tokenizer = load_tokenizer(model_cfg)
    model = load_model(model_cfg, plan.quantization)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, plan
