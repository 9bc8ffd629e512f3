"""Offline reward test bench: score completions you already have with any reward configuration.

    python -m rewards score samples.jsonl rewards=math +trainer.max_completion_length=256
    python -m rewards score outputs/grpo/2026-11-27_19-23-00                 # re-score a GRPO run
    python -m rewards score outputs/grpo/2026-11-27_19-23-00 rewards.accuracy.weight=2 \\
        +rewards.brevity.fn=my_pkg.rewards:brevity +rewards.brevity.weight=0.1
    python -m rewards score samples.parquet +rewards.ok.fn=accuracy --tokenizer tiny_model/ --top 5

Input (``FILE``): a ``.jsonl``/``.json``/``.parquet`` file, a folder of ``.parquet`` files, or a GRPO
run folder. Each row has ``completion`` (a string or a list of messages) and usually ``prompt``;
every other column reaches the rewards as a keyword argument, as in training. A GRPO run with
``trainer.log_completions=true`` writes ``<run>/completions/completions_<step>.parquet`` (trl's
completions table: ``step``, ``prompt``, ``completion``, one column per reward, ``advantage``, and
the dataset columns, which align's reward registry copies into it), so a finished run can be
scored again with a changed reward.

Rewards: Hydra overrides, the same syntax as ``align/grpo.py``: ``rewards=<file in
conf/rewards/>``, ``rewards.<name>.<key>=...``, ``+rewards.<name>.fn=...``, ``~rewards.<name>``.
For a run folder the run's own ``rewards:`` (and ``trainer:``, for interpolations) from its
``config.yaml`` are the starting point. ``--tokenizer`` computes ``completion_ids`` for token-based
rewards (``overlong``, ``length_band`` with ``unit: tokens``, ``repetition``, ``cosine_length``);
without it, the words of a completion (split on whitespace) stand in for its tokens, and the
bench says so: lengths are then counted in words.

Output: a table of per-reward statistics (mean, std, min, max, how many samples were scored,
failed, or not applicable), the share of prompt groups in which a reward has zero variance
(flagged: GRPO's advantage is zero there, it learns nothing from those groups), the highest and
lowest scored samples, and the scored file (input columns + ``rewards/<name>`` + ``reward``, the
weighted sum), written atomically to ``--out`` (default: ``<FILE>.scored.jsonl`` next to the input).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards.registry import BoundReward, RewardConfigError, RewardError, build_rewards

#: Columns of trl's completions table that describe the training step, not the example.
TRL_TABLE_COLUMNS = ("step", "advantage")
#: A reward is flagged when at least this share of prompt groups has zero variance.
ZERO_VARIANCE_FLAG = 0.5
SCORE_PREFIX = "rewards/"


class BenchError(ValueError):
    """Bad bench input: names the file, the row and the field, and the fix."""


# ------------------------------------------------------------------------------------- input


@dataclass
class Samples:
    rows: list[dict[str, Any]]
    source: str
    run_config: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchError(f"{path}: line {line_no}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise BenchError(f"{path}: line {line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BenchError(f"{path}: a .json file must hold a list of objects (one per sample)")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise BenchError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def load_samples(path: str | Path) -> Samples:
    """Rows of ``path`` (file, folder of parquet files, or GRPO run folder), checked."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: no such file or folder")
    run_config = None
    if path.is_dir():
        if (path / "config.yaml").is_file():
            from omegaconf import OmegaConf

            run_config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
        folder = path / "completions" if (path / "completions").is_dir() else path
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise BenchError(
                f"{path}: no .parquet files in {folder}. A GRPO run writes them with "
                "trainer.log_completions=true (completions/completions_<step>.parquet)"
            )
    else:
        files = [path]
    rows: list[dict[str, Any]] = []
    for file in files:
        for i, row in enumerate(_read_file(file)):
            if "completion" not in row:
                raise BenchError(
                    f"{file}: row {i}: no 'completion' field (fields: {sorted(row)}); each row needs "
                    "the completion to score, plus 'prompt' and the columns the rewards read"
                )
            row = {k: v for k, v in row.items() if not k.startswith(SCORE_PREFIX) and k != "reward"}
            row["_source"] = f"{file.name}:{i}"
            rows.append(row)
    if not rows:
        raise BenchError(f"{path}: no samples")
    return Samples(rows=rows, source=str(path), run_config=run_config, files=files)


