"""Writing files so that a reader (another rank, a watcher, a killed run's resume) never sees
half of one: write aside in the same folder, then rename over the target (atomic on POSIX).
And where align keeps what it builds once and reuses (`cache_root`)."""

from __future__ import annotations

import json
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


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON (numbers numpy/torch give as floats), atomically."""
    write_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """One JSON object per line, atomically."""
    write_atomic(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))
