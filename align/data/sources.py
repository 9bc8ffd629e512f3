"""Where a stage's rows come from: local files (JSON/JSONL/Parquet/CSV, compressed too), saved
datasets, folders of data files, the Hugging Face Hub, and the synthetic tasks; plus the column
renames of `data.columns`. Every failure is a DataError naming the source."""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import json
import lzma
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align.data.config import DataConfig, DataError

if TYPE_CHECKING:
    import datasets

#: The synthetic dataset kind each stage trains on (KTO: the pairs, unpacked by align.data.load).
SYNTHETIC_KIND = {"sft": "sft", "dpo": "preference", "kto": "preference", "rm": "preference",
                  "grpo": "prompt"}


DATA_FILE_TYPES = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}


COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass
class Source:
    label: str  # names the file / hub id + split in every message
    dataset: datasets.Dataset
    #: A JSON / JSON Lines file the rows came from. Python's json module parses it again only
    #: to report bad rows: arrow's view of a row can differ (a key missing from one row is null,
    #: numbers unified), and messages quote the rows as written, with their line.
    json_file: str | None = None
    renames: Mapping[str, str] = field(default_factory=dict)  # data.columns, applied to those rows
    _parsed: tuple | None = field(default=None, repr=False, compare=False)

    def python_rows(self) -> tuple[list[dict] | None, list[int] | None]:
        """(rows as json parsed them, renamed, cut to the dataset's length; 1-based line of each
        row for JSON Lines), or (None, None) for a source that is not a JSON file. Parsed on the
        first call: a launch whose rows are all good never pays for it."""
        if self.json_file is None:
            return None, None
        if self._parsed is None:
            rows, lines = _parse_json_file(self.json_file, _file_type(self.json_file)[1])
            if self.renames:
                rows = [{self.renames.get(k, k): v for k, v in row.items()} for row in rows]
            self._parsed = (rows, lines)
        rows, lines = self._parsed
        return rows[: len(self.dataset)], lines

    def with_dataset(self, dataset: datasets.Dataset) -> Source:
        """The same source (label, JSON file, renames) over `dataset`: the first rows of the
        original, or the same rows with fewer columns."""
        return dataclasses.replace(self, dataset=dataset)


def _datasets():
    import datasets

    return datasets