# ------------------------------------------------------------------------------------- config


def default_config_dir() -> Path | None:
    """The repository's ``conf/`` (an editable install), if there is one."""
    candidate = Path(__file__).resolve().parent.parent / "conf"
    return candidate if (candidate / "rewards").is_dir() else None


def compose_rewards(
    overrides: Sequence[str],
    run_config: Mapping[str, Any] | None = None,
    config_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The ``rewards:`` specs from Hydra ``overrides`` (as for ``align/grpo.py``) on top of the
    run's config (if any); ``rewards=<choice>`` starts from ``conf/rewards/<choice>.yaml`` instead."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    choose_group = any(o.split("=", 1)[0].lstrip("+") == "rewards" for o in overrides)
    run_config = dict(run_config or {})
    node: dict[str, Any] = {"trainer": run_config.get("trainer") or {}}
    if choose_group:
        node["defaults"] = [{"rewards": None}, "_self_"]
    else:
        node["rewards"] = run_config.get("rewards") or {}
    ConfigStore.instance().store(name="_rewards_bench", node=node)
    conf = Path(config_dir) if config_dir else default_config_dir()
    if choose_group and conf is None:
        raise BenchError(
            "rewards=<choice> needs the config folder holding rewards/<choice>.yaml: pass --config-dir"
        )
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str((conf or Path(tempfile.gettempdir())).resolve()),
                                   version_base="1.3"):
            cfg = compose("_rewards_bench", overrides=list(overrides))
        node_rewards = cfg.get("rewards")
        specs = OmegaConf.to_container(node_rewards, resolve=True) if node_rewards else {}
    except OmegaConfBaseException as e:
        hint = ""
        if "trainer." in str(e):
            hint = " (a reward file reads the trainer config: set it, e.g. +trainer.max_completion_length=256)"
        raise BenchError(f"rewards config: {e}{hint}") from e
    except Exception as e:  # hydra's override and missing-file errors
        if type(e).__module__.startswith("hydra"):
            raise BenchError(f"rewards config: {e}") from e
        raise
    finally:
        GlobalHydra.instance().clear()
    if not specs:
        raise BenchError(
            "no rewards to score with: give rewards=<file in conf/rewards/> or "
            "+rewards.<name>.fn=<registered name or pkg.module:function>"
        )
    return specs


# ------------------------------------------------------------------------------------- scoring


def _group_key(row: Mapping[str, Any]) -> str:
    return json.dumps([row.get("step"), row.get("prompt")], sort_keys=True, default=str)


@dataclass
class RewardStats:
    name: str
    weight: float
    scored: int
    not_applicable: int
    failed: int
    mean: float
    std: float
    low: float
    high: float
    zero_variance_groups: int
    groups: int

    @property
    def zero_variance_share(self) -> float:
        return self.zero_variance_groups / self.groups if self.groups else float("nan")

    @property
    def flagged(self) -> bool:
        return self.groups > 0 and self.zero_variance_share >= ZERO_VARIANCE_FLAG


def _stats(name: str, weight: float, scores: list[float | None], groups: dict[str, list[int]],
           failed: int) -> RewardStats:
    values = [s for s in scores if s is not None and not math.isnan(s)]
    zero, counted = 0, 0
    for members in groups.values():
        group_values = [scores[i] for i in members if scores[i] is not None]
        if len(group_values) >= 2:
            counted += 1
            zero += max(group_values) - min(group_values) == 0
    nan = float("nan")
    return RewardStats(
        name=name, weight=weight, scored=len(values), not_applicable=len(scores) - len(values) - failed,
        failed=failed, mean=statistics.fmean(values) if values else nan,
        std=statistics.pstdev(values) if len(values) > 1 else (0.0 if values else nan),
        low=min(values) if values else nan, high=max(values) if values else nan,
        zero_variance_groups=zero, groups=counted,
    )


