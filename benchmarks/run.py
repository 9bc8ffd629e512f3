"""CPU benchmarks: align against plain trl, and the options that make training cheaper.

    python benchmarks/run.py                          # every comparison, 3 repetitions
    python benchmarks/run.py overhead-sft dpo-reference --reps 5
    python benchmarks/run.py --list                   # names and what each compares

Each side of a comparison is one process: align's real entry point (`python align/<stage>.py`
with Hydra overrides) or a plain trl script in benchmarks/plain/ that builds the same trainer
directly. Repetitions are interleaved (A B A B ...) so that a busy machine slows both sides
alike, and every figure is the median over the repetitions; ratios are taken against the
first side of the comparison, within the same run. Per process:

- wall s: the whole process, imports and model loading included;
- step s: trainer step time (median over the steps after the first 2, benchmarks/probe.py);
  `step mean s` averages every step (GRPO generates on some steps only);
- peak MiB: the process's maximum resident set (os.wait4's rusage);
- tokens/s: trl's `num_tokens` (real tokens, padding excluded) over the summed step times;
- final loss: the last logged training loss (logging_steps=1); `same run` says whether the
  whole loss curve and the saved weights (sha256 of final/*.safetensors) equal the first side's;
- GRPO: the shares of the summed step time spent in `transformers.generate`, in the rest of
  the rollout (rewards, reference/old log-probs, bookkeeping: trl's `_prepare_inputs` minus
  generation), and in training (forward, backward, optimizer step), from trl's own profiling
  blocks (benchmarks/timing.py).

Models: the tiny model align builds (tiny://base for SFT, tiny://sft for DPO/GRPO, 0.56M
parameters) and a generated `medium` Llama model (hidden 512 x 8 layers, 33.9M parameters,
random weights, the tiny tokenizer; built once into --work). Data: align's synthetic a+b task,
or for SFT on variable-length data a generated sum task whose prompts run from 1 to 60 terms
(about 12 to 190 tokens, long-tailed).

Results: a Markdown table per comparison in --results (default benchmarks/CPU_RESULTS.md),
rewritten from --raw (benchmarks/cpu_results.json), which keeps the latest run of every
comparison, so a rerun of one comparison leaves the others' figures in place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from machine import machine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# What every side turns off or pins so the sides do the same, measurable work: no tracking,
# no held-out generation before/after (align's own measurement, not trl's work), no
# checkpoints, a logged loss every step.
ALIGN_COMMON = ["logger=none", "heldout.enabled=false", "callbacks=[timing:Timing]"]
FIELDS_COMMON = ["save_strategy=no", "logging_steps=1"]
MEDIUM = {"hidden": 512, "layers": 8}


@dataclass
class Side:
    name: str
    stage: str
    impl: str  # "align" or "plain"
    fields: list[str] = field(default_factory=list)  # trl config fields, both implementations
    align: list[str] = field(default_factory=list)  # extra Hydra overrides
    plain: list[str] = field(default_factory=list)  # extra plain-script flags
    data: str = "synthetic"  # or "varlen": the generated variable-length SFT rows


@dataclass
class Comparison:
    name: str
    title: str
    what: str  # what is compared and what parity means
    sides: list[Side]
    columns: list[str]
    needs: tuple[str, ...] = ()  # "medium", "varlen"


def _fields(steps: int, *more: str) -> list[str]:
    return [f"max_steps={steps}", *FIELDS_COMMON, *more]


def comparisons(ctx: dict) -> list[Comparison]:
    """Every comparison; `ctx` maps tiny_base, tiny_sft, medium, varlen to paths."""
    medium = ctx.get("medium", "")
    overhead_cols = ["wall", "train", "step", "peak", "final_loss", "same_run"]

    def pair(stage, steps, plain_flags, *more, align=()):
        return [Side("plain trl", stage, "plain", _fields(steps, *more), plain=plain_flags),
                Side("align", stage, "align", _fields(steps, *more), align=list(align))]

    # GRPO as measured here: the ~50% warm-up model and trl's own sampling (the GRPO default
    # starts from tiny_sft90 with dynamic sampling, which the plain script does not have).
    grpo_as_trl = ["model=tiny_sft", "trainer.dynamic_sampling=false"]

    varlen_sft = ["per_device_train_batch_size=8", "max_length=256"]
    dpo_fields = _fields(6, "per_device_train_batch_size=8")
    packed_batch = ctx.get("packed_batch", 4)
    medium_align = [f"model.name_or_path={medium}"]
    out = [
        Comparison(
            "overhead-sft", "align vs plain trl: SFT, tiny model, 40 steps",
            "`python align/sft.py` against benchmarks/plain/sft.py: the same SFTConfig fields "
            "(conf/trainer/sft.yaml), model (tiny://base), data (align.data.synthetic a+b, 9,800 "
            "rows) and seed. Parity: the loss curve and the saved weights must be identical.",
            pair("sft", 40, ["--model", ctx["tiny_base"]]), overhead_cols),
        Comparison(
            "overhead-dpo", "align vs plain trl: DPO + LoRA, tiny SFT model, 20 steps",
            "`python align/dpo.py` (LoRA, reference = adapter disabled) against "
            "benchmarks/plain/dpo.py with the same LoraConfig (conf/peft/lora.yaml).",
            pair("dpo", 20, ["--model", ctx["tiny_sft"], "--peft", "lora"]), overhead_cols),
        Comparison(
            "overhead-grpo", "align vs plain trl: GRPO, tiny SFT model, 20 steps",
            "`python align/grpo.py` against benchmarks/plain/grpo.py with the same exact-answer "
            "reward (rewards.math.accuracy, weight 1), 8 prompts x 8 samples per step.",
            pair("grpo", 20, ["--model", ctx["tiny_sft"]], align=grpo_as_trl), overhead_cols),
        Comparison(
            "dpo-reference", "DPO + LoRA on the 34M model: where the reference comes from",
            "benchmarks/plain/dpo.py, LoRA r=16 on every linear layer, 8 pairs x 6 steps "
            "(the first 48 pairs of the synthetic set), max_length 64. The reference is the "
            "base with the adapter disabled (align's default), a second frozen copy passed as "
            "ref_model, or precomputed: one reference pass over the 48 pairs before the "
            "first step (in wall s, not in step s). Full fine-tuning with a reference copy "
            "(align's peft=none) is the last row, for scale. Parity: the first three start "
            "from the same weights and reference, so their losses must agree.",
            [Side("lora, reference = adapter off", "dpo", "plain", dpo_fields,
                  plain=["--model", medium, "--peft", "lora", "--max-samples", "48"]),
             Side("lora, reference copy", "dpo", "plain", dpo_fields,
                  plain=["--model", medium, "--peft", "lora", "--ref", "copy",
                         "--max-samples", "48"]),
             Side("lora, precomputed reference", "dpo", "plain",
                  [*dpo_fields, "precompute_ref_log_probs=true"],
                  plain=["--model", medium, "--peft", "lora", "--max-samples", "48"]),
             Side("full, reference copy", "dpo", "plain", [*dpo_fields, "learning_rate=5e-7"],
                  plain=["--model", medium, "--peft", "none", "--max-samples", "48"])],
            ["wall", "step", "peak", "final_loss", "loss_delta"], needs=("medium",)),
        Comparison(
            "sft-packing", "SFT on variable-length data, 34M model: padded vs padding-free vs packed",
            "`python align/sft.py` on the generated sum task (prompts of 1-60 terms), "
            "completion-only loss, 6 steps. Padded and padding-free take the same 8 rows per "
            "step, so their losses must agree up to float rounding (padding-free attention is "
            "block-diagonal over the flattened rows: transformers builds that mask from the "
            f"position ids). Packed (bfd, max_length 256) takes {packed_batch} packed rows per "
            "step, about as many tokens as 8 padded rows: its loss is over other batches, "
            "so parity there means the mean loss per answer token over the run, not the curve.",
            [Side("padded", "sft", "align", _fields(6, *varlen_sft), align=medium_align,
                  data="varlen"),
             Side("padding-free", "sft", "align", _fields(6, *varlen_sft, "padding_free=true",
                                                       "max_length=null"),
                  align=medium_align, data="varlen"),
             Side("packed (bfd)", "sft", "align",
                  _fields(6, "max_length=256", "packing=true",
                          f"per_device_train_batch_size={packed_batch}"), align=medium_align,
                  data="varlen")],
            ["wall", "step", "peak", "tokens_s", "final_loss", "mean_loss", "loss_delta"],
            needs=("medium", "varlen")),
        Comparison(
            "sft-packing-tiny", "SFT on align's default (tiny model, a+b rows of 15-18 tokens)",
            "`python align/sft.py` as it runs by default, 60 steps of 64 rows, padded vs "
            "padding-free (same rows: losses must agree) vs packed (bfd, max_length 64, 16 "
            "packed rows per step, about the same tokens).",
            [Side("padded", "sft", "align", _fields(60)),
             Side("padding-free", "sft", "align",
                  _fields(60, "padding_free=true", "max_length=null")),
             Side("packed (bfd)", "sft", "align",
                  _fields(60, "packing=true", "per_device_train_batch_size=16"))],
            ["wall", "step", "peak", "tokens_s", "final_loss", "mean_loss", "loss_delta"]),
        Comparison(
            "sft-memory", "SFT on the 34M model: activation checkpointing and attention",
            "`python align/sft.py` on the sum task, 8 padded rows x 6 steps: align's default "
            "(sdpa, no activation checkpointing) against checkpointing on (trl's default) and "
            "eager attention. Same rows and weights: losses must agree.",
            [Side("sdpa, no checkpointing", "sft", "align", _fields(6, *varlen_sft),
                  align=medium_align, data="varlen"),
             Side("activation checkpointing", "sft", "align", _fields(6, *varlen_sft),
                  align=[*medium_align, "model.gradient_checkpointing=true"], data="varlen"),
             Side("eager attention", "sft", "align", _fields(6, *varlen_sft),
                  align=[*medium_align, "model.attn_implementation=eager"], data="varlen")],
            ["wall", "step", "peak", "tokens_s", "final_loss", "loss_delta"],
            needs=("medium", "varlen")),
        Comparison(
            "grpo-generation", "GRPO: generation vs training (tiny SFT model, dynamic sampling off)",
            "`python align/grpo.py`, 12 steps of 64 completions (8 prompts x 8). "
            "steps_per_generation=4 generates 4 steps' completions at once (a generation batch "
            "of 256: the same knob as generation_batch_size=256) and reuses them, off-policy by "
            "up to 3 steps; max_completion_length caps the rollout (the tiny model usually "
            "stops at its end-of-turn token within 4 tokens).",
            [Side("default (gen batch 64, 5 tokens)", "grpo", "align", _fields(12),
                  align=grpo_as_trl),
             Side("steps_per_generation=4 (gen batch 256)", "grpo", "align",
                  _fields(12, "steps_per_generation=4"), align=grpo_as_trl),
             Side("max_completion_length=16", "grpo", "align",
                  _fields(12, "max_completion_length=16"), align=grpo_as_trl),
             Side("max_completion_length=64", "grpo", "align",
                  _fields(12, "max_completion_length=64"), align=grpo_as_trl)],
            ["wall", "step_mean", "peak", "gen_share", "rollout_share", "train_share",
             "reward_mean"]),
    ]
    return out


# ----------------------------------------------------------------------------- preparation

def build_varlen(path: Path, rows: int = 2000, seed: int = 0) -> Path:
    """SFT rows `a1+a2+...+ak=` -> the sum, k log-uniform in 1..60 (long-tailed lengths)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        k = min(60, int(math.exp(rng.uniform(0, math.log(61)))))
        terms = [rng.randrange(100) for _ in range(max(k, 1))]
        prompt = "+".join(map(str, terms)) + "="
        lines.append(json.dumps({"prompt": [{"role": "user", "content": prompt}],
                                 "completion": [{"role": "assistant",
                                                 "content": str(sum(terms))}]}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def packed_batch_size(varlen: Path, model: str, rows_per_step: int, max_length: int) -> int:
    """Packed rows per step that hold about as many tokens as `rows_per_step` padded rows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    sample = [json.loads(line) for line in varlen.read_text().splitlines()[:500]]
    mean = statistics.mean(
        len(tok(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False))["input_ids"])
        for r in sample)
    return max(1, round(rows_per_step * mean / max_length))


def prepare(names: list[str], work: Path) -> dict:
    from align.models.tiny import tiny_model_path

    ctx = {"tiny_base": str(tiny_model_path("base")), "tiny_sft": str(tiny_model_path("sft"))}
    needs = {n for c in comparisons({**ctx, "medium": "", "varlen": ""}) if c.name in names
             for n in c.needs}
    if "medium" in needs:
        sys.path.insert(0, str(HERE))
        from gpu_check import build_model

        ctx["medium"] = str(build_model(work, MEDIUM["hidden"], MEDIUM["layers"]))
    if "varlen" in needs:
        ctx["varlen"] = str(build_varlen(work / "varlen_sum.jsonl"))
        ctx["packed_batch"] = packed_batch_size(Path(ctx["varlen"]), ctx["medium"], 8, 256)
    return ctx


# ----------------------------------------------------------------------------- running

def command(side: Side, run_dir: Path, ctx: dict) -> list[str]:
    uses_varlen = side.data == "varlen"
    if side.impl == "align":
        data = ["data=local", f"data.path={ctx['varlen']}"] if uses_varlen else []
        return [sys.executable, str(REPO / "align" / f"{side.stage}.py"), *ALIGN_COMMON, *data,
                *[f"trainer.{f}" for f in side.fields], *side.align,
                f"output_dir={run_dir}", f"hydra.run.dir={run_dir}/hydra"]
    data = ["--data", ctx["varlen"]] if uses_varlen else []
    return [sys.executable, str(HERE / "plain" / f"{side.stage}.py"), "--out", str(run_dir),
            *data, *side.plain, *side.fields]


def run_side(cmd: list[str], run_dir: Path, timeout: float) -> dict:
    """Run one process; wall time and peak RSS from os.wait4, the rest from timing.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE / "plain"),
                                          os.environ.get("PYTHONPATH", "")])}
    log = run_dir / "run.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                return {"status": f"timeout after {timeout:.0f}s", "log": str(log)}
            time.sleep(0.05)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    timing = run_dir / "timing.json"
    if proc.returncode != 0 or not timing.exists():
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])[-400:]
        return {"status": f"failed (rc={proc.returncode}): {tail}", "log": str(log)}
    t = json.loads(timing.read_text())
    profile = t.get("profile") or {}
    steps_sum = t.get("step_s_sum") or 0.0
    gen = profile.get("transformers.generate", {}).get("s")
    prep = profile.get("_prepare_inputs", {}).get("s")
    weights = sorted((run_dir / "final").glob("*.safetensors"))
    digest = hashlib.sha256(b"".join(w.read_bytes() for w in weights)).hexdigest()[:16]
    return {
        "status": "ok",
        "wall": wall,
        "train": t.get("train_s"),
        "step": t.get("step_s_median"),
        "step_mean": t.get("step_s_mean"),
        "peak": usage.ru_maxrss / 1024,  # KiB on Linux
        "tokens_s": t.get("tokens_per_s"),
        "final_loss": t.get("final_loss"),
        "mean_loss": statistics.mean(t["losses"]) if t.get("losses") else None,
        "losses": t.get("losses"),
        "weights": digest if weights else None,
        "gen_share": gen / steps_sum if gen is not None and steps_sum else None,
        "rollout_share": (prep - gen) / steps_sum if None not in (gen, prep) and steps_sum
        else None,
        "train_share": 1 - prep / steps_sum if prep is not None and steps_sum else None,
        "reward_mean": statistics.mean(t["rewards"]) if t.get("rewards") else None,
        "params": t.get("params"),
        "trainable": t.get("trainable"),
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_comparison(comp: Comparison, ctx: dict, reps: int, work: Path, timeout: float) -> dict:
    load_before = os.getloadavg()
    runs: list[list[dict]] = [[] for _ in comp.sides]
    for rep in range(reps):
        for i, side in enumerate(comp.sides):  # interleaved: A B A B ...
            run_dir = work / "runs" / comp.name / f"{i}-rep{rep}"
            result = run_side(command(side, run_dir, ctx), run_dir, timeout)
            runs[i].append(result)
            figures = (f"wall {result['wall']:.1f}s step {result['step'] or 0:.3f}s "
                       f"peak {result['peak']:.0f} MiB loss {result['final_loss']}"
                       if result["status"] == "ok" else result["status"])
            print(f"  {comp.name} rep {rep + 1}/{reps} {side.name:40.40} {figures}", flush=True)
    sides = []
    for side, results in zip(comp.sides, runs):
        ok = [r for r in results if r["status"] == "ok"]
        summary = {"name": side.name, "ok": len(ok), "reps": len(results),
                   "status": "ok" if ok else results[-1]["status"]}
        for key in ("wall", "train", "step", "step_mean", "peak", "tokens_s", "final_loss",
                    "mean_loss", "gen_share", "rollout_share", "train_share", "reward_mean"):
            summary[key] = median([r.get(key) for r in ok])
        # The repetitions of one side must agree with each other (same seed, same work).
        summary["reproducible"] = len({json.dumps(r["losses"]) for r in ok}) <= 1
        summary["losses"] = ok[0]["losses"] if ok else None
        summary["weights"] = ok[0]["weights"] if ok else None
        summary["params"] = ok[0]["params"] if ok else None
        summary["trainable"] = ok[0]["trainable"] if ok else None
        shown = ["python", *command(side, Path("RUN"), ctx)[1:]]
        summary["command"] = " ".join(shown).replace(str(REPO) + "/", "")
        sides.append(summary)
    return {"name": comp.name, "title": comp.title, "what": comp.what, "columns": comp.columns,
            "reps": reps, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_avg": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
            "machine": machine(), "sides": sides}


# ----------------------------------------------------------------------------- reporting


HEADERS = {
    "wall": "wall s", "train": "train s", "step": "step s", "step_mean": "step mean s",
    "peak": "peak MiB", "tokens_s": "tokens/s", "final_loss": "final loss",
    "mean_loss": "mean loss", "loss_delta": "loss vs first", "same_run": "same run",
    "gen_share": "generate", "rollout_share": "rest of rollout", "train_share": "training",
    "reward_mean": "mean reward",
}
RATIO = {"wall", "train", "step", "step_mean", "peak", "tokens_s"}


def cell(key: str, side: dict, base: dict) -> list[str]:
    value = side.get(key)
    if key == "same_run":
        if side is base:
            return ["-"]
        same = side["losses"] == base["losses"] and side["weights"] == base["weights"]
        return ["identical" if same else "differs"]
    if key == "loss_delta":
        if side is base or side.get("final_loss") is None or not base.get("final_loss"):
            return ["-"]
        which = "mean_loss" if side.get("mean_loss") is not None else "final_loss"
        if side["losses"] == base["losses"]:
            return ["identical"]
        delta = (side[which] - base[which]) / base[which]
        return [f"{delta:+.2%} ({which.split('_')[0]})"]
    if value is None:
        text = ""
    elif key.endswith("_share"):
        text = f"{value:.0%}"
    elif key in ("final_loss", "mean_loss", "reward_mean"):
        text = f"{value:.4g}"
    elif key in ("peak", "tokens_s"):
        text = f"{value:.0f}"
    else:
        text = f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if key not in RATIO:
        return [text]
    ratio = (f"{value / base[key]:.2f}" if value is not None and base.get(key) else "")
    return [text, ratio]


def section(result: dict) -> str:
    head, rule = ["side"], ["---"]
    for key in result["columns"]:
        head.append(HEADERS[key])
        rule.append("---:")
        if key in RATIO:
            head.append("x first")
            rule.append("---:")
    rows = [f"| {' | '.join(head)} |", f"|{'|'.join(rule)}|"]
    base = next((s for s in result["sides"] if s["status"] == "ok"), None)
    for side in result["sides"]:
        if side["status"] != "ok" or base is None:
            rows.append(f"| {side['name']} | {side['status']} |")
            continue
        cells = [c for key in result["columns"] for c in cell(key, side, base)]
        note = "" if side["reproducible"] else " (reps differ)"
        rows.append(f"| {side['name']}{note} | {' | '.join(cells)} |")
    m = result["machine"]
    run = (f"Run {result['date']}, {result['reps']} repetitions interleaved, load average "
           f"{result['load_avg'][0]} before / {result['load_avg'][1]} after "
           f"({m['cpu']}, {m['cores']} cores). "
           f"Regenerate: `python benchmarks/run.py {result['name']} --reps {result['reps']}`")
    lines = [f"## {result['name']}: {result['title']}", "", result["what"], "", run, "",
             *rows, ""]
    params = {s["params"] for s in result["sides"] if s.get("params")}
    if params:
        lines += [f"Model parameters: {', '.join(f'{p / 1e6:.2f}M' for p in sorted(params))}; "
                  "trainable: " + ", ".join(f"{s['name']} {s['trainable'] / 1e6:.2f}M"
                                            for s in result["sides"] if s.get("trainable")),
                  ""]
    lines += ["<details><summary>commands</summary>", ""]
    lines += [f"- {s['name']}: `{s['command']}`" for s in result["sides"]]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def write_report(raw: dict, results: Path) -> None:
    order = [c.name for c in comparisons({"tiny_base": "", "tiny_sft": ""})]
    done = sorted(raw, key=lambda n: order.index(n) if n in order else len(order))
    latest = max(raw.values(), key=lambda r: r["date"])
    m = latest["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    intro = (
        "Written by `python benchmarks/run.py` (every comparison, 3 repetitions: about "
        "25 minutes on 2 busy CPU cores); what each figure is: the docstring of "
        "benchmarks/run.py. Every figure is a median over interleaved repetitions, and "
        "ratios (`x first`) are against the first row of the same table and run: absolute "
        "times move with the machine and its load, ratios much less. What the figures mean "
        "for align's defaults: benchmarks/RESULTS.md.")
    parts = [
        "# CPU benchmarks: align vs plain trl, and the options that trade time for memory", "",
        intro, "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {versions}.", "",
    ]
    parts += [section(raw[name]) for name in done]
    parts += foreign_sections(results, order)
    results.write_text("\n".join(parts).rstrip() + "\n")


def foreign_sections(results: Path, order: list[str]) -> list[str]:
    """The `## name: ...` sections of an existing results file that other scripts write
    (benchmarks/startup.py's `## startup`, the whole-process figures), kept as they are."""
    if not results.exists():
        return []
    kept = []
    for chunk in ("\n" + results.read_text()).split("\n## ")[1:]:
        name = chunk.split(":", 1)[0].strip()
        if name not in order:
            kept.append("## " + chunk.rstrip() + "\n")
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="comparisons to run (default: all)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/align-benchmarks"),
                        help="run folders and the generated model/data")
    parser.add_argument("--results", type=Path, default=HERE / "CPU_RESULTS.md")
    parser.add_argument("--raw", type=Path, default=None,
                        help="raw figures, merged by comparison (default: cpu_results.json "
                             "next to --results)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process")
    parser.add_argument("--list", action="store_true")
    opts = parser.parse_args()
    known = comparisons({"tiny_base": "", "tiny_sft": ""})
    if opts.list:
        for c in known:
            print(f"{c.name:18} {c.title}")
        return
    names = opts.names or [c.name for c in known]
    unknown = [n for n in names if n not in {c.name for c in known}]
    if unknown:
        parser.error(f"unknown comparison(s) {unknown}; see --list")
    opts.work = opts.work.resolve()
    opts.work.mkdir(parents=True, exist_ok=True)
    raw_path = opts.raw or opts.results.with_name("cpu_results.json")
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    started = time.perf_counter()
    ctx = prepare(names, opts.work)
    for comp in comparisons(ctx):
        if comp.name not in names:
            continue
        print(f"{comp.name}: {comp.title}", flush=True)
        raw[comp.name] = run_comparison(comp, ctx, opts.reps, opts.work, opts.timeout)
        raw_path.write_text(json.dumps(raw, indent=1) + "\n")  # after each: partial runs count
        write_report(raw, opts.results)
    print(f"\n{opts.results} written in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
