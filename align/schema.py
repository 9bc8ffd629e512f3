"""Checking config sections against their schemas: unknown keys with the closest valid names,
values converted and type-checked through dataclasses, import paths resolved. Imports neither
torch nor trl: it runs before them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from align.errors import AlignError, ConfigError

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


#: Field metadata marking a number where infinity means something (`inf` is then taken, never
#: `nan`); without it, every number of a section must be finite.
INFINITE_OK = "infinite_ok"


def non_finite(value: Any, key: str) -> Iterator[tuple[str, float]]:
    """(key, number) for each number in `value` that is nan or +/-inf, looking into mappings and
    lists (`key.sub`, `key[0]`): a section's free-form dicts (model_kwargs, vllm_kwargs ...)
    reach a library that would take the value as it is."""
    if isinstance(value, float) and not math.isfinite(value):
        yield key, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from non_finite(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from non_finite(v, f"{key}[{i}]")


def finite_message(key: str, value: float, nullable: bool) -> str:
    """The one line for a number that is not finite (`nullable`: the field takes null)."""
    return f"config key '{key}'={value}: must be a finite number" + (" (or null)" if nullable else "")


def _non_finite_fields(values: Mapping, cls: type, where: str) -> list[str]:
    """One message per field of a section (`values`: converted to the field types) holding nan
    or +/-inf (inf passes where the field is marked INFINITE_OK). Why: nan compares false with
    everything, so a range check such as `threshold <= x` or `x > 0` silently passes it or
    turns a check off, and inf turns a deadline or a limit into none; null is the explicit way
    to say "off"."""
    errors = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nullable = type(None) in typing.get_args(hints.get(f.name))
        for key, value in non_finite(values.get(f.name), f"{where}.{f.name}"):
            if math.isinf(value) and key == f"{where}.{f.name}" and f.metadata.get(INFINITE_OK):
                continue
            errors.append(finite_message(key, value, nullable and key == f"{where}.{f.name}"))
    return errors


def check_dataclass(node: Any, cls: type, where: str) -> tuple[Any, list[str]]:
    """Check a config section against a dataclass schema: unknown keys, then value types, then
    that every number is finite (nan and +/-inf from the command line or YAML are refused,
    naming the key, unless the field's metadata says INFINITE_OK).

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
        schema = OmegaConf.structured(cls)
        OmegaConf.set_readonly(schema, False)  # frozen dataclasses give read-only nodes
        merged = OmegaConf.merge(schema, to_container(node))
        # before the class's own checks (__post_init__), which nan would slip through
        errors = _non_finite_fields(OmegaConf.to_container(merged), cls, where)
        if errors:
            return None, errors
        return OmegaConf.to_object(merged), []
    except AlignError as exc:  # the class's own value checks (__post_init__)
        return None, [str(exc)]
    except Exception as exc:  # omegaconf ValidationError: wrong type for a field
        key = getattr(exc, "full_key", "") or ""
        msg = str(exc).splitlines()[0]
        value = node.get(key) if isinstance(node, Mapping) and key in node else None
        shown = f"={value!r}" if value is not None else ""
        return None, [f"config key '{where}.{key}'{shown}: {msg}"]


def to_container(node: Any) -> Any:
    """A plain python copy of a config node (resolved)."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def raise_if(errors: list[str]) -> None:
    """One ConfigError for all problems: one line for one problem, a list for several."""
    if len(errors) == 1:
        raise ConfigError(f"invalid config: {errors[0]}")
    if errors:
        raise ConfigError(f"invalid config ({len(errors)} problems):\n  - " + "\n  - ".join(errors))


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