def word_ids(text: str, vocabulary: dict[str, int]) -> list[int]:
    """``completion_ids`` without a tokenizer: one id per whitespace-separated word (the same
    word, the same id), so token-based rewards count words and n-gram repetition still works."""
    return [vocabulary.setdefault(word, len(vocabulary)) for word in text.split()]


def score_rows(
    rows: list[dict[str, Any]],
    funcs: Sequence[BoundReward],
    weights: Sequence[float],
    tokenizer: Any = None,
    batch_size: int = 256,
) -> tuple[dict[str, list[float | None]], list[float], list[RewardStats]]:
    """Score every row with every reward, as GRPOTrainer would call them (in batches). Without a
    ``tokenizer``, ``completion_ids`` are word ids (:func:`word_ids`)."""
    from rewards.text import completion_text

    n = len(rows)
    columns = sorted({k for row in rows for k in row} - {"completion", "prompt", "_source",
                                                         *TRL_TABLE_COLUMNS})
    scores: dict[str, list[float | None]] = {f.__name__: [] for f in funcs}
    failed = dict.fromkeys(scores, 0)
    vocabulary: dict[str, int] = {}
    for start in range(0, n, batch_size):
        batch = rows[start : start + batch_size]
        kwargs: dict[str, Any] = {k: [row.get(k) for row in batch] for k in columns}
        kwargs["prompts"] = [row.get("prompt") for row in batch]
        completions = [row["completion"] for row in batch]
        if tokenizer is not None:
            kwargs["completion_ids"] = [
                tokenizer(completion_text(c), add_special_tokens=False)["input_ids"]
                for c in completions
            ]
        else:
            kwargs["completion_ids"] = [word_ids(completion_text(c), vocabulary) for c in completions]
        kwargs.update(trainer_state=None, log_extra=None, log_metric=None)
        for fn in funcs:
            before = fn.errors
            batch_kwargs = {k: v for k, v in kwargs.items() if k not in fn.kwargs}
            scores[fn.__name__].extend(fn(completions=completions, **batch_kwargs))
            failed[fn.__name__] += fn.errors - before
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[_group_key(row)].append(i)
    # The weighted sum, as trl computes it: a None (NaN) score contributes nothing.
    total = [
        sum(w * scores[f.__name__][i] for f, w in zip(funcs, weights) if scores[f.__name__][i] is not None)
        for i in range(n)
    ]
    stats = [_stats(f.__name__, w, scores[f.__name__], groups, failed[f.__name__])
             for f, w in zip(funcs, weights)]
    stats.append(_stats("reward (weighted sum)", float("nan"), list(total), groups, 0))
    return scores, total, stats


# ------------------------------------------------------------------------------------- output


