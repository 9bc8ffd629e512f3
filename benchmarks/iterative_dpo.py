"""Iterative on-policy DPO against SFT on the same answers, offline DPO and GRPO.

    python benchmarks/iterative_dpo.py                          # 3 seeds, ~8 min a seed on 2 cores
    python benchmarks/iterative_dpo.py --seeds 0 --arms iterative_dpo,sft_chosen
    python benchmarks/iterative_dpo.py --quick --seeds 0 --out /tmp/it   # the mechanics, ~1 min

Every arm starts from the tiny model after its SFT warm-up (`model=tiny_sft`) and is a command
as a user types it, one process at a time; per seed (`seed=S`: data order, adapter init,
sampling), with R rounds, P prompts a round, N samples a prompt and T DPO steps a round:

  iterative_dpo   `align/dpo.py experiment=iterative_dpo on_policy.rounds=R
                  on_policy.prompts_per_round=P on_policy.samples_per_prompt=N
                  trainer.max_steps=T` (+ --loss): R rounds of on-policy pairs, R x P x N samples,
                  R x T steps.
  offline_dpo     the same command with on_policy.rounds=1, prompts_per_round=R x P,
                  max_steps=R x T: the same prompts, all sampled once from the warm-up model,
                  the same number of samples and of steps, one reference (the warm-up model).
  sft_chosen      the control: `align/dpo.py data=local data.path=<the chosen answers of
                  iterative_dpo's R rounds, pooled> trainer.loss_type=[sft]
                  trainer.max_steps=R x T`: SFT (LoRA, the same learning rate and batch) on
                  exactly the answers iterative DPO chose, for as many steps.
  iterative_sft   iterative_dpo with `trainer.loss_type=[sft]`: SFT on the policy's own best
                  sample per prompt, round after round (rejection-sampling fine-tuning): the
                  same samples drawn and steps, no preference term.
  grpo            `align/grpo.py seed=S model=tiny_sft trainer.dynamic_sampling=false
                  trainer.max_steps=600` (the GRPO default until 2026-12-01), for reference.

Held-out: the 200 `a+b=` problems align holds out, greedy, exact answer (heldout_after.accuracy
of each run; for the rounds, each round's before and after). Writes iterative_dpo.json,
iterative_dpo.md and iterative_dpo.png into --out.
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
ARMS = ("iterative_dpo", "offline_dpo", "sft_chosen", "iterative_sft", "grpo")
#: the goal: iterative DPO above the SFT control by this much on every seed
MARGIN = 0.03


def command(arm: str, seed: int, run_dir: Path, args) -> list[str]:
    r, p, n, t = args.rounds, args.prompts, args.samples, args.steps
    common = ["logger=none", "trainer.save_strategy=no", f"seed={seed}",
              f"hydra.run.dir={run_dir}", *args.extra]
    if arm == "grpo":
        # GRPO from the same ~50% warm-up as the DPO arms, trl's own sampling, 600 steps
        return [sys.executable, str(REPO / "align" / "grpo.py"), *common, "model=tiny_sft",
                "trainer.dynamic_sampling=false", "trainer.max_steps=600", *args.grpo_extra]
    dpo = [sys.executable, str(REPO / "align" / "dpo.py"), *common]
    rounds = ["experiment=iterative_dpo", f"on_policy.samples_per_prompt={n}",
              f"on_policy.temperature={args.temperature}", *args.all_extra]
    if arm == "iterative_dpo":
        return [*dpo, *rounds, f"on_policy.rounds={r}", f"on_policy.prompts_per_round={p}",
                f"trainer.max_steps={t}", f"trainer.loss_type=[{args.loss}]", *args.dpo_extra]
    if arm == "iterative_sft":
        return [*dpo, *rounds, f"on_policy.rounds={r}", f"on_policy.prompts_per_round={p}",
                f"trainer.max_steps={t}", "trainer.loss_type=[sft]"]
    if arm == "offline_dpo":
        return [*dpo, *rounds, "on_policy.rounds=1", f"on_policy.prompts_per_round={r * p}",
                f"trainer.max_steps={r * t}", f"trainer.loss_type=[{args.loss}]", *args.dpo_extra]
    if arm == "sft_chosen":
        pooled, heldout = chosen_answers(run_dir.parent / "iterative_dpo", run_dir.parent)
        return [*dpo, "data=local", f"data.path={pooled}", f"data.eval_path={heldout}",
                f"trainer.max_steps={r * t}", "trainer.loss_type=[sft]", *args.all_extra]
    raise ValueError(arm)


def chosen_answers(iterative: Path, out: Path) -> tuple[Path, Path]:
    """The pairs every round of the iterative run trained on, pooled (the control's loss reads
    `chosen` only), and the held-out pairs align's synthetic task holds out (the same 200
    problems the other arms are measured on)."""
    from align.data.synthetic import build_synthetic

    rows = []
    for folder in sorted(iterative.glob("round-*")):
        rows += [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    if not rows:
        raise SystemExit(f"{iterative}: no round's pairs.jsonl (run the iterative_dpo arm first)")
    pooled, heldout = out / "chosen_pooled.jsonl", out / "heldout_pairs.jsonl"
    pooled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eval_rows = build_synthetic("arithmetic", "preference", "eval")
    heldout.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    return pooled, heldout


def run_arm(arm: str, seed: int, args) -> dict:
    run_dir = args.out / "runs" / f"seed{seed}" / arm
    if not (args.reuse and done(run_dir)):
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = command(arm, seed, run_dir, args)
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=args.out, check=False,
                              env={**os.environ, "ALIGN_RUN_ID": f"seed{seed}-{arm}"})
        wall = time.perf_counter() - started
        (run_dir.parent / f"{arm}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"seed {seed} {arm} failed ({proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
        (run_dir / "wall_s").write_text(f"{wall:.1f}")
    return read_arm(arm, seed, run_dir)


def done(run_dir: Path) -> bool:
    return (run_dir / "rounds.json").is_file() or (run_dir / "metrics.json").is_file()


def read_arm(arm: str, seed: int, run_dir: Path) -> dict:
    wall = float((run_dir / "wall_s").read_text()) if (run_dir / "wall_s").is_file() else None
    if (run_dir / "rounds.json").is_file():
        rounds = json.loads((run_dir / "rounds.json").read_text())["rounds"]
        steps = pairs = 0
        curve = [(0, rounds[0]["accuracy_before"])]
        for r in rounds:
            metrics = json.loads((run_dir / r["folder"] / "metrics.json").read_text())
            steps += metrics["train"]["global_step"]
            pairs += r["pairs"]
            curve.append((steps, r["accuracy_after"]))
        samples = sum(json.loads((run_dir / r["folder"] / "metrics.json").read_text())
                      ["on_policy"]["samples"] for r in rounds)
        return {"arm": arm, "seed": seed, "before": curve[0][1], "after": curve[-1][1],
                "curve": curve, "steps": steps, "pairs": pairs, "samples": samples,
                "rounds": [(r["accuracy_before"], r["accuracy_after"], r["pairs"])
                           for r in rounds], "wall_s": wall}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before, after = metrics["heldout_before"]["accuracy"], metrics["heldout_after"]["accuracy"]
    steps = metrics["train"]["global_step"]
    if arm == "grpo":  # trl's GRPO trains on per_device_train_batch_size completions a step
        from omegaconf import OmegaConf

        batch = OmegaConf.load(run_dir / "config.yaml").trainer.per_device_train_batch_size
        samples = f"{steps * batch} (its own)"
    else:
        samples = "iterative_dpo's chosen"
    return {"arm": arm, "seed": seed, "before": before, "after": after,
            "curve": [(0, before), (steps, after)], "steps": steps, "samples": samples,
            "wall_s": wall}


def summarise(results: list[dict]) -> dict:
    by = {(r["seed"], r["arm"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    verdict = {}
    for seed in seeds:
        it, ctl = by.get((seed, "iterative_dpo")), by.get((seed, "sft_chosen"))
        if it is None:
            continue
        monotone = all(b2 >= a1 - 1e-9 for (_, a1, _), (b2, _, _) in
                       zip(it["rounds"], it["rounds"][1:])) and all(
            a >= b - 1e-9 for b, a, _ in it["rounds"])
        verdict[seed] = {"beats_control_by": None if ctl is None else it["after"] - ctl["after"],
                         "no_round_lowers_accuracy": monotone}
    met = bool(verdict) and all(v["beats_control_by"] is not None
                                and v["beats_control_by"] >= MARGIN - 1e-9
                                and v["no_round_lowers_accuracy"] for v in verdict.values())
    return {"per_seed": verdict, "goal_met": met}


def table(results: list[dict], arms: list[str]) -> str:
    seeds = sorted({r["seed"] for r in results})
    by = {(r["seed"], r["arm"]): r for r in results}
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | steps | samples drawn |",
             "|---|" + "---|" * len(seeds) + "---|---|"]
    for arm in arms:
        cells, steps, samples = [], "-", "-"
        for s in seeds:
            r = by.get((s, arm))
            if r is None:
                cells.append("-")
                continue
            text = f"{r['before']:.3f} → {r['after']:.3f}"
            if "rounds" in r and len(r["rounds"]) > 1:
                text += " (" + " → ".join(f"{a:.3f}" for _, a, _ in r["rounds"]) + ")"
            cells.append(text)
            steps = str(r["steps"])
            samples = str(r.get("samples", "-"))
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {steps} | {samples} |")
    return "\n".join(lines)


def plot(results: list[dict], arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"iterative_dpo": "-", "iterative_sft": "--", "offline_dpo": ":",
              "sft_chosen": "-.", "grpo": (0, (1, 3))}
    markers = {"offline_dpo": "s", "sft_chosen": "D", "grpo": "^"}
    for r in results:
        if r["arm"] not in arms:
            continue
        colour = colours[arms.index(r["arm"]) % len(colours)]
        label = r["arm"] if r["seed"] == min(x["seed"] for x in results) else None
        if len(r.get("rounds", ())) > 1:  # measured after every round
            xs, ys = zip(*r["curve"])
            ax.plot(xs, ys, color=colour, linestyle=styles[r["arm"]], marker="o", markersize=3,
                    label=label)
        else:  # measured before and after only: no line through points never measured
            ax.plot([r["steps"]], [r["after"]], color=colour, marker=markers[r["arm"]],
                    linestyle="none", markersize=7, label=label)
    ax.set_xlabel("training steps (DPO/SFT: batch 32 pairs; GRPO: batch 64 completions)")
    ax.set_ylabel("held-out accuracy (greedy, 200 prompts)")
    ax.set_title("From the SFT warm-up model: iterative on-policy DPO and its controls, "
                 "all seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=1024, help="prompts per round")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt")
    parser.add_argument("--steps", type=int, default=100, help="DPO steps per round")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--loss", default="sigmoid,sft", help="iterative/offline DPO's loss_type")
    parser.add_argument("--set", dest="dpo_extra", action="append", default=[],
                        help="an override for the arms with a DPO loss (iterative_dpo, "
                             "offline_dpo), e.g. --set trainer.beta=0.3")
    parser.add_argument("--set-all", dest="all_extra", action="append", default=[],
                        help="an override for every align/dpo.py arm (the SFT ones too), e.g. "
                             "--set-all trainer.learning_rate=1e-3")
    parser.add_argument("--out", type=Path, default=Path("iterative_dpo_results"))
    parser.add_argument("--reuse", action="store_true", help="keep the finished runs in --out")
    parser.add_argument("--quick", action="store_true",
                        help="the mechanics only: 2 rounds of 4 steps, 16 prompts, 16 held-out")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.extra, args.grpo_extra = [], []
    if args.quick:
        args.rounds, args.prompts, args.samples, args.steps = 2, 16, 4, 4
        args.extra = ["heldout.max_samples=16", "trainer.per_device_train_batch_size=8"]
        args.grpo_extra = ["trainer.max_steps=4", "trainer.num_generations=4"]
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    if "sft_chosen" in arms and "iterative_dpo" in arms:  # the control reads its answers
        arms.remove("sft_chosen")
        arms.insert(arms.index("iterative_dpo") + 1, "sft_chosen")
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in arms:
            result = run_arm(arm, seed, args)
            results.append(result)
            wall = f" in {result['wall_s']:.0f} s" if result["wall_s"] else ""
            print(f"seed {seed} {arm}: {result['before']:.3f} -> {result['after']:.3f}{wall}",
                  flush=True)
    verdict = summarise(results)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (f"{describe(machine(('torch', 'trl', 'peft')))}; load {load:.1f} at the end "
              f"({time.strftime('%Y-%m-%d')}). Rounds {args.rounds} x {args.prompts} prompts x "
              f"{args.samples} samples at T={args.temperature}, {args.steps} steps a round, DPO "
              f"loss [{args.loss}]"
              + "".join(f", {' '.join(x)}" for x in (args.dpo_extra, args.all_extra) if x))
    text = table(results, arms)
    goal = (f"goal (iterative_dpo >= sft_chosen + {MARGIN:.2f} on every seed, no round lowering "
            f"accuracy): {'met' if verdict['goal_met'] else 'NOT met'}; "
            + "; ".join(f"seed {s}: {v['beats_control_by']:+.3f} over the control, rounds "
                        f"{'never lower' if v['no_round_lowers_accuracy'] else 'lower'} accuracy"
                        for s, v in verdict["per_seed"].items()
                        if v["beats_control_by"] is not None))
    (args.out / "iterative_dpo.json").write_text(json.dumps(
        {"machine": header, "settings": {k: v for k, v in vars(args).items() if k != "out"
                                         and not isinstance(v, Path)},
         "results": results, "verdict": verdict}, indent=1, default=str))
    (args.out / "iterative_dpo.md").write_text(f"{header}\n\n{text}\n\n{goal}\n")
    plot(results, arms, args.out / "iterative_dpo.png")
    print(f"\n{header}\n\n{text}\n\n{goal}\n\nwritten to {args.out}")


if __name__ == "__main__":
    main()
