"""Loading: tokenizer or processor (with pad token and chat template), the model (optionally
quantised), and `build_model`, the one factory every stage calls."""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

from align.device import (
    LOAD_CPU,
    DeviceFacts,
    Placement,
    attention,
    check_placement,
    model_dtype,
)
from align.errors import ConfigError
from align.models.adapters import PeftPlan
from align.models.config import VISION_KINDS, ModelConfig
from align.models.parts import freeze_parts

log = logging.getLogger(__name__)


def decide_for_device(cfg: ModelConfig, facts: DeviceFacts | None = None) -> ModelConfig:
    """`cfg` with dtype and attention kernel decided for the device (align.device): "auto"
    becomes what this machine (or the given facts) runs best. The run spec decides these at
    parse; eval and merge call this."""
    if cfg.dtype != "auto" and cfg.attn_implementation != "auto":
        return cfg
    facts = facts or DeviceFacts.detect()
    return dataclasses.replace(cfg, dtype=model_dtype(cfg.dtype, facts),
                               attn_implementation=attention(cfg.attn_implementation, facts))


def torch_dtype(name: str):
    """torch's dtype for a decided `model.dtype` name."""
    import torch

    if name == "auto":
        raise ValueError("model.dtype=auto must be decided for the device first "
                         "(align.models.factory.decide_for_device)")
    return getattr(torch, name)


def resolve_path(name_or_path: str) -> str:
    from align.models.tiny import resolve_model_path

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


def load_model(cfg: ModelConfig, quantization: dict[str, Any] | None = None,
               place: Placement | None = None):
    """Load the model (optionally 4/8-bit through bitsandbytes for QLoRA) where `place`
    (align.device.placement; default: this process's, from its device and launch) puts it: onto
    this rank's card, or left to ZeRO-3's zero.Init and FSDP's loading, which shard it."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForSequenceClassification,
    )

    cfg = decide_for_device(cfg)
    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    kwargs.update(
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        dtype=torch_dtype(cfg.dtype),
        attn_implementation=cfg.attn_implementation,
    )
    if quantization:
        from transformers import BitsAndBytesConfig

        quant = dict(quantization)
        if "bnb_4bit_compute_dtype" not in quant:
            quant["bnb_4bit_compute_dtype"] = kwargs["dtype"]
        kwargs["quantization_config"] = BitsAndBytesConfig(**quant)
    place = place or process_placement(quantized=bool(quantization))
    if place.device_map is not None:
        kwargs["device_map"] = place.device_map
    path = resolve_path(cfg.name_or_path)
    log.info("loading %s (%s, attention=%s) onto %s (%s)", path, kwargs["dtype"],
             kwargs["attn_implementation"], place.device, place.load)
    if cfg.kind == "sequence_classification":
        # A reward model: one score per sequence. A causal LM checkpoint loads with a new,
        # randomly initialised score head (seeded: the job sets the seed before loading).
        auto = AutoModelForSequenceClassification
        kwargs["num_labels"] = 1
    else:
        auto = AutoModelForImageTextToText if cfg.kind in VISION_KINDS else AutoModelForCausalLM
    model = auto.from_pretrained(path, **kwargs)
    if cfg.kind in VISION_KINDS:
        freeze_parts(model, cfg)
    if place.device_map is not None or place.load == LOAD_CPU:
        # sharded loads leave other ranks' weights on meta until the trainer shards them
        check_placement(model, place, f"loading {path}")
    if cfg.gradient_checkpointing is True:
        # KV caching is useless with checkpointing during training and transformers warns.
        model.config.use_cache = False
    return model


def process_placement(quantized: bool = False) -> Placement:
    """This process's placement (align.device.placement): its device and launch as detected."""
    from align.device import local_rank, placement

    return placement(DeviceFacts.detect(), quantized, local_rank())


def build_model(model_cfg: ModelConfig, peft: PeftPlan, place: Placement | None = None):
    """(model, processing class, peft config) for any stage; the trainer applies the adapter
    (peft config None: full fine-tuning). `peft` is the checked plan (align.models.adapters).

    The processing class is the tokenizer for text models and the processor for
    vision-language models; pass it to trl as processing_class either way. `place`: where the
    model goes (default: this process's placement)."""
    from align.models.adapters import target_vision_parts

    processing_class = load_processing_class(model_cfg)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    model = load_model(model_cfg, peft.quantization, place)
    peft_config = copy.deepcopy(peft.peft_config)  # the plan stays as it was parsed
    if model_cfg.is_vision and peft_config is not None:
        target_vision_parts(peft_config, peft.apply_to, model)
    if getattr(model, "generation_config", None) is not None \
            and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model_cfg.kind == "sequence_classification" and model.config.pad_token_id is None:
        # The score is read at the last non-pad token, found by the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, processing_class, peft_config
