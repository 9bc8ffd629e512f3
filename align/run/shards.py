"""Results kept batch by batch, so that a killed job continues where it stopped, and the ranks
of a multi-process job each write their own file.

A job's work is a list of numbered units (align/generate.py: prompts), done in batches. Each
rank appends each finished batch to its own shard, `<folder>/rank-<r>.jsonl`, one JSON row per
result, each row carrying the unit's number under `unit_key`, in one write that is flushed and
synced. A killed job can leave the last batch half written: `read_shards` keeps only the
units whose `per_unit` rows are all there and parse, and rewrites each shard without the rest,
so the next launch redoes exactly the unfinished units and no unit is ever written twice. A
launch with another number of ranks reads every shard there is.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from align.files import write_atomic


def shard_path(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.jsonl"


def append_batch(folder: Path, rank: int, rows: Iterable[dict]) -> None:
    """Append one finished batch to this rank's shard (one write, flushed to disk)."""
    text = "".join(json.dumps(r, default=float) + "\n" for r in rows)
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(shard_path(folder, rank), "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_shards(folder: Path, unit_key: str, per_unit: int,
                repair: bool = True) -> dict[int, list[dict]]:
    """{unit: its rows} for every complete unit in the folder's shards. With `repair`, each
    shard is rewritten (atomically) without incomplete units and half-written lines."""
    folder = Path(folder)
    units: dict[int, list[dict]] = defaultdict(list)
    kept_lines: dict[Path, list[tuple[int, str]]] = {}
    read_lines: dict[Path, int] = {}
    for path in sorted(folder.glob("rank-*.jsonl")) if folder.is_dir() else []:
        lines = []
        text = path.read_text(encoding="utf-8")
        # a last line without its newline was cut short, even when it parses
        read_lines[path] = len(text.splitlines()) + (bool(text) and not text.endswith("\n"))
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a half-written last line
                continue
            if not isinstance(row, dict) or not isinstance(row.get(unit_key), int):
                continue
            units[row[unit_key]].append(row)
            lines.append((row[unit_key], line))
        kept_lines[path] = lines
    complete = {u: rows for u, rows in units.items() if len(rows) == per_unit}
    if repair:
        for path, lines in kept_lines.items():
            good = [line for unit, line in lines if unit in complete]
            if len(good) != read_lines[path]:
                write_atomic(path, "".join(line + "\n" for line in good))
    return complete
