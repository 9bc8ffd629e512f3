"""Compare candidate runs side by side and name the best one.

    python -m align.compare multirun/grpo/<sweep id>                 # every run of a sweep
    python -m align.compare outputs/sft/A outputs/grpo/B --metric heldout_after.accuracy
    python -m align.compare multirun/dpo/<id> --metric heldout_after.preference_accuracy --out .

Each argument is a run folder (config.yaml + metrics.json, as the training entry points write
them) or any folder above run folders, such as a Hydra multirun folder: every run folder found
below it is a candidate. One table ranks the candidates on `--metric` (a dotted key into
metrics.json; default `heldout_after.accuracy`, the same key a sweep's `objective` names):

  - the first rows are the base models, measured before training (`heldout_before`), one per
    distinct starting model;
  - then the candidates, best first, with their gain over their own base and every other
    held-out figure;
  - `config differences`: the config keys whose values differ between candidates (for a sweep,
    the swept keys), so each row says what it tried.

The table goes to the terminal (rich) and to `compare.md` and `compare.csv` in `--out` (default:
the folder given, when there is one; else the current folder). The best candidate is named
at the end.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.errors import AlignError, report_user_error

DEFAULT_METRIC = "heldout_after.accuracy"
#: keys that differ between any two runs without being a choice someone made
IGNORED_KEYS = ("output_dir", "logger.run_name", "logger.group")


@dataclass
class Candidate:
    name: str
    path: Path
    config: dict
    metrics: dict
    diff: dict = field(default_factory=dict)

    @property
    def base_model(self) -> str:
        return str(self.config.get("model", {}).get("name_or_path", "?"))


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders (holding metrics.json and config.yaml) at or below each path, in order."""
    runs: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if not path.exists():
            raise AlignError(f"{path}: no such folder")
        if (path / "metrics.json").is_file():
            found = [path]
        else:
            found = sorted((p.parent for p in path.rglob("metrics.json")),
                           key=lambda p: [int(s) if s.isdigit() else s for s in p.parts])
        found = [p for p in found if (p / "config.yaml").is_file()]
        if not found:
            raise AlignError(f"{path}: no run folder here (a run folder holds metrics.json and "
                             "config.yaml, written when a training run finishes)")
        seen = {r.resolve() for r in runs}  # `a/0` and `/abs/a/0` are one run
        runs += [p for p in found if p.resolve() not in seen]
    return runs


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def lookup(metrics: dict, key: str) -> float | None:
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def load_candidates(runs: list[Path]) -> list[Candidate]:
    from omegaconf import OmegaConf

    candidates = []
    common = _common_parent(runs)
    for run in runs:
        try:
            metrics = json.loads((run / "metrics.json").read_text())
            config = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
        except (OSError, ValueError) as exc:
            raise AlignError(f"{run}: cannot read the run's metrics.json/config.yaml: {exc}")
        # Named from the folder all runs share; paths as typed may be relative, `common` is not.
        resolved = run.resolve()
        name = (str(resolved.relative_to(common)) if common and resolved != common
                else resolved.name)
        candidates.append(Candidate(name=name, path=run, config=config,
                                    metrics=metrics))
    flat = [flatten(c.config) for c in candidates]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if k not in IGNORED_KEYS
                 and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    for cand, f in zip(candidates, flat):
        cand.diff = {k: f.get(k) for k in differing}
    return candidates


def _common_parent(runs: list[Path]) -> Path | None:
    """The deepest folder above every run, resolved (absolute)."""
    try:
        import os

        return Path(os.path.commonpath([str(r.resolve()) for r in runs])) if runs else None
    except ValueError:
        return None


def _before_key(metric: str) -> str | None:
    section, _, name = metric.partition(".")
    return f"heldout_before.{name}" if section == "heldout_after" else None