def _file_type(path: str) -> tuple[str | None, Callable | None]:
    """(datasets builder name, decompressing open) for a data file name, or (None, None)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    opener = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        opener = COMPRESSIONS[suffixes.pop()]
    if suffixes and suffixes[-1] in DATA_FILE_TYPES:
        return DATA_FILE_TYPES[suffixes[-1]], opener
    return None, None


def _parse_json_file(path: str, opener: Callable | None) -> tuple[list[dict], list[int] | None]:
    """Parse a .json/.jsonl file with the json module: datasets' own parse errors name no line."""
    try:
        with (opener or open)(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{path}: cannot read the file: {exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON array of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
            ) from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {i}: expected a JSON object per row, got {type(row).__name__}")
        return rows, None
    rows, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # datasets skips blank lines too, so row indices stay aligned
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = ""
            if lineno == 1 and stripped.startswith("{") and not text.rstrip().endswith("}"):
                hint = " (a .json file must hold one JSON array of objects, or one object per line)"
            raise DataError(
                f"{path}: line {lineno}, column {exc.colno}: invalid JSON: {exc.msg}{hint}"
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"{path}: row {len(rows)} (line {lineno}): expected one JSON object per line, "
                f"got {type(row).__name__}"
            )
        rows.append(row)
        lines.append(lineno)
    return rows, lines


def _check_json_file(path: str, opener: Callable | None) -> None:
    """Raise the DataError that names the line of what is wrong with a JSON file (the file
    datasets could not load), if python's json finds something."""
    rows, _ = _parse_json_file(path, opener)
    if not rows:
        raise DataError(f"{path}: the dataset is empty (no rows)")


def _csv_header(path: str, opener: Callable | None) -> list[str]:
    try:
        with (opener or open)(path, "rt", encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, EOFError, lzma.LZMAError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the file: {exc}") from None
    if not header:
        raise DataError(f"{path}: the dataset is empty (no header row)")
    return header


def _wrap_load_error(label: str, exc: Exception) -> DataError:
    # datasets/pyarrow errors are long and name internal paths; keep the first line and say which source.
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "corresponds to no data" in first:  # how datasets reports a split with zero rows
        return DataError(f"{label}: the dataset is empty (no rows)")
    return DataError(f"{label}: could not load the dataset: {type(exc).__name__}: {first}")


def _pick_split(dataset_dict: Any, split: str, label: str) -> Any:
    if split not in dataset_dict:
        raise DataError(
            f"{label}: has no split {split!r}; available splits: {sorted(dataset_dict)}. "
            "Set data.split (or data.eval_split)."
        )
    return dataset_dict[split]


def _load_path(path: str, split: str, cfg: DataConfig, *, is_eval: bool) -> Source:
    """Load one split from a local file/folder or the hub (synthetic sources are handled elsewhere)."""
    ds = _datasets()
    local = os.path.exists(path)
    builder, opener = _file_type(path)
    looks_local = builder is not None or path.startswith(("/", "./", "../", "~")) or path.count("/") > 1
    if not local and looks_local:
        raise DataError(f"{path}: no such file or folder (data.{'eval_path' if is_eval else 'path'})")

    if local and os.path.isfile(path):
        if split != "train":
            key = "eval_split" if is_eval else "split"
            raise DataError(
                f"{path}: a single file is one split, so data.{key}={split!r} cannot pick one; "
                f"remove data.{key} (or point data.{'eval_path' if is_eval else 'path'} at a folder or hub dataset)"
            )
        if builder is None:
            raise DataError(
                f"{path}: unsupported file type; use .json, .jsonl, .parquet or .csv "
                "(optionally compressed: .gz, .bz2, .xz)"
            )
        kwargs = {}
        if builder == "csv":
            # CSV holds only text, but pandas would read "2" as an int and an answer column of
            # numbers would fail the string checks: read every column as a string.
            kwargs["features"] = ds.Features({name: ds.Value("string") for name in _csv_header(path, opener)})
        try:
            # A single file is one split, which datasets calls "train" whatever it holds.
            dataset = ds.load_dataset(builder, data_files=path, split="train", **kwargs)
        except Exception as exc:
            if builder == "json":
                # datasets' parse errors name no line; python's json does (and raises it here).
                _check_json_file(path, opener)
            raise _wrap_load_error(path, exc) from exc
        if builder == "json" and len(dataset) == 0:
            raise DataError(f"{path}: the dataset is empty (no rows)")
        return Source(path, dataset, json_file=path if builder == "json" else None)

    if local and os.path.isdir(path):
        saved = any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))
        label = f"{path} (split {split!r})"
        try:
            if saved:  # written by save_to_disk
                loaded = ds.load_from_disk(path)
                if isinstance(loaded, ds.DatasetDict):
                    loaded = _pick_split(loaded, split, path)
                    return Source(label, loaded)
                return Source(path, loaded)
            loaded = ds.load_dataset(path)  # a folder of data files: splits from the file names
        except DataError:
            raise
        except Exception as exc:
            raise _wrap_load_error(path, exc) from exc
        return Source(label, _pick_split(loaded, split, path))

    label = f"{path}" + (f" ({cfg.subset})" if cfg.subset else "") + f" split {split!r}"
    try:
        dataset = ds.load_dataset(path, cfg.subset, split=split, revision=cfg.revision)
    except Exception as exc:
        raise DataError(
            f"{label}: not a local file or folder, and loading it from the Hugging Face Hub failed: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc
    return Source(label, dataset)


def _load_synthetic(cfg: DataConfig, stage: str, split: str) -> Source:
    from align.data.synthetic import build_synthetic

    task = cfg.path.split(":", 1)[1]
    kind = SYNTHETIC_KIND[stage]
    try:
        dataset = build_synthetic(task, kind, split, **cfg.synthetic)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{cfg.path}: {exc} (set data.synthetic.<param>)") from exc
    return Source(f"{cfg.path} ({kind}, {split})", dataset)


def load_sources(cfg: DataConfig, stage: str) -> tuple[Source, Source | None]:
    if cfg.path.startswith("synthetic:"):
        train = _load_synthetic(cfg, stage, "train")
        if cfg.eval_path:
            return train, _load_path(cfg.eval_path, cfg.eval_split or "train", cfg, is_eval=True)
        return train, _load_synthetic(cfg, stage, "eval")
    train = _load_path(cfg.path, cfg.split, cfg, is_eval=False)
    if cfg.eval_path:
        return train, _load_path(cfg.eval_path, cfg.eval_split or "train", cfg, is_eval=True)
    if cfg.eval_split:
        if os.path.isfile(cfg.path):
            raise DataError(
                f"{cfg.path}: a single file has no splits, so data.eval_split={cfg.eval_split!r} cannot pick one; "
                "set data.eval_path to the eval file (or use data.eval_fraction)"
            )
        return train, _load_path(cfg.path, cfg.eval_split, cfg, is_eval=True)
    return train, None


def rename_columns(src: Source, columns: Mapping[str, str]) -> Source:
    if not columns:
        return src
    names = src.dataset.column_names
    for old, new in columns.items():
        if old not in names:
            raise DataError(
                f"{src.label}: data.columns renames {old!r}, but there is no such column; "
                f"available columns: {names}"
            )
        if new in names and new not in columns:
            raise DataError(
                f"{src.label}: data.columns renames {old!r} to {new!r}, but a {new!r} column already exists; "
                f"rename or drop that one too (columns: {names})"
            )
    return dataclasses.replace(src, dataset=src.dataset.rename_columns(dict(columns)),
                               renames=dict(columns), _parsed=None)
