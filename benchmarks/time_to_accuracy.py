"""Time to accuracy: align's default GRPO pipeline against a plain trl pipeline written by hand.

    python benchmarks/time_to_accuracy.py                    # 3 seeds, ~8 min on 2 cores
    python benchmarks/time_to_accuracy.py --seeds 0 --out /tmp/tta
    python benchmarks/time_to_accuracy.py --control-no-checkpointing   # the control without
                                                  # trl's default activation checkpointing

Per seed, one after the other (never side by side: the figures are seconds):
- the control, benchmarks/plain/pipeline.py --seed S: its own tokenizer and 2-layer model, SFT
  until held-out accuracy >= 0.5, then 600 GRPO steps (trl's documented recipe, see its
  docstring);
- align, `python align/grpo.py seed=S heldout.eval_steps=50 logger=none` with an empty
  ALIGN_CACHE, so the tiny model and its SFT warm-up are built inside the timed process, as on a
  fresh machine; its own default number of steps (`--align-steps N` sets it). Its held-out
  measurement before GRPO's first step counts as a point (step 0), timed like the others.
Both are measured on the same 200 held-out a+b problems (greedy, exact answer) every 50 steps;
seconds run from the process start with the held-out measurements left out (align: from the
timestamps of its log lines, minus the time each measurement took).

Time to accuracy: the first time each pipeline's held-out accuracy reaches the control's final
accuracy. The goal (issue 14): align reaches it in <= 0.5x the control's whole time and ends
higher, on every seed. Writes time_to_accuracy.json and time_to_accuracy.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from machine import describe, machine

REPO = Path(__file__).resolve().parents[1]
#: the goal: align's time to the control's final accuracy over the control's whole time
GOAL_RATIO = 0.5
LINE = re.compile(r"^\[(?P<ts>[\d-]+ [\d:,]+)\]\[(?P<logger>[^\]]+)\]\[\w+\] - (?P<msg>.*)$")


def run_control(seed: int, out: Path, args: argparse.Namespace) -> dict:
    folder = out / f"control-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plain" / "pipeline.py"),
                           "--out", str(folder), "--seed", str(seed), "--grpo-steps",
                           str(args.steps), "--eval-steps", str(args.eval_steps),
                           *args.control_extra],
                          capture_output=True, text=True, cwd=out)
    if proc.returncode != 0:
        raise SystemExit(f"control seed {seed} failed:\n{proc.stderr[-3000:]}")
    raw = json.loads((folder / "pipeline.json").read_text())
    grpo = [(step, secs, acc) for phase, step, secs, acc in raw["curve"] if phase == "grpo"]
    return {"seed": seed, "side": "plain trl", "curve": grpo, "before": raw["before"],
            "after": raw["after"], "total_s": raw["clock_s"], "wall_s": raw["wall_s"],
            "sft_steps": raw["sft_steps"],
            "activation_checkpointing": raw["activation_checkpointing"]}


def align_curve(log: Path, launched: float) -> tuple[list, float, float]:
    """(step, seconds since launch minus measurement time, accuracy) of each periodic held-out
    point, the seconds to the end of training, and the seconds to the start of training (the
    end of the measurement before it), from the run's log."""
    measuring, points, end, start = 0.0, [], None, None
    for line in log.read_text().splitlines():
        m = LINE.match(line)
        if not m:
            continue
        at = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp() - launched
        took = re.match(r"held-out evaluation of \d+ prompts took ([\d.]+)s", m["msg"])
        if took:
            measuring += float(took.group(1))
            last_end = at
            if start is None:  # the measurement before training: GRPO starts after it
                start = at - measuring
            continue
        point = re.match(r"step (\d+) held-out heldout/accuracy=([\d.]+)", m["msg"])
        if point:
            # the measurement ended at `last_end` and took the time just added
            points.append((int(point.group(1)), round(last_end - measuring, 2),
                           float(point.group(2))))
            end = last_end - measuring
    return points, end, start


