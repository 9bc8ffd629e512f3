"""The schemas of the libraries' config dataclasses, cached so that checks stay fast.

A typo or a bad value should be reported in a second or two, while importing trl (and with it
torch, transformers and peft) takes 5-10 s. The fields of trl's SFT/DPO/KTO/Reward/GRPOConfig
and of peft's adapter configs, with what each takes (its type hint as plain data: `schema_of`,
and the `choices` in its metadata), are read by importing the class once, then kept in align's
cache (`$ALIGN_CACHE` or ~/.cache/align, under fields/), keyed by the package version and the
modification time of the module's source file, so an upgrade or an edited install is seen.

A field's schema is JSON: {"any": true} | {"none": true} | {"type": "bool|int|float|str|dict"} |
{"list": schema} | {"choices": [...]} (Literal and enum fields; a choice with "[" in it is a
pattern, as peft writes 'pissa_niter_[number of iters]') | {"union": [schema, ...]}.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.metadata
import importlib.util
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

#: Where the config classes align checks keys against are defined.
TRL_CONFIGS = {"sft": ("trl.trainer.sft_config", "SFTConfig"),
               "dpo": ("align.trainers.config", "DPOConfig"),  # trl's, with align's DPO keys
               "kto": ("trl.trainer.kto_config", "KTOConfig"),
               "rm": ("trl.trainer.reward_config", "RewardConfig"),
               "grpo": ("align.trainers.config", "GRPOConfig")}  # trl's, with align's GRPO keys
PEFT_CONFIGS = {"LoraConfig": "peft.tuners.lora.config",
                "PromptTuningConfig": "peft.tuners.prompt_tuning.config",
                "PromptEncoderConfig": "peft.tuners.p_tuning.config"}
#: Bump when the cached format changes.
FORMAT = 2


def module_file(module: str) -> Path | None:
    """The source file of `module`, found without importing it or its parent packages."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _cache_file(module: str, name: str) -> Path | None:
    source = module_file(module)
    if source is None:
        return None
    try:
        version = importlib.metadata.version(module.split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    from align.files import cache_root

    return cache_root() / "fields" / f"{module}.{name}-{version}-{source.stat().st_mtime_ns}-v{FORMAT}.json"


def schema_of(hint: Any) -> dict:
    """A type hint as plain data (see the module docstring)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return {"any": True}
    if hint is type(None):
        return {"none": True}
    if origin in (typing.Union, types.UnionType):
        return {"union": [schema_of(a) for a in args]}
    if origin is typing.Literal:
        return {"choices": list(args)}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"choices": [e.value for e in hint]}
    if hint in (bool, int, float, str):
        return {"type": hint.__name__}
    if origin in (list, tuple, set, typing.Sequence) or hint in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return {"list": schema_of(inner[0]) if inner else {"any": True}}
    if origin in (dict, typing.Mapping) or hint is dict:
        return {"type": "dict"}
    return {"any": True}  # a class of its own (AcceleratorConfig ...): the library checks it


def _build(cls: type) -> dict[str, dict]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        entry = {"schema": schema_of(hints.get(f.name, Any))}
        if f.metadata.get("choices"):
            entry["choices"] = list(f.metadata["choices"])
        out[f.name] = entry
    return out


def dataclass_schema(module: str, name: str) -> dict[str, dict]:
    """{field: {"schema": ..., "choices": [...]?}} of the dataclass `module.name`, in field
    order, from the cache or by importing it once."""
    cached = _cache_file(module, name)
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text())
        except (OSError, ValueError):
            pass  # unreadable: rebuild it below
    schema = _build(getattr(importlib.import_module(module), name))
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
            tmp.write_text(json.dumps(schema, default=str))
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only cache only costs speed
    return schema


def dataclass_fields(module: str, name: str) -> tuple[str, ...]:
    """Field names of the dataclass `module.name` (cached, see dataclass_schema)."""
    return tuple(dataclass_schema(module, name))


def checkpointing_field(config_class: type) -> str:
    """The name under which trl's config class `config_class` takes activation checkpointing:
    `activation_checkpointing` in transformers 5.18+, `gradient_checkpointing` before (5.17 is the
    release vLLM 0.31 pins)."""
    fields = getattr(config_class, "__dataclass_fields__", {})
    return "activation_checkpointing" if "activation_checkpointing" in fields \
        else "gradient_checkpointing"
