"""Load one stage's data: sources -> renames -> format -> every row checked -> normalised, with
the media of vision-language rows attached, and the held-out prompts built."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align.data.config import STAGES, DataConfig, DataError, StageData, as_data_config
from align.data.formats import (
    NORMALISERS,
    READ_COLUMNS,
    REMOVED_COLUMNS,
    RowError,
    detect_format,
    type_name,
)
from align.data.heldout import build_heldout
from align.data.media import (
    MEDIA_COLUMNS,
    VIDEO_COLUMNS,
    Media,
    attach_media,
    image_feature,
    may_mention_media,
    mentions_media,
    require_av,
    require_pillow,
)
from align.data.sources import Source, load_sources, rename_columns

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

MAX_REPORTED_ROWS = 10  # a file with thousands of bad rows should not print thousands of lines


def _row_label(src: Source, index: int, sample_id: Any = None) -> str:
    places = src.python_rows()[1]
    line = f" ({places[index]})" if places is not None and places[index] else ""
    ident = f" (id {sample_id!r})" if sample_id is not None else ""
    return f"{src.label}: row {index}{line}{ident}"


def _row_label_plain(label: str, index: int, sample_id: Any) -> str:
    return f"{label}: row {index}" + (f" (id {sample_id!r})" if sample_id is not None else "")


# --------------------------------------------------------------------------- the batched pass


class BadRow(Exception):
    """Raised inside datasets' map (possibly in a worker process) by the first bad row of a
    batch; the data layer then reports every bad row of the source (`_report_bad_rows`)."""

    def __init__(self, index: int, field: str, problem: str, sample_id: Any = None):
        super().__init__(index, field, problem, sample_id)  # every argument, so that it pickles
        self.index, self.field, self.problem, self.sample_id = index, field, problem, sample_id


#: An extra column the preference pass writes: whether a row's chosen == rejected (dropped after).
_SAME = "_align_chosen_is_rejected"


def _normalise_batch(batch: dict, indices: list[int], *, fmt: str, system_prompt: str | None,
                     media: Media | None, code: str) -> dict:
    """datasets' batched map function: every row of `batch` checked and normalised by the
    format's normaliser (and its media attached). Module-level and configured by keyword
    arguments only, so that datasets hashes it to the same fingerprint on every launch and a
    second launch loads the result from its cache; `code` (the data layer's source hash) makes
    a new align version miss that cache."""
    normalise = NORMALISERS[fmt]
    names = list(batch)
    rows = []
    for k, values in enumerate(zip(*batch.values())):
        row = dict(zip(names, values))
        try:
            out = normalise(row, system_prompt)
            if media is not None:
                out = attach_media(out, row, media, decode=True, check_images=True)
        except RowError as err:
            raise BadRow(indices[k], err.field, err.problem, row.get("id")) from None
        rows.append(out)
    columns = {key: [r[key] for r in rows] for key in rows[0]} if rows else {}
    if fmt == "preference":
        columns[_SAME] = [r["chosen"] == r["rejected"] for r in rows]
    return columns


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """A hash of what decides a normalised row: this package's sources and trl's version
    (preference rows use trl's prompt extraction)."""
    import importlib.metadata

    digest = hashlib.sha256()
    for module in ("formats.py", "media.py", "load.py", "heldout.py", "config.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    digest.update(importlib.metadata.version("trl").encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _main_process_first():
    """Under `accelerate launch` / torchrun with several processes, the node's main process
    checks and normalises first (writing datasets' cache); the other ranks then load its result
    from the cache instead of repeating the work. Needs the process group, which trl's config
    sets up when a run starts (Job.start); without it (a script calling load_stage_data before
    building any trainer config) every rank does the work itself, rather than align setting up
    accelerate's state with arguments the trainer would then not be able to change."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        yield
        return
    from accelerate import PartialState

    with PartialState().local_main_process_first():
        yield


def _normalise(src: Source, fmt: str, cfg: DataConfig, media: Media | None) -> datasets.Dataset:
    """Check and normalise every row in one batched map, cached by the dataset's fingerprint.

    A bad row stops the map; the source is then checked again row by row in python
    (`_report_bad_rows`) so that every bad row is reported, each with its line."""
    dataset = src.dataset
    if len(dataset) == 0:
        raise DataError(f"{src.label}: the dataset is empty (no rows)")
    removed = list(REMOVED_COLUMNS.get(fmt, []))
    if media is not None:  # replaced by the `images` column
        removed += [c for c in MEDIA_COLUMNS if c != "images"]
    remove = [c for c in removed if c in dataset.column_names]
    if _mixed_columns(src, fmt):
        # datasets reads a JSON column whose rows hold values of different types (booleans and
        # strings, strings and numbers) as its Json feature, which converts some of them on the
        # way (a "true" among booleans reads back as true): such a column is checked as the
        # file writes it, before the map sees arrow's view of it.
        _check_one_kind(src, _report_bad_rows(src, fmt, cfg.system_prompt, media))
    try:
        with _main_process_first():
            out = dataset.map(
                _normalise_batch,
                batched=True,
                with_indices=True,
                fn_kwargs={"fmt": fmt, "system_prompt": cfg.system_prompt, "media": media,
                           "code": _code_version()},
                remove_columns=remove or None,
                num_proc=cfg.num_proc if cfg.num_proc and cfg.num_proc > 1 else None,
                # Media rows name image/video files whose contents datasets' fingerprint does
                # not see: check them again on every launch.
                load_from_cache_file=None if media is None else False,
                desc=f"Normalising ({fmt})",
            )
    except BadRow as bad:
        _report_bad_rows(src, fmt, cfg.system_prompt, media)
        # Only if python's view of the rows passes where arrow's failed (never seen so far).
        raise DataError(f"{_row_label_plain(src.label, bad.index, bad.sample_id)}: "
                        f"field '{bad.field}': {bad.problem}") from None
    if fmt == "preference":
        _check_same(src.label, out)
        out = out.remove_columns(_SAME)
    return out


def _mixed_columns(src: Source, fmt: str) -> list[str]:
    """The columns the format reads that datasets holds as its Json feature (values of more
    than one type in the column), for a source read from JSON files (whose rows python can
    read as written)."""
    if not src.json_files:
        return []
    from datasets import Json

    features = src.dataset.features
    return [c for c in READ_COLUMNS[fmt] if c in features and isinstance(features[c], Json)]


def _unpack_batch(batch: dict, *, code: str) -> dict:
    """datasets' batched map function (module-level: cached like `_normalise_batch`): n
    preference pairs -> 2n unpaired rows, chosen -> label true, rejected -> label false, the
    other columns repeated. trl's `unpair_preference_dataset` puts every chosen row before every
    rejected one; KTO samples in order, so its batches would each hold one label. Here the
    first half alternates chosen_0, rejected_1, chosen_2 ... and the second half takes the other
    answers, so a batch mixes both labels and neighbours never share a prompt (trl's KL estimate
    pairs each prompt with its neighbour's completion)."""
    n = len(batch["chosen"])
    order = [(i, (i + half) % 2 == 0) for half in (0, 1) for i in range(n)]
    out = {k: [v[i] for i, _ in order] for k, v in batch.items() if k not in ("chosen", "rejected")}
    out["completion"] = [batch["chosen" if good else "rejected"][i] for i, good in order]
    out["label"] = [good for _, good in order]
    return out


def unpack_pairs(dataset: datasets.Dataset | None, num_proc: int | None = None):
    """Preference pairs (prompt/chosen/rejected, normalised) as KTO's unpaired rows."""
    if dataset is None:
        return None
    return dataset.map(_unpack_batch, batched=True, fn_kwargs={"code": _code_version()},
                       remove_columns=["chosen", "rejected"],
                       num_proc=num_proc if num_proc and num_proc > 1 else None,
                       desc="Unpacking pairs for KTO")


def _kind(value: Any) -> str:
    return "a plain string" if isinstance(value, str) else \
        "a list of messages" if isinstance(value, list) else type_name(value)


def _check_one_kind(src: Source, rows: list[dict]) -> None:
    """Normalised rows must agree on the kind of each column: trl formats a whole dataset as
    plain text or as conversations, and arrow stores one type per column, so a file whose rows
    mix them (a string prompt here, a message list there) is named by its first odd row."""
    if not rows:
        return
    for name, first in rows[0].items():
        for i, row in enumerate(rows):
            if _kind(row[name]) != _kind(first):
                raise DataError(
                    f"{_row_label(src, i)}: field '{name}': {_kind(row[name])}, but row 0 has "
                    f"{_kind(first)}; one dataset is all plain text or all conversations "
                    "(trl formats every row alike): write every row the same way"
                )


def _check_same(label: str, dataset: datasets.Dataset) -> None:
    """Pairs whose chosen == rejected carry no preference: a warning with their count and rows
    when some do (a tie in a judged set), an error when every pair does (the same column
    mapped twice, or a generator that returned one answer twice): nothing would be learnt."""
    import pyarrow.compute as pc

    same = pc.indices_nonzero(dataset.data.column(_SAME).combine_chunks()).to_pylist()
    if same and len(same) == len(dataset):
        raise DataError(
            f"{label}: every pair ({len(same)} of {len(dataset)} rows) has chosen == rejected, so "
            "there is no preference to learn; check that 'chosen' and 'rejected' are different "
            "columns (data.columns) holding the preferred and the other answer"
        )
    if same:
        logger.warning(
            "%s: %d rows have chosen == rejected (rows %s%s); they carry no preference signal",
            label,
            len(same),
            same[:10],
            " ..." if len(same) > 10 else "",
        )


def _report_bad_rows(src: Source, fmt: str, system_prompt: str | None,
                     media: Media | None) -> list[dict]:
    """Run the format's normaliser over every row in python; raise one DataError listing the
    bad rows (at most MAX_REPORTED_ROWS), or return the normalised rows. Runs once the batched
    pass has found a bad row, or before it when a column mixes types (`_mixed_columns`).
    JSON rows are checked as python's json parsed them, the dataset's other rows as arrow
    holds them."""
    extra = ("id",) + MEDIA_COLUMNS if media is not None else ("id",)
    read = [c for c in READ_COLUMNS[fmt] + extra if c in src.dataset.column_names]
    python_rows = src.python_rows()[0]
    if python_rows is not None:
        # A key missing from one row is a null column value in the dataset, and the check must
        # see the same thing.
        rows = [{c: row.get(c) for c in read} for row in python_rows]
    else:
        columns = src.dataset.select_columns(read).to_dict()
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    normalise = NORMALISERS[fmt]
    problems, normalised = [], []
    for i, row in enumerate(rows):
        try:
            out = normalise(row, system_prompt)
            if media is not None:
                attach_media(out, row, media, decode=False)
            normalised.append(out)
        except RowError as err:
            problems.append(f"{_row_label(src, i, row.get('id'))}: field '{err.field}': {err.problem}")
    if not problems:
        return normalised
    shown = problems[:MAX_REPORTED_ROWS]
    if len(problems) == 1:
        raise DataError(problems[0])
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise DataError(f"{src.label}: {len(problems)} malformed rows:\n  " + "\n  ".join(shown) + more)


# --------------------------------------------------------------------------- media


def _media_for(src: Source, fmt: str, cfg: DataConfig, vision: bool) -> tuple[Source, Media | None]:
    """How this source's media is handled: attached (`vision`: a vision-language model), dropped
    with a warning (text model, media never referred to), or an error (text model whose rows
    have <image>/<video> placeholders)."""
    present = [c for c in MEDIA_COLUMNS if c in src.dataset.column_names]
    if vision:
        require_pillow()
        if any(c in present for c in VIDEO_COLUMNS):
            require_av()
        folder = cfg.image_folder
        if folder is None and os.path.isfile(src.label):
            folder = os.path.dirname(os.path.abspath(src.label))
        return src, Media(folder, cfg.video_fps, cfg.video_max_frames)
    text_cols = [c for c in READ_COLUMNS[fmt] + ("prompt",) if c in src.dataset.column_names]
    if may_mention_media(src.dataset, text_cols):
        _raise_first_media_row(src, text_cols)
    if present:
        logger.warning("%s: dropping the %s column(s): the model is a text model (no text refers "
                       "to them)", src.label, present)
        src = src.with_dataset(src.dataset.remove_columns(present))
    return src, None


def _raise_first_media_row(src: Source, text_cols: list[str]) -> None:
    """The python scan behind `may_mention_media`: the first row whose text refers to media."""
    rows = src.python_rows()[0]
    if rows is None:
        rows = [dict(zip(text_cols, v)) for v in zip(*src.dataset.select_columns(text_cols).to_dict().values())]
    for i, row in enumerate(rows):
        if mentions_media({c: row.get(c) for c in text_cols}):
            raise DataError(
                f"{_row_label(src, i, row.get('id'))}: the text refers to images or videos "
                "(<image>/<video> placeholders or image parts), but the model is a text model "
                "(model.kind=causal_lm) that cannot see them; use a vision-language model (model=tiny_vlm, or "
                "model.kind=image_text_to_text with a VLM) or remove the placeholders"
            )


def _prepare(src: Source, fmt: str, cfg: DataConfig, limit: int | None,
             vision: bool = False) -> datasets.Dataset:
    """Keep the first `limit` rows, check them, normalise them."""
    if limit is not None and limit < len(src.dataset):
        # The first rows (not a sample) so that row numbers in error messages are still file rows.
        src = src.with_dataset(src.dataset.select(range(limit)))
    if fmt == "text" and cfg.system_prompt is not None:
        raise DataError(
            f"{src.label}: data.system_prompt needs conversational data, but the rows are plain 'text'; "
            "remove data.system_prompt or convert the data to messages"
        )
    src, media = _media_for(src, fmt, cfg, vision)
    return _normalise(src, fmt, cfg, media)


def _cast_images(dataset: datasets.Dataset | None) -> datasets.Dataset | None:
    """The `images` column as datasets Image features (decoded to PIL when trl reads a batch)."""
    if dataset is None or "images" not in dataset.column_names:
        return dataset

    return dataset.cast_column("images", image_feature())


def load_stage_data(cfg: Any, stage: str, vision: bool = False) -> StageData:
    """Load, check and normalise the train (and eval) data of one stage ("sft", "dpo", "kto",
    "rm" or "grpo"). For KTO, preference pairs are unpacked into unpaired rows (`unpack_pairs`).

    `cfg` is a DataConfig, a mapping or a DictConfig with DataConfig's keys. `vision`: the model
    is a vision-language model (`model.kind=image_text_to_text`), so images/videos are kept and
    checked (see the package docstring); for a text model unused media columns are dropped.
    Raises DataError with the source, row, field and fix for anything trl would choke on later.
    """
    if stage not in STAGES:
        raise DataError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    cfg = as_data_config(cfg)
    with _progress_bars_on_a_terminal():
        return _load_stage_data(cfg, stage, vision)


@contextlib.contextmanager
def _progress_bars_on_a_terminal():
    """datasets' progress bars (reading a file, checking its rows) where someone watches them,
    on a terminal. Written to a log or a captured stream (a batch job, a scheduler, a CI step)
    they are lines of redrawn bars, and a bad file's one-line error would follow them."""
    import sys

    import datasets

    if sys.stderr.isatty() or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _load_stage_data(cfg: DataConfig, stage: str, vision: bool) -> StageData:
    train_src, eval_src = load_sources(cfg, stage)
    train_src = rename_columns(train_src, cfg.columns)
    fmt = detect_format(train_src.dataset.column_names, stage, train_src.label, cfg.format)

    if cfg.eval_fraction:
        full = _prepare(train_src, fmt, cfg, None, vision)
        try:
            parts = full.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
        except ValueError as exc:
            raise DataError(f"{train_src.label}: data.eval_fraction={cfg.eval_fraction}: {exc}") from exc
        train, eval_ = parts["train"], parts["test"]
        if cfg.max_samples is not None:
            train = train.select(range(min(cfg.max_samples, len(train))))
        if cfg.max_eval_samples is not None:
            eval_ = eval_.select(range(min(cfg.max_eval_samples, len(eval_))))
        eval_desc, eval_fmt = (
            f"eval: {cfg.eval_fraction:g} of it held out (seed {cfg.seed})",
            fmt,
        )
    else:
        train = _prepare(train_src, fmt, cfg, cfg.max_samples, vision)
        eval_, eval_desc, eval_fmt = None, "no eval split", fmt
        if eval_src is not None:
            eval_src = rename_columns(eval_src, cfg.columns)
            eval_fmt = detect_format(eval_src.dataset.column_names, stage, eval_src.label, cfg.format)
            eval_ = _prepare(eval_src, eval_fmt, cfg, cfg.max_eval_samples, vision)
            eval_desc = f"eval: {eval_src.label}"

    heldout = build_heldout(eval_, eval_fmt, cfg.num_proc, code=_code_version())
    note = ""
    if stage == "kto":  # after the held-out prompts, which take one row per pair
        if fmt == "preference":
            pairs, train = len(train), unpack_pairs(train, cfg.num_proc)
            note = (f" (preference pairs unpacked: {pairs} pairs -> {len(train)} unpaired rows, "
                    "chosen label true, rejected label false)")
        else:
            note = " (unpaired rows as given)"
        if eval_fmt == "preference":
            eval_ = unpack_pairs(eval_, cfg.num_proc)
    # Cast last: a map over decoded images would re-encode every one of them.
    train, eval_, heldout = _cast_images(train), _cast_images(eval_), _cast_images(heldout)
    source = f"{train_src.label} [{stage}, {fmt}] train {len(train)} rows{note}; " \
        f"{eval_desc}" + (f", {len(eval_)} rows" if eval_ is not None else "")
    logger.info("data: %s", source)
    return StageData(train=train, eval=eval_, heldout=heldout, source=source, format=fmt)


#: Rows scanned for tool turns before SFT (a tool-use set has them in most rows).
TOOL_TURN_SCAN_ROWS = 10_000


def check_tool_turns_masked(dataset: datasets.Dataset | None, label: str,
                            assistant_only_loss: bool) -> None:
    """SFT on conversations with tool turns must train on the assistant's turns only: otherwise
    the model learns to write the tools' answers itself (trl trains every token of `messages`
    unless `assistant_only_loss`). Scans the first TOOL_TURN_SCAN_ROWS rows."""
    if assistant_only_loss or dataset is None or "messages" not in dataset.column_names:
        return
    head = dataset.select_columns(["messages"]).select(range(min(len(dataset),
                                                                 TOOL_TURN_SCAN_ROWS)))
    for i, messages in enumerate(head["messages"]):
        if any(m.get("role") == "tool" for m in messages):
            raise DataError(f"{label}: row {i} has a tool turn, and SFT would train on it as if "
                            "the model wrote the tool's answer: set trainer.assistant_only_loss="
                            "true (the chat template needs {% generation %} markers)")