def build_table(candidates: list[Candidate], metric: str,
                maximize: bool = True) -> tuple[list[str], list[list[Any]], Candidate | None]:
    """(header, rows, best): base rows first, then candidates ranked on `metric`."""
    before_key = _before_key(metric)
    after_names: list[str] = []
    for cand in candidates:
        for key, value in (cand.metrics.get("heldout_after") or {}).items():
            if isinstance(value, (int, float)) and "/" not in key and key not in after_names:
                after_names.append(key)
    metric_name = metric.split(".", 1)[-1]
    others = [n for n in after_names if n != metric_name and n not in ("samples",
                                                                        "preference_pairs")]
    header = ["rank", "candidate", metric, "gain", *others, "final loss", "train s",
              "config differences"]
    rows: list[list[Any]] = []
    bases: dict[str, float | None] = {}
    for cand in candidates:
        if cand.base_model in bases or not cand.metrics.get("heldout_before"):
            continue
        bases[cand.base_model] = lookup(cand.metrics, before_key) if before_key else None
        before = cand.metrics["heldout_before"]
        rows.append(["base", f"{cand.base_model} (before training)",
                     bases[cand.base_model], None, *[before.get(n) for n in others], None,
                     None, ""])

    def sort_key(cand):
        value = lookup(cand.metrics, metric)
        if value is None or math.isnan(value):
            return (1, 0.0)
        return (0, -value if maximize else value)

    ranked = sorted(candidates, key=sort_key)
    best = ranked[0] if ranked and lookup(ranked[0].metrics, metric) is not None else None
    for i, cand in enumerate(ranked, start=1):
        value = lookup(cand.metrics, metric)
        base = bases.get(cand.base_model)
        gain = value - base if value is not None and base is not None else None
        after = cand.metrics.get("heldout_after") or {}
        train = cand.metrics.get("train") or {}
        diff = ", ".join(f"{k}={_short(v)}" for k, v in cand.diff.items())
        rows.append([i, cand.name, value, gain, *[after.get(n) for n in others],
                     train.get("final_loss"), train.get("train_runtime"), diff])
    return header, rows, best


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3f}"
    return str(value)


def _gain_cell(value: Any) -> str:
    return "" if value is None else f"{value:+.3f}"


def format_rows(header: list[str], rows: list[list[Any]]) -> list[list[str]]:
    gain_col = header.index("gain")
    return [[_gain_cell(v) if j == gain_col else _cell(v) for j, v in enumerate(row)]
            for row in rows]


def to_markdown(header: list[str], rows: list[list[str]], best_line: str) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + f"\n\n{best_line}\n"


def to_csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def compare(paths: list[str], metric: str = DEFAULT_METRIC, out: str | None = None,
            maximize: bool = True, show: bool = True) -> dict:
    """Build, print and save the comparison; return {best, table, markdown, csv paths}."""
    from align.files import write_atomic

    candidates = load_candidates(find_runs(paths))
    if all(lookup(c.metrics, metric) is None for c in candidates):
        have = sorted({k for c in candidates for k, v in flatten(c.metrics).items()
                       if isinstance(v, (int, float))})
        raise AlignError(f"--metric {metric}: no run has it. Metrics found: "
                         f"{', '.join(have[:15])}")
    header, rows, best = build_table(candidates, metric, maximize)
    cells = format_rows(header, rows)
    if best is not None:
        base = [r for r in rows if r[0] == "base" and best.base_model in r[1]]
        value = lookup(best.metrics, metric)
        best_line = f"best: {best.name} ({metric} = {value:.3f}"
        if base and base[0][2] is not None:
            best_line += f", {value - base[0][2]:+.3f} over its base"
        best_line += f") at {best.path}"
    else:
        best_line = "best: none (no candidate has the metric)"
    out_dir = Path(out) if out else (Path(paths[0]) if len(paths) == 1 else Path("."))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "compare.md", to_markdown(header, cells, best_line))
    write_atomic(out_dir / "compare.csv", to_csv(header, rows))
    if show:
        _print_rich(header, cells, best_line, metric)
        print(f"table: {out_dir / 'compare.md'}, {out_dir / 'compare.csv'}")
    return {"best": best.path if best else None, "best_name": best.name if best else None,
            "header": header, "rows": rows, "markdown": out_dir / "compare.md",
            "csv": out_dir / "compare.csv"}


def _print_rich(header, cells, best_line, metric) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"candidates ranked on {metric}")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in cells:
        table.add_row(*row, style="dim" if row[0] == "base" else None)
    console = Console()
    console.print(table)
    console.print(best_line, style="bold")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m align.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="run folders or folders above them (multirun)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help=f"dotted key into metrics.json (default {DEFAULT_METRIC})")
    parser.add_argument("--minimize", action="store_true", help="lower is better (e.g. a loss)")
    parser.add_argument("--out", help="folder for compare.md and compare.csv")
    args = parser.parse_args(argv)
    try:
        compare(args.paths, args.metric, args.out, maximize=not args.minimize)
    except AlignError as exc:
        return report_user_error(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
