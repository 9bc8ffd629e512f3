"""PNG charts of training runs, for people who do not use W&B.

    python -m align.plots outputs/grpo/<run id> --out plots/
    python -m align.plots outputs/sft/A outputs/grpo/B multirun/dpo/<sweep id> --out plots/

Each argument is a run folder or a folder above run folders (a Hydra multirun folder); the runs
found are overlaid, one line each. A run's per-step figures come from `log_history.jsonl`
(written by every training run), else from the newest `checkpoint-*/trainer_state.json`.
Held-out accuracy also takes the before/after figures and the periodic ones
(`heldout.eval_steps`) from metrics.json.

One PNG per chart that any run has data for, and `overview.png` with all of them:
  loss.png                 training loss
  reward_<name>.png        GRPO: each reward function's mean (trl's rewards/<name>/mean)
  reward.png               GRPO: the weighted total reward
  kl.png                   GRPO with beta > 0: KL to the reference
  heldout_<reward>.png     held-out figures over steps (before, during, after)
  preference.png           DPO: share of training pairs ranked right (trl's rewards/accuracies)
  token_accuracy.png       SFT/DPO: next-token accuracy on the training batches
  completion_length.png    GRPO: mean completion length in tokens
Needs matplotlib (a core dependency); charts are drawn without a display (Agg backend).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from align.errors import AlignError, report_user_error

#: chart file name -> (title, y label, key in the trainer's log history)
FIXED_CHARTS = {
    "loss": ("training loss", "loss", "loss"),
    "reward": ("total reward (weighted)", "reward", "reward"),
    "kl": ("KL to the reference model", "KL", "kl"),
    "preference": ("DPO: training pairs ranked right", "share", "rewards/accuracies"),
    "token_accuracy": ("next-token accuracy (training batches)", "accuracy",
                       "mean_token_accuracy"),
    "completion_length": ("mean completion length", "tokens", "completions/mean_length"),
}
REWARD_KEY = re.compile(r"^rewards/(?P<name>[^/]+)/mean$")
HELDOUT_KEY = re.compile(r"^heldout/(?P<name>[^/]+)$")


def find_run_dirs(paths: list[str]) -> list[Path]:
    runs: list[Path] = []
    for arg in paths:
        path = Path(arg)
        if not path.is_dir():
            raise AlignError(f"{path}: no such folder")
        if _has_log(path):
            found = [path]
        else:
            found = sorted({p.parent for p in path.rglob("log_history.jsonl")}
                           | {p.parent for p in path.rglob("metrics.json")})
            found = [p for p in found if _has_log(p)]
        if not found:
            raise AlignError(f"{path}: no training log here (log_history.jsonl, or "
                             "checkpoint-*/trainer_state.json, written by a training run)")
        runs += [p for p in found if p not in runs]
    return runs


def _has_log(path: Path) -> bool:
    return ((path / "log_history.jsonl").is_file()
            or any(path.glob("checkpoint-*/trainer_state.json")))


def read_log_history(run: Path) -> list[dict]:
    """The trainer's log history of a run folder (see module doc for where it comes from)."""
    log_file = run / "log_history.jsonl"
    if log_file.is_file():
        return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    states = sorted(run.glob("checkpoint-*/trainer_state.json"),
                    key=lambda p: int(p.parent.name.split("-")[-1]))
    if states:
        return json.loads(states[-1].read_text()).get("log_history", [])
    return []


def heldout_points(run: Path, history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """{reward: [(step, value)]} from metrics.json before/during/after and the log history."""
    points: dict[str, dict[int, float]] = {}
    for entry in history:
        for key, value in entry.items():
            m = HELDOUT_KEY.match(key)
            if m and isinstance(value, (int, float)) and "step" in entry:
                points.setdefault(m["name"], {})[int(entry["step"])] = float(value)
    metrics_file = run / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        last = int((metrics.get("train") or {}).get("global_step")
                   or max((int(h.get("step", 0)) for h in history), default=0))
        for when, step in (("heldout_before", 0), ("heldout_after", last)):
            for name, value in (metrics.get(when) or {}).items():
                if "/" in name or name in ("samples", "completion_tokens_mean",
                                           "preference_pairs", "preference_margin"):
                    continue
                if isinstance(value, (int, float)):
                    points.setdefault(name, {})[step] = float(value)
        for entry in metrics.get("heldout_during") or []:
            for name, value in entry.items():
                if name not in ("step", "train_s") and isinstance(value, (int, float)):
                    points.setdefault(name, {})[int(entry["step"])] = float(value)
    return {name: sorted(values.items()) for name, values in points.items()}


def collect_series(run: Path) -> dict[str, tuple[str, str, list[tuple[int, float]]]]:
    """{chart file name: (title, y label, [(step, value)])} for one run."""
    history = read_log_history(run)
    charts: dict[str, tuple[str, str, list[tuple[int, float]]]] = {}

    def series(key):
        return [(int(h["step"]), float(h[key])) for h in history
                if key in h and "step" in h and isinstance(h[key], (int, float))]

    for chart, (title, ylabel, key) in FIXED_CHARTS.items():
        if points := series(key):
            charts[chart] = (title, ylabel, points)
    reward_names = sorted({m["name"] for h in history for k in h if (m := REWARD_KEY.match(k))})
    for name in reward_names:
        charts[f"reward_{name}"] = (f"reward: {name} (mean over samples)", name,
                                    series(f"rewards/{name}/mean"))
    for name, points in heldout_points(run, history).items():
        pairs = name.startswith("preference") or name == "implicit_reward_accuracy"
        how = "chosen vs rejected pairs" if pairs else "greedy"
        charts[f"heldout_{name}"] = (f"held-out {name} ({how})", name, points)
    return charts


def run_label(run: Path, runs: list[Path]) -> str:
    import os

    if len(runs) == 1:
        return run.name
    common = Path(os.path.commonpath([str(r.resolve()) for r in runs]))
    return str(run.resolve().relative_to(common)) or run.name


def plot(paths: list[str], out: str) -> list[Path]:
    """Write one PNG per chart (runs overlaid) and overview.png; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = find_run_dirs(paths)
    per_run = {run: collect_series(run) for run in runs}
    order = [c for c in ("loss", "reward") if any(c in s for s in per_run.values())]
    others = sorted({c for s in per_run.values() for c in s} - set(order),
                    key=lambda c: (not c.startswith("heldout_"), not c.startswith("reward_"), c))
    order += others
    if not order:
        raise AlignError(f"no per-step figures in {', '.join(map(str, runs))}: was "
                         "trainer.logging_steps larger than the number of steps?")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def draw(ax, chart):
        title, ylabel = None, None
        for run in runs:
            if chart not in per_run[run]:
                continue
            title, ylabel, points = per_run[run][chart]
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) <= 12 else None, markersize=3,
                    linewidth=1.5, label=run_label(run, runs))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)

    for chart in order:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        draw(ax, chart)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{chart}.png"))
        plt.close(fig)
    cols = min(3, len(order))
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), dpi=100, squeeze=False)
    for ax, chart in zip(axes.flat, order):
        draw(ax, chart)
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "overview.png"))
    plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    """Save aside, then rename: a reader never sees half a PNG."""
    import os

    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m align.plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or folders above them (multirun)")
    parser.add_argument("--out", default="plots", help="folder for the PNG files (default plots/)")
    args = parser.parse_args(argv)
    try:
        written = plot(args.runs, args.out)
    except AlignError as exc:
        return report_user_error(exc)
    print(f"wrote {len(written)} charts to {args.out}: "
          + ", ".join(p.name for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
