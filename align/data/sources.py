"""Where a stage's rows come from: local files (JSON/JSONL/Parquet/CSV, compressed too), saved
datasets, folders of data files, the Hugging Face Hub, and the synthetic tasks; plus the column
renames of `data.columns`. Every failure is a DataError naming the source.

Local text files (JSON, JSON Lines, CSV) are decoded strictly as UTF-8 before datasets reads
them: pyarrow's JSON reader does not check the encoding (a bad byte surfaced later as a
traceback naming no file), so align reads every byte once and names the file, the line and the
byte offset of the first one that is not UTF-8. A UTF-8 byte-order mark at the start of a file
(as Excel and Notepad save CSV) is accepted and is not part of the first column's name.

A folder of data files is read by datasets, which picks one format per folder (the commonest
extension) and skips files of any other: a folder holding more than one of align's formats is
an error naming its files, rather than a run that trains on part of the data.
"""

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
    #: The JSON / JSON Lines files the rows came from, in datasets' order (one file, or a
    #: folder's files of one split). Python's json module parses them again to report bad rows
    #: and to check columns whose types the file mixes: arrow's view of a row can differ (a key
    #: missing from one row is null, numbers unified, a mixed column converted), and messages
    #: quote the rows as written, with their file and line.
    json_files: tuple[str, ...] = ()
    renames: Mapping[str, str] = field(default_factory=dict)  # data.columns, applied to those rows
    #: rows datasets loaded from `json_files` (before any cut), to tell that python's parse
    #: lines up with them row for row
    loaded_rows: int | None = None
    _parsed: tuple | None = field(default=None, repr=False, compare=False)

    def python_rows(self) -> tuple[list[dict] | None, list[str | None] | None]:
        """(rows as json parsed them, renamed, cut to the dataset's length; where each row is
        written: "line 3" in one JSON Lines file, "name.jsonl, line 3" in a folder's, None in a
        JSON array file, "name.json" in a folder's), or (None, None) for a source that is not
        JSON files, or whose rows datasets did not read one for one. Parsed on the first call: a
        launch whose rows are all good and whose columns each hold one type never pays for it."""
        if not self.json_files:
            return None, None
        if self._parsed is None:
            rows, places = [], []
            # Name the file where the label does not (a folder's files).
            several = self.json_files != (self.label,)
            for path in self.json_files:
                file_rows, lines = _parse_json_file(path, _file_type(path)[1])
                name = os.path.basename(path)
                rows += file_rows
                places += [(f"{name}, line {n}" if several else f"line {n}") for n in lines] \
                    if lines is not None else [name if several else None] * len(file_rows)
            if self.renames:
                rows = [{self.renames.get(k, k): v for k, v in row.items()} for row in rows]
            self._parsed = (rows, places)
        rows, places = self._parsed
        if self.loaded_rows is not None and len(rows) != self.loaded_rows:
            return None, None
        return rows[: len(self.dataset)], places

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


#: bytes decoded at a time by the UTF-8 check
_DECODE_BLOCK = 1 << 20


def check_utf8(path: str, opener: Callable | None = None) -> None:
    """Decode the whole (decompressed) file strictly as UTF-8; raise a DataError naming the
    line and the byte offset of the first byte that is not. One pass in blocks, so a file of any
    size is checked in constant memory; a character split across two blocks is carried over."""
    offset = newlines = 0  # bytes and line breaks before `data`
    pending = b""
    try:
        with (opener or open)(path, "rb") as f:
            while True:
                block = f.read(_DECODE_BLOCK)
                data = pending + block
                try:
                    data.decode("utf-8")
                    good = len(data)
                except UnicodeDecodeError as exc:
                    if block and exc.reason == "unexpected end of data":
                        good = exc.start  # the rest of this character is in the next block
                    else:
                        line = newlines + data.count(b"\n", 0, exc.start) + 1
                        bad = data[exc.start:exc.end].hex(" ")
                        raise DataError(
                            f"{path}: line {line}, byte offset {offset + exc.start}: not UTF-8 "
                            f"(bytes {bad}: {exc.reason}); data files are read as UTF-8 text: "
                            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                        ) from None
                if not block:
                    return
                newlines += data.count(b"\n", 0, good)
                offset += good
                pending = data[good:]
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{path}: cannot read the file: {exc}") from None


def _parse_json_file(path: str, opener: Callable | None) -> tuple[list[dict], list[int] | None]:
    """Parse a .json/.jsonl file with the json module: datasets' own parse errors name no line.
    A UTF-8 byte-order mark at the start is skipped, as datasets skips it."""
    try:
        with (opener or open)(path, "rt", encoding="utf-8-sig") as f:
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
    # Lines end at "\n" only, as in datasets' reader: str.splitlines would also break a row at
    # a U+2028 or a form feed, which JSON allows unescaped inside a string.
    for lineno, line in enumerate(text.split("\n"), start=1):
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
    """The column names of a CSV file. "utf-8-sig": a byte-order mark is not part of the first
    name (pandas, which datasets reads CSV with, skips it too)."""
    try:
        with (opener or open)(path, "rt", encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, EOFError, lzma.LZMAError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the file: {exc}") from None
    if not header:
        raise DataError(f"{path}: the dataset is empty (no header row)")
    return header


def _folder_data_files(path: str) -> dict[str, list[str]]:
    """The data files of a folder that datasets will read, per split, in its order; after
    checking that the folder holds one of align's formats only (datasets would read the
    commonest and skip the others without a word) and that every text file is UTF-8."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    found: dict[str, list[str]] = {}
    for root, dirs, names in os.walk(path):
        # datasets skips hidden files and folders, and those starting with "__"
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(names):
            builder = _file_type(name)[0]
            if builder is not None and not name.startswith((".", "__")):
                found.setdefault(builder, []).append(os.path.relpath(os.path.join(root, name), path))
    if len(found) > 1:
        listed = "; ".join(f"{kind}: {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}"
                           for kind, files in sorted(found.items()))
        raise DataError(
            f"{path}: the folder holds data files of more than one format ({listed}), and "
            "datasets reads one format per folder, skipping the other files: keep one format in "
            "the folder (convert or move the others), or point data.path at one file"
        )
    base = os.path.abspath(path)
    resolved = DataFilesDict.from_patterns(get_data_patterns(base), base_path=base)
    split_files = {str(split): [str(f) for f in files] for split, files in resolved.items()}
    for files in split_files.values():
        for file in files:
            builder, opener = _file_type(file)
            if builder in ("json", "csv"):
                check_utf8(file, opener)
    return split_files


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
        if builder in ("json", "csv"):
            check_utf8(path, opener)
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
        if builder == "json":
            return Source(path, dataset, json_files=(path,), loaded_rows=len(dataset))
        return Source(path, dataset)

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
            split_files = _folder_data_files(path)
            loaded = ds.load_dataset(path)  # a folder of data files: splits from the file names
        except DataError:
            raise
        except Exception as exc:
            raise _wrap_load_error(path, exc) from exc
        dataset = _pick_split(loaded, split, path)
        files = tuple(split_files.get(split, ()))
        if files and all(_file_type(f)[0] == "json" for f in files):
            return Source(label, dataset, json_files=files, loaded_rows=len(dataset))
        return Source(label, dataset)

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
