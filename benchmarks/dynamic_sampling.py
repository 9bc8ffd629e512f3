"""Dynamic sampling on and off, side by side: held-out accuracy and time to accuracy.

    python benchmarks/dynamic_sampling.py                     # 3 seeds x on/off, ~25 min on 2 cores
    python benchmarks/dynamic_sampling.py --seeds 0 --steps 300
    python benchmarks/dynamic_sampling.py --quick --out /tmp/ds   # the mechanics, in a minute

Each run is the README's command as a user types it, `python align/grpo.py seed=S
model=tiny_sft trainer.dynamic_sampling=true|false heldout.eval_steps=N logger=none` (the
embedded task: a+b prompts, exact-answer reward; from the tiny model's ~50% warm-up, where the
README's figures were measured: `--model tiny_sft90` for the GRPO default's start), one process at a
time, on and off interleaved per seed so that a busy machine slows both alike. From each run's
metrics.json: held-out accuracy before and after (greedy, 200 prompts), and the periodic
held-out points with `train_s` (training seconds, the measurements left out).

Time to accuracy, per seed: the target is the final held-out accuracy of the run without
dynamic sampling (the control); for each run, the first held-out point at or above it, as
training steps, tokens processed (trl's `num_tokens`: every generated sample's prompt and
completion, so dynamic sampling's extra rounds count) and training seconds. Steps and tokens
repeat on one machine; seconds depend on the machine and its load (the table says the load).
"never" when a run did not reach the target at any measured point.

Writes dynamic_sampling.json, dynamic_sampling.md (the table, machine and versions) and
dynamic_sampling.png (held-out accuracy over steps and over tokens processed) into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import describe, machine

REPO = Path(__file__).resolve().parents[1]


def run_one(seed: int, dynamic: bool, args: argparse.Namespace) -> dict:
    label = f"seed{seed}-{'on' if dynamic else 'off'}"
    run_dir = args.out / "runs" / label
    if args.reuse and (run_dir / "metrics.json").is_file():
        return read_run(run_dir, seed, dynamic, None)
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "align" / "grpo.py"), f"seed={seed}", f"model={args.model}",
           f"trainer.dynamic_sampling={str(dynamic).lower()}",
           f"trainer.max_steps={args.steps}", f"heldout.eval_steps={args.eval_steps}",
           # trl's num_tokens must be logged at every held-out step
           f"trainer.logging_steps={math.gcd(25, args.eval_steps)}",
           "logger=none", "trainer.save_strategy=no", f"hydra.run.dir={run_dir}", *args.extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=args.out,
                          env={**os.environ, "ALIGN_RUN_ID": label})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return read_run(run_dir, seed, dynamic, wall)


def read_run(run_dir: Path, seed: int, dynamic: bool, wall: float | None) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in
               (run_dir / "log_history.jsonl").read_text().splitlines()]
    tokens = {h["step"]: h["num_tokens"] for h in history if "num_tokens" in h and "step" in h}
    # (step, training seconds, tokens processed so far, held-out accuracy); tokens: trl's
    # num_tokens (prompts and completions of every generated sample) at that step's log line
    curve = [(0, 0.0, 0.0, metrics["heldout_before"]["accuracy"])] + [
        (p["step"], p["train_s"], tokens.get(p["step"]), p["accuracy"])
        for p in metrics["heldout_during"]]
    extra = [h["dynamic_sampling/generated_groups"] for h in history
             if "dynamic_sampling/generated_groups" in h]
    zero = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
    return {"seed": seed, "dynamic_sampling": dynamic,
            "wall_s": None if wall is None else round(wall, 1),
            "train_s": round(metrics["train"]["train_runtime"], 1),
            "before": metrics["heldout_before"]["accuracy"],
            "after": metrics["heldout_after"]["accuracy"], "curve": curve,
            "generated_groups_mean": round(statistics.mean(extra), 3) if extra else 1.0,
            "frac_reward_zero_std_mean": round(statistics.mean(zero), 3) if zero else None}


def first_reaching(curve: list, target: float) -> tuple | None:
    """The first held-out point (step, seconds, tokens, accuracy) at or above `target`."""
    return next((point for point in curve if point[3] >= target - 1e-9), None)


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for seed in sorted({r["seed"] for r in results}):
        off, on = (next(r for r in results if r["seed"] == seed and r["dynamic_sampling"] is d)
                   for d in (False, True))
        target = off["after"]
        for r in (off, on):
            hit = first_reaching(r["curve"], target)
            rows.append({"seed": seed, "dynamic_sampling": r["dynamic_sampling"],
                         "before": r["before"], "after": r["after"], "target": target,
                         "steps_to_target": hit and hit[0], "seconds_to_target": hit and hit[1],
                         "tokens_to_target": hit and hit[2],
                         "train_s": r["train_s"], "wall_s": r["wall_s"],
                         "generated_groups": r["generated_groups_mean"],
                         "zero_spread": r["frac_reward_zero_std_mean"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| seed | dynamic sampling | held-out before | after | reaches the control's final "
             "at step | tokens by then | training s by then | training s in all | "
             "groups generated per group trained | zero-spread share (generated) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        step, tokens, secs = r["steps_to_target"], r["tokens_to_target"], r["seconds_to_target"]
        reached = "never" if step is None else str(step)
        tokens = "-" if tokens is None else f"{tokens / 1e3:.0f}k"
        secs = "-" if secs is None else f"{secs:.0f}"
        zero = "-" if r["zero_spread"] is None else f"{r['zero_spread']:.3f}"
        lines.append(f"| {r['seed']} | {'on' if r['dynamic_sampling'] else 'off'} | "
                     f"{r['before']:.3f} | {r['after']:.3f} | {reached} (target "
                     f"{r['target']:.3f}) | {tokens} | {secs} | {r['train_s']:.0f} | "
                     f"{r['generated_groups']:.2f} | {zero} |")
    return "\n".join(lines)


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{describe(machine(('torch', 'trl')))}; load {load:.1f} at the end"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Steps and tokens: they repeat on one machine; seconds depend on its load (in the table).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (index, label, scale) in zip(axes, ((0, "GRPO steps", 1),
                                                (2, "tokens processed (thousands)", 1e3))):
        for r in results:
            points = [p for p in r["curve"] if p[index] is not None]
            ax.plot([p[index] / scale for p in points], [p[3] for p in points],
                    color=colours[r["seed"] % len(colours)],
                    linestyle="-" if r["dynamic_sampling"] else "--", marker=".",
                    label=f"seed {r['seed']} "
                          f"{'dynamic sampling' if r['dynamic_sampling'] else 'control'}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy (greedy, 200 prompts)")
    axes[0].legend(fontsize=7)
    fig.suptitle("GRPO on the embedded task: dynamic sampling (solid) and the control (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--model", default="tiny_sft", help="the model config group's choice")
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("dynamic_sampling_results"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs already finished in --out/runs (summarise again)")
    parser.add_argument("--quick", action="store_true",
                        help="the mechanics only: 4 steps, small batches, 16 held-out prompts")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.extra = []
    if args.quick:
        args.steps, args.eval_steps = 4, 2
        args.extra = ["trainer.per_device_train_batch_size=16", "trainer.num_generations=4",
                      "heldout.max_samples=16", "data.max_samples=256"]
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for dynamic in (False, True):
            result = run_one(seed, dynamic, args)
            results.append(result)
            print(f"seed {seed} dynamic_sampling={dynamic}: {result['before']:.3f} -> "
                  f"{result['after']:.3f} in {result['train_s']:.0f} s of training", flush=True)
    rows = summarise(results)
    text = table(rows)
    header = (f"{machine_line()}; {args.steps} GRPO steps, held-out every {args.eval_steps} "
              f"steps ({time.strftime('%Y-%m-%d')})")
    (args.out / "dynamic_sampling.json").write_text(json.dumps(
        {"machine": header, "results": results, "summary": rows}, indent=1))
    (args.out / "dynamic_sampling.md").write_text(f"{header}\n\n{text}\n")
    plot(results, args.out / "dynamic_sampling.png")
    print(f"\n{header}\n\n{text}\n\nwritten to {args.out}")


if __name__ == "__main__":
    main()