def write_scored(path: Path, rows: list[dict[str, Any]], scores: Mapping[str, list],
                 total: list[float]) -> None:
    """Input rows + ``rewards/<name>`` + ``reward``, written aside then renamed into place."""
    out_rows = []
    for i, row in enumerate(rows):
        out = {k: v for k, v in row.items() if k != "_source"}
        for name, values in scores.items():
            out[SCORE_PREFIX + name] = values[i]
        out["reward"] = total[i]
        out_rows.append(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if path.suffix.lower() == ".parquet":
            os.close(fd)
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(out_rows), tmp)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for out in out_rows:
                    f.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _excerpt(value: Any, width: int = 70) -> str:
    from rewards.text import completion_text

    if value is None:
        return ""
    try:
        text = completion_text(value)
    except TypeError:
        text = str(value)
    if not isinstance(value, str) and isinstance(value, Sequence) and len(value) > 1:
        text = " | ".join(completion_text([m]) for m in value)  # a prompt: all its turns
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def print_report(console: Any, rows: list[dict[str, Any]], scores: Mapping[str, list],
                 total: list[float], stats: list[RewardStats], top: int) -> None:
    from rich.table import Table

    table = Table(title=f"{len(rows)} samples, {stats[-1].groups} prompt groups")
    for header in ("reward", "weight", "mean", "std", "min", "max", "scored", "n/a", "failed",
                   "zero-var groups"):
        table.add_column(header, justify="left" if header == "reward" else "right")
    for s in stats:
        share = "-" if not s.groups else f"{s.zero_variance_groups}/{s.groups} ({s.zero_variance_share:.0%})"
        table.add_row(
            s.name, _fmt(s.weight), _fmt(s.mean), _fmt(s.std), _fmt(s.low), _fmt(s.high),
            str(s.scored), str(s.not_applicable), str(s.failed),
            f"[bold red]{share} ⚠[/]" if s.flagged else share,
        )
    console.print(table)
    flagged = [s.name for s in stats if s.flagged]
    if flagged:
        console.print(
            f"[bold red]zero variance[/] within at least {ZERO_VARIANCE_FLAG:.0%} of the prompt groups: "
            f"{', '.join(flagged)}. GRPO's advantage is zero in such a group: it learns nothing "
            "from those samples."
        )
    order = sorted(range(len(rows)), key=lambda i: total[i])
    names = list(scores)
    for title, picked in (("highest", order[::-1][:top]), ("lowest", order[:top])):
        samples = Table(title=f"{title} scored samples")
        for header in ("reward", *names, "prompt", "completion", "row"):
            samples.add_column(header, overflow="fold")
        for i in picked:
            samples.add_row(_fmt(total[i]), *(_fmt(scores[n][i]) for n in names),
                            _excerpt(rows[i].get("prompt"), 40), _excerpt(rows[i]["completion"]),
                            rows[i]["_source"])
        console.print(samples)


def default_output(samples: Samples) -> Path:
    source = Path(samples.source)
    if source.is_dir():
        return source / "completions.scored.jsonl"
    return source.with_name(source.stem + ".scored.jsonl")


def score_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(width=args.width)
    samples = load_samples(args.file)
    specs = compose_rewards(args.overrides, samples.run_config, args.config_dir)
    funcs, weights = build_rewards(specs)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        console.print(
            "no --tokenizer: completion_ids are whitespace-separated words, so token-based rewards "
            "(overlong, length_band unit=tokens, repetition, cosine_length) count words, not tokens"
        )
    scores, total, stats = score_rows(samples.rows, funcs, weights, tokenizer, args.batch_size)
    print_report(console, samples.rows, scores, total, stats, args.top)
    out = Path(args.out) if args.out else default_output(samples)
    write_scored(out, samples.rows, scores, total)
    console.print(f"scored file: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewards",
        description="Reward tools. `score`: score completions offline with any reward configuration.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser(
        "score", help="score a file of completions (or a GRPO run's logged completions)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("file", help=".jsonl/.json/.parquet, a folder of .parquet, or a GRPO run folder")
    score.add_argument("overrides", nargs="*",
                       help="Hydra overrides: rewards=math, rewards.accuracy.weight=2, +rewards.x.fn=...")
    score.add_argument("--out", help="scored file (.jsonl or .parquet); default <FILE>.scored.jsonl")
    score.add_argument("--top", type=int, default=3, help="highest/lowest samples shown (default 3)")
    score.add_argument("--tokenizer", help="tokenizer (folder or hub id) to compute completion_ids; "
                       "default: one id per whitespace-separated word")
    score.add_argument("--config-dir", help="config folder holding rewards/*.yaml (default: the repo's conf/)")
    score.add_argument("--batch-size", type=int, default=256, help="samples per reward call")
    score.add_argument("--width", type=int, default=None, help="table width (default: the terminal's)")
    args = parser.parse_args(argv)
    try:
        return score_command(args)
    except (BenchError, RewardConfigError, RewardError) as e:
        print(f"error: {e}", file=__import__("sys").stderr)
        return 2
