"""Field names of the libraries' config dataclasses, cached so that key checks stay fast.

A typo should be reported in a second or two, while importing trl (and with it torch and
transformers) takes 5-10 s. The field names of trl's SFTConfig/DPOConfig/GRPOConfig and of
peft's adapter configs are read by importing the class once, then kept in align's cache
(`$ALIGN_CACHE` or ~/.cache/align, under fields/), keyed by the package version and the
modification time of the module's source file, so an upgrade or an edited install is seen.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

#: Where the config classes align checks keys against are defined.
TRL_CONFIGS = {"sft": ("trl.trainer.sft_config", "SFTConfig"),
               "dpo": ("trl.trainer.dpo_config", "DPOConfig"),
               "grpo": ("trl.trainer.grpo_config", "GRPOConfig")}
PEFT_CONFIGS = {"LoraConfig": "peft.tuners.lora.config",
                "PromptTuningConfig": "peft.tuners.prompt_tuning.config",
                "PromptEncoderConfig": "peft.tuners.p_tuning.config"}


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
    root = Path(os.environ.get("ALIGN_CACHE") or Path.home() / ".cache" / "align")
    return root / "fields" / f"{module}.{name}-{version}-{source.stat().st_mtime_ns}.json"


def dataclass_fields(module: str, name: str) -> tuple[str, ...]:
    """Field names of the dataclass `module.name`, from the cache or by importing it once."""
    cached = _cache_file(module, name)
    if cached is not None and cached.is_file():
        try:
            return tuple(json.loads(cached.read_text()))
        except (OSError, ValueError):
            pass  # unreadable: rebuild it below
    cls = getattr(importlib.import_module(module), name)
    fields = tuple(f.name for f in dataclasses.fields(cls))
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
            tmp.write_text(json.dumps(fields))
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only cache only costs speed
    return fields
