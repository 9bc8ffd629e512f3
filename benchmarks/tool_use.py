"""The tool-use task: GRPO with the calculator against the same model without it, 3 seeds.

    python benchmarks/tool_use.py                         # 3 seeds x tool/no tool, ~15 min, 2 cores
    python benchmarks/tool_use.py --quick --out /tmp/tu   # the mechanics, in a minute

Each run is the README's command as a user types it, `python align/grpo.py experiment=tiny_tools
seed=S heldout.eval_steps=N logger=none` (the tiny model after its SFT warm-up on calculator
traces, three-digit a*b prompts, exact-answer reward on the final turn), and its control with
`tools=none`: the same model and prompts with no tool to call. One process at a time, tool and
control interleaved per seed. The warm-up model is one build (seed 0, the cached tiny://tools);
the seed varies GRPO's sampling and data order.

From each run's metrics.json: held-out accuracy before and after (greedy, 200 prompts, the tool
run with the same tool as in training), the share of held-out prompts whose answer called the
tool, the share of calls that failed, and the periodic held-out points. Then `align/eval.py`
(greedy, the same 200 prompts, the calculator) on the warm-up model and on each run's final
model, read sample by sample: the share of *well-formed* calls (the calculator called with exactly
the problem, `expression=a*b`) and of answers that repeat the tool's result.

Writes tool_use.json, tool_use.md (the table, machine and versions) and tool_use.png (held-out
accuracy over GRPO steps) into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import describe, machine

REPO = Path(__file__).resolve().parents[1]


def run_one(seed: int, tool: bool, args: argparse.Namespace) -> dict:
    label = f"seed{seed}-{'tool' if tool else 'control'}"
    run_dir = args.out / "runs" / label
    if not (args.reuse and (run_dir / "metrics.json").is_file()):
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, str(REPO / "align" / "grpo.py"), "experiment=tiny_tools",
               f"seed={seed}", f"trainer.max_steps={args.steps}",
               f"heldout.eval_steps={args.eval_steps}",
               f"trainer.logging_steps={math.gcd(25, args.eval_steps)}", "logger=none",
               "trainer.save_strategy=no", f"hydra.run.dir={run_dir}", *args.extra]
        if not tool:
            cmd.append("tools=none")
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=args.out,
                              env={**os.environ, "ALIGN_RUN_ID": label})
        if proc.returncode != 0:
            raise SystemExit(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    history = [json.loads(line) for line in
               (run_dir / "log_history.jsonl").read_text().splitlines()]
    calls = [h["tools/call_frequency"] for h in history if "tools/call_frequency" in h]
    return {"seed": seed, "tool": tool, "before": before["accuracy"], "after": after["accuracy"],
            "tool_call_rate": [before.get("tool_call_rate"), after.get("tool_call_rate")],
            "tool_failure_rate": [before.get("tool_failure_rate"),
                                  after.get("tool_failure_rate")],
            "train_calls_per_sample": [calls[0], calls[-1]] if calls else None,
            "train_s": round(metrics["train"]["train_runtime"], 1),
            "curve": [(0, before["accuracy"])] + [(p["step"], p["accuracy"])
                                                  for p in metrics["heldout_during"]]}


def call_quality(label: str, model_args: list[str], args: argparse.Namespace) -> dict:
    """Greedy held-out samples with the calculator (align/eval.py), read call by call."""
    out = args.out / "eval" / label
    if not (args.reuse and (out / "completions.jsonl").is_file()):
        cmd = [sys.executable, str(REPO / "align" / "eval.py"), *model_args,
               "eval.max_new_tokens=40", f"output_dir={out}", f"hydra.run.dir={out}",
               *(["eval.max_samples=16"] if args.quick else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=args.out)
        if proc.returncode != 0:
            raise SystemExit(f"eval {label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    well_formed = copied = 0
    for row in rows:
        problem = row["prompt"][-1]["content"].rstrip("=")
        turns = row["completion"]
        calls = (turns[0].get("tool_calls") or []) if turns else []
        if len(calls) == 1 and calls[0]["function"]["arguments"] == {"expression": problem}:
            well_formed += 1
        tool = [m for m in turns if m["role"] == "tool"]
        if tool and turns[-1]["role"] == "assistant" and turns[-1]["content"] == tool[0]["content"]:
            copied += 1
    return {"well_formed_calls": well_formed / len(rows), "answer_is_tool_result": copied / len(rows),
            "accuracy": sum(r["correct"] for r in rows) / len(rows)}


def table(results: list[dict]) -> str:
    def rate(pair):
        return "-" if pair[0] is None else f"{pair[0]:.3f} -> {pair[1]:.3f}"

    def quality(r, key):
        return "-" if "calls" not in r else f"{r['calls'][0][key]:.3f} -> {r['calls'][1][key]:.3f}"

    lines = ["| seed | run | held-out accuracy before | after | prompts answered with a tool "
             "call | well-formed calls (`expression=a*b`) | answer = the tool's result | "
             "failed calls | training s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['seed']} | {'calculator' if r['tool'] else 'no tool (control)'} | "
                     f"{r['before']:.3f} | {r['after']:.3f} | {rate(r['tool_call_rate'])} | "
                     f"{quality(r, 'well_formed_calls')} | {quality(r, 'answer_is_tool_result')} | "
                     f"{rate(r['tool_failure_rate'])} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r in results:
        ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], marker=".",
                color=colours[r["seed"] % len(colours)], linestyle="-" if r["tool"] else "--",
                label=f"seed {r['seed']} {'calculator' if r['tool'] else 'no tool'}")
    ax.set_xlabel("GRPO steps")
    ax.set_ylabel("held-out accuracy (greedy, 200 prompts)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Three-digit multiplication on the tiny model: with the calculator (solid)\n"
                 "and the same model without it (dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("tool_use_results"))
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
    warm_up = call_quality("warm-up", ["model=tiny_tools", "data=multiplication",
                                       "rewards=multiplication", "tools=calculator"], args)
    for seed in (int(s) for s in args.seeds.split(",")):
        for tool in (True, False):
            result = run_one(seed, tool, args)
            if tool:
                run_dir = args.out / "runs" / f"seed{seed}-tool"
                result["calls"] = [warm_up, call_quality(f"seed{seed}", [f"run_dir={run_dir}"],
                                                         args)]
            results.append(result)
            print(f"seed {seed} {'tool' if tool else 'control'}: {result['before']:.3f} -> "
                  f"{result['after']:.3f}", flush=True)
    load = os.getloadavg()[0]
    header = (f"{describe(machine(('torch', 'trl', 'transformers')))}; load {load:.1f} at the "
              f"end; {args.steps} GRPO steps, held-out every {args.eval_steps} steps "
              f"({time.strftime('%Y-%m-%d')})")
    text = table(results)
    (args.out / "tool_use.json").write_text(json.dumps({"machine": header, "results": results},
                                                       indent=1))
    (args.out / "tool_use.md").write_text(f"{header}\n\n{text}\n")
    plot(results, args.out / "tool_use.png")
    print(f"\n{header}\n\n{text}\n\nwritten to {args.out}")


if __name__ == "__main__":
    main()
