"""DPO's reference log-prob cache in a sweep: a 4-candidate beta x learning-rate sweep with
trl's precompute, without and with align's cache.

    python benchmarks/ref_cache.py                       # ~6 min on 2 cores
    python benchmarks/ref_cache.py --quick --out /tmp/rc  # the mechanics, 64 pairs, in a minute

Each arm is the sweep as a user types it, one Hydra multirun process:

    python align/dpo.py -m trainer.beta=0.05,0.1 trainer.learning_rate=1e-4,5e-4 \\
        trainer.precompute_ref_log_probs=true trainer.ref_logps_cache=false|true

on the embedded default (the tiny model after its SFT warm-up, LoRA, 9,800 synthetic pairs,
batch 32), `--steps` training steps per candidate and no held-out measurement (neither touches
the precompute, which runs over the whole training set before step 1). Both arms run in this
one invocation, the cache arm on an empty $ALIGN_CACHE/ref_logps (its first candidate fills it).
From each candidate's metrics.json: the precompute seconds trl's phase took
(`reference_logps.train.seconds`: the reference forward, or reading the cache, hashing
included); from its log_history.jsonl: the losses, which must be identical per candidate.

Writes ref_cache.json and ref_cache.md into --out (default: benchmarks/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, machine

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["trainer.beta=0.05,0.1", "trainer.learning_rate=1e-4,5e-4"]


def sweep(cached: bool, cache: Path, args: argparse.Namespace) -> list[dict]:
    folder = args.out / "ref_cache_runs" / ("cache" if cached else "no_cache")
    shutil.rmtree(folder, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "align" / "dpo.py"), "-m", *SWEEP,
           "trainer.precompute_ref_log_probs=true", f"trainer.ref_logps_cache={str(cached).lower()}",
           f"trainer.max_steps={args.steps}", "trainer.logging_steps=1", "trainer.save_strategy=no",
           "heldout.enabled=false", "logger=none", f"hydra.sweep.dir={folder}", *args.extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "ALIGN_CACHE": str(cache)})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sweep (cache={cached}) failed:\n{proc.stderr[-3000:]}")
    runs = []
    for run in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        metrics = json.loads((run / "metrics.json").read_text())
        config = (run / "config.yaml").read_text()
        log = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
        runs.append({"beta": float(config.split("\n  beta: ")[1].split()[0]),
                     "learning_rate": float(config.split("learning_rate: ")[1].split()[0]),
                     **metrics["reference_logps"]["train"],
                     "losses": [h["loss"] for h in log if "loss" in h]})
    return [{"wall_s": round(wall, 1)}, *runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="64 pairs, 2 steps of 8")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args()
    args.extra = []
    if args.quick:
        args.steps = 2
        args.extra = ["data.synthetic.n_train=64", "trainer.per_device_train_batch_size=8"]
    args.out.mkdir(parents=True, exist_ok=True)

    # A fresh $ALIGN_CACHE for the entries, holding the real one's tiny models.
    from align.files import cache_root

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for entry in cache_root().iterdir():
            if entry.name != "ref_logps":
                (cache / entry.name).symlink_to(entry)
        (wall_off, *off), (wall_on, *on) = sweep(False, cache, args), sweep(True, cache, args)
    shutil.rmtree(args.out / "ref_cache_runs", ignore_errors=True)

    total_off = sum(r["seconds"] for r in off)
    total_on = sum(r["seconds"] for r in on)
    same = [a["losses"] == b["losses"] and (a["beta"], a["learning_rate"]) ==
            (b["beta"], b["learning_rate"]) for a, b in zip(off, on)]
    result = {"machine": machine(), "steps": args.steps, "quick": args.quick, "sweep": SWEEP,
              "no_cache": off, "cache": on, "no_cache_wall_s": wall_off["wall_s"],
              "cache_wall_s": wall_on["wall_s"], "precompute_s_no_cache": round(total_off, 2),
              "precompute_s_cache": round(total_on, 2), "ratio": round(total_on / total_off, 3),
              "identical_losses": all(same) and len(off) == len(on) == 4,
              "entries_written": sum(not r["reused"] for r in on)}
    (args.out / "ref_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = "\n".join(
        f"| {a['beta']} | {a['learning_rate']} | {a['seconds']:.2f} | {b['seconds']:.2f} "
        f"({'read' if b['reused'] else 'computed'}) | {'yes' if s else 'NO'} |"
        for a, b, s in zip(off, on, same))
    (args.out / "ref_cache.md").write_text(f"""# DPO reference log-prob cache: a 4-candidate sweep

`python benchmarks/ref_cache.py{' --quick' if args.quick else ''}`; {describe(result['machine'])}.
Each arm one `python align/dpo.py -m {' '.join(SWEEP)} trainer.precompute_ref_log_probs=true`
process ({args.steps} steps per candidate); precompute = trl's reference log-prob phase per
candidate (with the cache: hashing, and reading the entry once it exists).

| beta | learning rate | precompute s, no cache | precompute s, cache | same losses |
|---|---|---|---|---|
{rows}

Total precompute: {total_off:.2f} s without the cache, {total_on:.2f} s with it
(ratio {result['ratio']:.3f}); entries written: {result['entries_written']}. Sweep wall time
{wall_off['wall_s']} s without, {wall_on['wall_s']} s with. Losses identical per candidate:
{'yes' if result['identical_losses'] else 'NO'}.
""")
    print((args.out / "ref_cache.md").read_text())


if __name__ == "__main__":
    main()
