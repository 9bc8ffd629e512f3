"""Config plumbing shared by every entry point: Hydra registration, key checking, secrets.

How config keys are checked. Hydra puts the root of the composed config in struct mode, so a
misspelled top-level key fails inside Hydra. The sections (`model`, `peft`, `data`, `trainer`,
`rewards`, `logger`, `heldout`) are left open on purpose (see `align_sections` below): any
field of trl's SFTConfig/DPOConfig/GRPOConfig or of peft's adapter configs can then be set
from the command line without a `+`, and align itself checks every key of every section
against its schema before anything heavy is loaded, naming the closest valid keys.

This module imports neither torch nor trl: it runs before them.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from align.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

#: The open sections of every stage config (see the module docstring).
SECTIONS = ("model", "peft", "data", "trainer", "rewards", "logger", "heldout")


def run_id() -> str:
    """An id for this launch that every rank of it agrees on, without talking to the others.

    Order: `ALIGN_RUN_ID` (set it yourself, e.g. to resume into an existing run folder, or on
    multi-node jobs), the SLURM job id (kept by a requeued job, so `resume=true` continues in
    the same folder), then the start time of the launcher process that
    spawned this rank (torchrun/accelerate set LOCAL_RANK; their ranks on one node share that
    parent), and for a plain single process its own start time. Hydra's `${now:}` cannot be
    used: each rank resolves it separately and ranks may land in different folders.
    """
    if os.environ.get("ALIGN_RUN_ID"):
        return os.environ["ALIGN_RUN_ID"]
    if os.environ.get("SLURM_JOB_ID"):
        job = os.environ["SLURM_JOB_ID"]
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"-{task}" if task else "")
    started = _process_start_time(os.getppid()) if "LOCAL_RANK" in os.environ else None
    if started is None:
        started = _process_start_time(os.getpid()) or time.time()
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(started))


def _process_start_time(pid: int) -> float | None:
    """Wall-clock start time of a process, from /proc (Linux); None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def register() -> None:
    """Register align's resolvers and config nodes with OmegaConf/Hydra (idempotent)."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("align_run_id"):
        # use_cache: resolved once per process, so every read of the run dir agrees.
        OmegaConf.register_new_resolver("align_run_id", run_id, use_cache=True)
    sections = OmegaConf.create({name: {} for name in SECTIONS})
    for name in SECTIONS:
        OmegaConf.set_struct(sections[name], False)
    ConfigStore.instance().store(name="align_sections", node=sections)


# --------------------------------------------------------------------------- key checking


#: Names people carry over from other tools, mapped to the field they mean.
ALIASES = {
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "epochs": "num_train_epochs",
    "rank": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "model": "name_or_path",
}


def suggest(key: str, valid: Iterable[str]) -> str:
    """' Did you mean ...?' for the closest valid names, or '' when none is close."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if ALIASES.get(key) in valid and ALIASES[key] not in close:
        close.insert(0, ALIASES[key])
    if not close:  # also catch prefix-style mistakes such as `lr` -> `learning_rate`
        close = [v for v in valid if key and (v.startswith(key) or key in v.split("_"))][:3]
    return f" Did you mean: {', '.join(close)}?" if close else ""


def unknown_keys(node: Mapping, valid: Iterable[str], where: str, schema: str) -> list[str]:
    """One message per key of `node` that is not in `valid`, each with suggestions."""
    valid = sorted(set(valid))
    return [
        f"unknown config key '{where}.{key}' (not a field of {schema}).{suggest(str(key), valid)}"
        for key in node
        if key not in valid
    ]


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def check_dataclass(node: Any, cls: type, where: str) -> tuple[Any, list[str]]:
    """Check a config section against a dataclass schema: unknown keys, then value types.

    Returns (an instance of `cls`, error messages). Values are converted the way OmegaConf
    would (e.g. "3" -> 3 for an int field); a failed conversion names the key.
    """
    if node is None:
        node = {}
    if not isinstance(node, (Mapping, DictConfig)):
        return None, [f"config section '{where}' must be a mapping, got {type(node).__name__}"]
    errors = unknown_keys(node, field_names(cls), where, f"{cls.__name__} ({cls.__module__})")
    if errors:
        return None, errors
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), to_container(node))
        return OmegaConf.to_object(merged), []
    except Exception as exc:  # omegaconf ValidationError: wrong type for a field
        key = getattr(exc, "full_key", "") or ""
        msg = str(exc).splitlines()[0]
        return None, [f"config key '{where}.{key}': {msg}"]


def to_container(node: Any) -> Any:
    """A plain python copy of a config node (resolved)."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def raise_if(errors: list[str]) -> None:
    if errors:
        head = "invalid config" if len(errors) == 1 else f"invalid config ({len(errors)} problems)"
        raise ConfigError(head + ":\n  - " + "\n  - ".join(errors))


def init_params(cls: type) -> list[str]:
    """Keyword parameters a class accepts (for classes that are not dataclasses)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "args", "kwargs")]


def import_object(ref: str, where: str) -> Any:
    """The object named by an import path `pkg.module:Name` (config key `where` in errors)."""
    import importlib

    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where}={ref!r}: expected an import path 'pkg.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}={ref!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{where}={ref!r}: module {module_name!r} has no {attr!r}") from None


# --------------------------------------------------------------------------- secrets

_SECRET_KEY = re.compile(r"(token|api_key|apikey|secret|password|passwd)", re.IGNORECASE)
_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")
REDACTED = "<redacted>"


def redact(obj: Any) -> Any:
    """A copy of a (plain) config with secrets removed: keys that name a secret, and any value
    equal to a secret found in the environment. Saved configs and logs go through this."""
    secrets = {os.environ[k] for k in _SECRET_ENV if os.environ.get(k)}

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, Mapping):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, key) for v in value]
        if value is not None and _SECRET_KEY.search(key) and value not in ("", False, True):
            return REDACTED
        if isinstance(value, str) and any(s and s in value for s in secrets):
            return REDACTED
        return value

    return walk(obj)


__all__ = [
    "CONF_DIR",
    "SECTIONS",
    "check_dataclass",
    "field_names",
    "init_params",
    "raise_if",
    "redact",
    "register",
    "run_id",
    "suggest",
    "to_container",
    "unknown_keys",
]
