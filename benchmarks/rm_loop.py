"""The RLHF loop on the tiny task: train a reward model on a+b pairs, then GRPO with it as the
only reward, beside GRPO with the exact-answer reward.

    python benchmarks/rm_loop.py                          # seed 0, the defaults below
    python benchmarks/rm_loop.py --seeds 0,1,2 --grpo-steps 200
    python benchmarks/rm_loop.py --rm-args trainer.max_steps=600   # the default RM (LoRA) instead
    python benchmarks/rm_loop.py --quick --out /tmp/rml   # the mechanics, in a few minutes

Per seed, one process at a time, each the README's command as a user types it:
1. `python align/rm.py seed=S logger=none experiment=rm_tiny_full` (--rm-args replaces the
   experiment): the ~90% SFT warm-up trained in full as a reward model (its new score head
   included) on the synthetic pairs (correct answer chosen, a near miss rejected); its held-out
   pairwise accuracy (200 held-out pairs: the share scored chosen > rejected) before and after,
   from metrics.json;
2. `python align/grpo.py seed=S rewards=reward_model rewards.rm.kwargs.model=<the RM run>`: GRPO
   whose only reward is that RM's score;
3. `python align/grpo.py seed=S`: the control, GRPO with the exact-answer reward.
Both GRPO arms train the same number of steps (--grpo-steps) and are measured the same way: exact
answer accuracy on the 200 held-out a+b prompts (greedy), with the `accuracy` reward in
heldout.rewards, whatever reward trained them.

Writes rm_loop.json and rm_loop.md (the table, machine and versions) into --out, and
rm_loop.png (held-out accuracy over GRPO steps) when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import describe, machine

REPO = Path(__file__).resolve().parents[1]
HELDOUT_ACCURACY = "heldout.rewards={accuracy: {fn: accuracy, kwargs: {literal: true}}}"


def launch(script: str, label: str, overrides: list[str], args: argparse.Namespace) -> dict:
    run_dir = args.out / "runs" / label
    if not (args.reuse and (run_dir / "metrics.json").is_file()):
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, str(REPO / "align" / script), *overrides, "logger=none",
               "trainer.save_strategy=no", f"hydra.run.dir={run_dir}"]
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=args.out,
                              env={**os.environ, "ALIGN_RUN_ID": label, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        (run_dir / "wall_s.txt").write_text(f"{time.time() - start:.1f}\n")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["run_dir"] = str(run_dir)
    return metrics


def grpo_arm(seed: int, arm: str, rm_dir: str | None, args: argparse.Namespace) -> dict:
    # from the ~50% warm-up, with trl's own sampling (what the RM's pairs and figures assume)
    overrides = [f"seed={seed}", "model=tiny_sft", "trainer.dynamic_sampling=false",
                 f"trainer.max_steps={args.grpo_steps}",
                 f"heldout.eval_steps={args.eval_steps}", HELDOUT_ACCURACY, *args.grpo_args]
    if rm_dir is not None:
        overrides += ["rewards=reward_model", f"rewards.rm.kwargs.model={rm_dir}"]
    m = launch("grpo.py", f"seed{seed}-grpo-{arm}", overrides, args)
    before, after = m["heldout_before"], m["heldout_after"]
    return {"before": before["accuracy"], "after": after["accuracy"],
            "train_s": round(m["train"]["train_runtime"], 1),
            "curve": [(0, before["accuracy"])] + [(p["step"], p["accuracy"])
                                                  for p in m.get("heldout_during", [])]}


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    m = launch("rm.py", f"seed{seed}-rm", [f"seed={seed}", *args.rm_args], args)
    result = {"seed": seed,
              "rm": {"pairwise_before": m["heldout_before"]["pairwise_accuracy"],
                     "pairwise_after": m["heldout_after"]["pairwise_accuracy"],
                     "margin_after": m["heldout_after"]["reward_margin"],
                     "pairs": m["heldout_after"]["reward_pairs"],
                     "steps": m["train"]["global_step"],
                     "train_s": round(m["train"]["train_runtime"], 1)}}
    result["grpo_rm"] = grpo_arm(seed, "rm", m["run_dir"], args)
    result["grpo_exact"] = grpo_arm(seed, "exact", None, args)
    return result


def table(results: list[dict]) -> str:
    lines = ["| seed | RM held-out pairwise accuracy | GRPO, RM as the only reward | "
             "GRPO, exact-answer reward (control) |", "|---|---|---|---|"]
    for r in results:
        rm, a, b = r["rm"], r["grpo_rm"], r["grpo_exact"]
        lines.append(f"| {r['seed']} | {rm['pairwise_before']:.3f} -> {rm['pairwise_after']:.3f} "
                     f"({rm['steps']} steps) | {a['before']:.3f} -> {a['after']:.3f} | "
                     f"{b['before']:.3f} -> {b['after']:.3f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r in results:
        c = colours[r["seed"] % len(colours)]
        for arm, style, name in (("grpo_rm", "-", "RM reward"), ("grpo_exact", "--", "exact answer")):
            curve = r[arm]["curve"]
            ax.plot([p[0] for p in curve], [p[1] for p in curve], style, marker=".", color=c,
                    label=f"seed {r['seed']}, {name}")
    ax.set_xlabel("GRPO steps")
    ax.set_ylabel("held-out exact-answer accuracy (greedy, 200 prompts)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("GRPO on a+b with a trained reward model as its only reward (solid)\n"
                 "and with the exact-answer reward (dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--grpo-steps", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--rm-args", nargs="*", default=["experiment=rm_tiny_full"],
                        help="the overrides of align/rm.py (default: experiment=rm_tiny_full)")
    parser.add_argument("--grpo-args", nargs="*", default=[],
                        help="extra overrides for both GRPO arms")
    parser.add_argument("--out", type=Path, default=Path("rm_loop_results"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs already finished in --out/runs (summarise again)")
    parser.add_argument("--quick", action="store_true",
                        help="the mechanics only: a few steps, 16 held-out prompts and pairs")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.grpo_steps, args.eval_steps = 2, 1
        args.rm_args = ["trainer.max_steps=3", "heldout.max_samples=16", *args.rm_args]
        args.grpo_args = ["trainer.per_device_train_batch_size=16", "trainer.num_generations=4",
                          "heldout.max_samples=16", *args.grpo_args]
    results = [run_seed(int(s), args) for s in args.seeds.split(",")]
    facts = machine()
    report = {"machine": facts, "grpo_steps": args.grpo_steps, "rm_args": args.rm_args,
              "grpo_args": args.grpo_args, "results": results}
    (args.out / "rm_loop.json").write_text(json.dumps(report, indent=1) + "\n")
    md = (f"# Reward model -> GRPO on the tiny a+b task\n\n`python benchmarks/rm_loop.py "
          f"--seeds {args.seeds} --grpo-steps {args.grpo_steps}"
          + (f" --rm-args {' '.join(args.rm_args)}" if args.rm_args else "") + "`\n\n"
          f"Machine: {describe(facts)}.\n\n{table(results)}\n")
    (args.out / "rm_loop.md").write_text(md)
    plot(results, args.out / "rm_loop.png")
    print(md)


if __name__ == "__main__":
    main()