def run_align(seed: int, out: Path, args: argparse.Namespace) -> dict:
    run_dir = out / f"align-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run folder is appended to, never replaced
    with tempfile.TemporaryDirectory(dir=out) as cache:
        if args.quick:  # the tiny model from the usual cache: the mechanics, not the figures
            cache = os.environ.get("ALIGN_CACHE", "")
        launched = time.time()
        steps = [] if args.align_steps is None else [f"trainer.max_steps={args.align_steps}"]
        proc = subprocess.run(
            [sys.executable, str(REPO / "align" / "grpo.py"), f"seed={seed}", *steps,
             f"heldout.eval_steps={args.eval_steps}",
             "logger=none", "trainer.save_strategy=no", f"hydra.run.dir={run_dir}",
             *args.align_extra],
            capture_output=True, text=True, cwd=out,
            env={**os.environ, "ALIGN_CACHE": cache} if cache else None)
        wall = time.time() - launched
    if proc.returncode != 0:
        raise SystemExit(f"align seed {seed} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    points, end, start = align_curve(run_dir / "grpo.log", launched)
    before = metrics["heldout_before"]["accuracy"]
    return {"seed": seed, "side": "align", "curve": [(0, round(start, 2), before)] + points,
            "before": before, "after": metrics["heldout_after"]["accuracy"],
            "total_s": round(end, 2), "wall_s": round(wall, 1),
            "doctor": list(metrics.get("doctor", []))}  # the names of its findings


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for seed in sorted({r["seed"] for r in results}):
        control = next(r for r in results if r["seed"] == seed and r["side"] == "plain trl")
        target = control["after"]
        for r in (control, next(r for r in results if r["seed"] == seed and r["side"] == "align")):
            hit = next(((s, t) for s, t, acc in r["curve"] if t is not None and acc >= target - 1e-9),
                       None)
            rows.append({"seed": seed, "side": r["side"], "before": r["before"],
                         "after": r["after"], "target": target,
                         "step": hit and hit[0], "seconds": hit and hit[1],
                         "ratio": None if hit is None else round(hit[1] / control["total_s"], 2),
                         "total_s": r["total_s"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| seed | pipeline | GRPO start → end (held-out) | reaches the control's final "
             "at | seconds by then | / control's whole time | whole time s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        reached = "never" if r["step"] is None else f"GRPO step {r['step']}"
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['seed']} | {r['side']} | {r['before']:.3f} → {r['after']:.3f} | "
                     f"{reached} (target {r['target']:.3f}) | {secs} | {ratio} | "
                     f"{r['total_s']:.0f} |")
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """The goal's line: align reaches the control's final in <= GOAL_RATIO x the control's whole
    time and ends higher, on every seed."""
    ours = [r for r in rows if r["side"] == "align"]
    missed = [r["seed"] for r in ours if r["ratio"] is None or r["ratio"] > GOAL_RATIO
              or not r["after"] > r["target"]]
    ratios = [r["ratio"] for r in ours if r["ratio"] is not None]
    worst = f"; highest ratio {max(ratios):.2f}x" if ratios else ""
    return (f"goal (align reaches the control's final in <= {GOAL_RATIO}x the control's whole "
            f"time and ends higher, every seed): "
            + ("met" if not missed else f"NOT met on seed(s) {', '.join(map(str, missed))}")
            + worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=600, help="the control's GRPO steps")
    parser.add_argument("--align-steps", type=int, default=None, help=(
        "align's GRPO steps (default: its own default, conf/trainer/grpo.yaml)"))
    parser.add_argument("--eval-steps", type=int, default=50, help="held-out every N steps")
    parser.add_argument("--out", type=Path, default=Path("time_to_accuracy_results"))
    parser.add_argument("--quick", action="store_true", help=(
        "the mechanics only: 4 GRPO steps, the control's SFT cut at 4 steps, held-out every "
        "2, align's tiny model from the usual cache (not built in the timed process)"))
    parser.add_argument("--control-no-checkpointing", action="store_true", help=(
        "run the control with activation checkpointing off (trl's SFTConfig and GRPOConfig turn "
        "it on by default; align's warm-up and its stages on CPU run without it)"))
    args = parser.parse_args()
    args.control_extra, args.align_extra = [], []
    if args.quick:
        args.steps, args.align_steps, args.eval_steps = 4, 4, 2
        args.control_extra = ["--sft-max-steps", "4"]
        args.align_extra = ["data.max_samples=256"]
    if args.control_no_checkpointing:
        args.control_extra.append("--no-checkpointing")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    load = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for run in (run_control, run_align):
            load.append(os.getloadavg()[0])
            result = run(seed, out, args)
            results.append(result)
            print(f"seed {seed} {result['side']}: {result['before']:.3f} -> {result['after']:.3f}"
                  f" in {result['total_s']:.0f} s", flush=True)
    rows = summarise(results)
    header = (f"{describe(machine(('torch', 'transformers', 'trl')))}; load average "
              f"{min(load):.1f}-{max(load):.1f} at the starts; control {args.steps} GRPO steps"
              f"{' (activation checkpointing off)' if args.control_no_checkpointing else ''}, "
              f"align {args.align_steps or 'its default'} "
              f"({time.strftime('%Y-%m-%d')})")
    (out / "time_to_accuracy.json").write_text(json.dumps(
        {"machine": header, "results": results, "summary": rows}, indent=1))
    text = f"{header}\n\n{table(rows)}\n\n{verdict(rows)}\n"
    (out / "time_to_accuracy.md").write_text(text)
    print(f"\n{text}\nwritten to {out}")


if __name__ == "__main__":
    main()
