"""Writing files so that a reader (another rank, a watcher, a killed run's resume) never sees
half of one: write aside in the same folder, then rename over the target (atomic on POSIX).
And where align keeps what it builds once and reuses (`cache_root`)."""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """``$ALIGN_CACHE`` if set, else ``~/.cache/align``: the tiny models, the checked data and
    DPO's reference log-probs."""
    env = os.environ.get("ALIGN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "align"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: The key a JSON object written with ``nonfinite="note"`` lists its non-finite values under:
#: {JSON pointer (RFC 6901) of the value: "nan" | "inf" | "-inf"}; the value itself is null.
NONFINITE_KEY = "nonfinite"
NONFINITE_POLICIES = ("error", "note")


class NonFiniteValueError(ValueError):
    """A value align was about to write is NaN or +/-inf, which strict JSON cannot hold."""


def _pointer(keys: list) -> str:
    return "".join("/" + str(k).replace("~", "~0").replace("/", "~1") for k in keys)


def _finite_copy(obj: Any, keys: list, found: dict[str, str]) -> Any:
    """`obj` with every non-finite number replaced by None and recorded in `found` under its
    JSON pointer; numpy/torch scalars become floats (what JSON can hold)."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, numbers.Integral):  # numpy/torch integers
        return int(obj)
    if isinstance(obj, dict):
        return {k: _finite_copy(v, [*keys, k], found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_copy(v, [*keys, i], found) for i, v in enumerate(obj)]
    if isinstance(obj, float) or hasattr(obj, "__float__"):
        try:
            value = float(obj)
        except (TypeError, ValueError):  # not one number (an array): json.dumps decides
            return obj
        if math.isfinite(value):
            return value
        found[_pointer(keys)] = str(value)
        return None
    return obj


def strict_json(obj: Any, name: str, nonfinite: str = "error") -> Any:
    """`obj` ready for ``json.dumps(allow_nan=False)``: strict JSON has no NaN or Infinity (a
    bare ``NaN`` is rejected by strict parsers: jq, JavaScript, Go, most databases).

    ``nonfinite`` says what a non-finite value becomes:

    - ``"error"`` (the default): :class:`NonFiniteValueError` naming the file (`name`) and the
      key. For what align computes itself (held-out figures, statistics, the doctor's evidence):
      a non-finite figure there is a bug where it was computed, and a file must not hide it.
    - ``"note"``: null, and the object (a dict) lists it under :data:`NONFINITE_KEY`. For what a
      library logged (trl's and transformers' log history, the trainer's train metrics): a loss
      that diverged to NaN is a fact of the run to keep (the run doctor names it), not a reason
      to lose the files of a finished run. :func:`restore_nonfinite` reads it back.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    found: dict[str, str] = {}
    clean = _finite_copy(obj, [], found)
    if not found:
        return clean
    where, value = next(iter(found.items()))
    if nonfinite == "error" or not isinstance(clean, dict):
        raise NonFiniteValueError(
            f"{name}: the value at {where or '/'} is {value}, which JSON cannot hold "
            f"({len(found)} non-finite value(s) in all); a figure align computes must be finite")
    clean[NONFINITE_KEY] = {**clean.get(NONFINITE_KEY, {}), **found} \
        if isinstance(clean.get(NONFINITE_KEY), dict) else found
    return clean


def restore_nonfinite(obj: Any) -> Any:
    """The inverse of ``strict_json(..., nonfinite="note")`` on a parsed object: its listed
    values back as floats, the list removed. Anything else is returned as it is."""
    if not isinstance(obj, dict) or not isinstance(obj.get(NONFINITE_KEY), dict):
        return obj
    notes = obj.pop(NONFINITE_KEY)
    for pointer, value in notes.items():
        keys = [k.replace("~1", "/").replace("~0", "~") for k in pointer.split("/")[1:]]
        target = obj
        try:
            for key in keys[:-1]:
                target = target[int(key) if isinstance(target, list) else key]
            last = keys[-1]
            target[int(last) if isinstance(target, list) else last] = float(value)
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # edited by hand since: leave it as it is
    return obj


def write_json(path: Path, obj: Any, *, nonfinite: str = "error") -> None:
    """`obj` as indented strict JSON (numpy/torch numbers as floats), atomically. A NaN or
    infinity is an error, or null with a note (`nonfinite`, see :func:`strict_json`)."""
    clean = strict_json(obj, Path(path).name, nonfinite)
    write_atomic(path, json.dumps(clean, indent=2, allow_nan=False, default=float) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any], *, nonfinite: str = "error") -> None:
    """One strict JSON object per line, atomically; non-finite values as in :func:`write_json`
    (each row carries its own note)."""
    name = Path(path).name
    write_atomic(path, "".join(
        json.dumps(strict_json(r, f"{name} row {i + 1}", nonfinite), allow_nan=False,
                   default=float) + "\n"
        for i, r in enumerate(rows)))
