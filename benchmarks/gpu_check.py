"""One prepared check for a single CUDA GPU: align's stages in bf16 on a generated ~110M model.

    python benchmarks/gpu_check.py --out /tmp/gpu_check        # ~6-8 minutes on one H100/H200

No network is needed: the model is generated here (Llama architecture, the tiny model's
tokenizer, random weights), the data is align's synthetic task. Each case runs the real entry
point in its own process (python or `accelerate launch`), with benchmarks/timing.py measuring
median step time, tokens/s, peak GPU memory and (GRPO) the share of step time spent in
`generate`, from trl's own profiling blocks. Cases whose optional package is missing
(liger-kernel, deepspeed) are skipped and say so. Results: a Markdown table on stdout and in
`--out`/gpu_check.md, raw figures in gpu_check.json; copy the table into
benchmarks/RESULTS.md with the card name.

Cases (ratios are read against the first case of their group, from the same run):
  grpo  bf16 + sdpa, full fine-tuning              HF generate rollouts, 8 prompts x 8 samples
  grpo  + Liger kernels (RMSNorm, SwiGLU, RoPE)    trainer.use_liger_kernel=true
  grpo  DeepSpeed ZeRO-2, ZeRO-3 (1 process)       launch/zero2.yaml, launch/zero3.yaml
  dpo   LoRA (reference = adapter disabled)  vs full fine-tuning with a reference copy
        vs full with precomputed reference log-probs
  sft   bf16 full fine-tuning, and + Liger
  sftvar  variable-length rows (benchmarks/run.py's sum task, 12-190 tokens): padded vs
        padding-free vs packed (bfd), attention `auto` (flash-attn when installed, else sdpa)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMON = ["logger=none", "heldout.enabled=false", "trainer.save_strategy=no",
          "trainer.logging_steps=1", "trainer.use_cpu=false", "trainer.bf16=true",
          "model.dtype=bfloat16", "callbacks=[timing:Timing]"]


def build_model(out: Path, hidden: int, layers: int) -> Path:
    """A randomly initialised Llama-architecture model with the tiny model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from align.models.tiny import tiny_model_path

    path = out / f"llama-{hidden}x{layers}"
    if (path / "config.json").exists():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path("base"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cases(model: Path, steps: int, varlen: Path | None = None, packed_batch: int = 8) -> list[dict]:
    m = [f"model.name_or_path={model}", "model.attn_implementation=sdpa"]
    grpo = [*m, f"trainer.max_steps={steps}", "trainer.per_device_train_batch_size=64",
            "trainer.num_generations=8", "trainer.max_completion_length=128",
            "trainer.learning_rate=1e-5", "peft=none"]
    dpo = [*m, f"trainer.max_steps={steps}", "trainer.per_device_train_batch_size=64",
           "trainer.max_length=64"]
    sft = [*m, f"trainer.max_steps={steps}", "trainer.per_device_train_batch_size=64",
           "peft=none"]
    liger = "liger_kernel"
    out = [
        dict(group="grpo", name="bf16 sdpa", stage="grpo", args=grpo),
        dict(group="grpo", name="+ liger", stage="grpo", args=[*grpo, "trainer.use_liger_kernel=true"],
             needs=liger),
        dict(group="grpo", name="zero2 (1 proc)", stage="grpo", args=grpo, launch="zero2.yaml",
             needs="deepspeed"),
        dict(group="grpo", name="zero3 (1 proc)", stage="grpo", args=grpo, launch="zero3.yaml",
             needs="deepspeed"),
        dict(group="dpo", name="lora, adapter-off reference", stage="dpo", args=[*dpo, "peft=lora",
             "trainer.learning_rate=5e-5"]),
        dict(group="dpo", name="full, reference copy", stage="dpo", args=[*dpo, "peft=none",
             "trainer.learning_rate=5e-7"]),
        dict(group="dpo", name="full, precomputed reference", stage="dpo",
             args=[*dpo, "peft=none", "trainer.learning_rate=5e-7",
                   "trainer.precompute_ref_log_probs=true"]),
        dict(group="sft", name="bf16 sdpa", stage="sft", args=sft),
        dict(group="sft", name="+ liger", stage="sft", args=[*sft, "trainer.use_liger_kernel=true"],
             needs=liger),
    ]
    if varlen is not None:  # same rows for padded and padding-free; packed: about as many tokens
        var = [f"model.name_or_path={model}", "model.attn_implementation=auto", "data=local",
               f"data.path={varlen}", f"trainer.max_steps={steps}", "peft=none"]
        out += [
            dict(group="sftvar", name="padded", stage="sft",
                 args=[*var, "trainer.per_device_train_batch_size=32", "trainer.max_length=256"]),
            dict(group="sftvar", name="padding-free", stage="sft",
                 args=[*var, "trainer.per_device_train_batch_size=32", "trainer.max_length=null",
                       "trainer.padding_free=true"]),
            dict(group="sftvar", name="packed (bfd)", stage="sft",
                 args=[*var, f"trainer.per_device_train_batch_size={packed_batch}",
                       "trainer.max_length=256", "trainer.packing=true"]),
        ]
    return out


def entry_command(stage: str, launch: str | None, args: list[str], run_dir: Path) -> list[str]:
    """An align entry point as a user runs it: python, or `accelerate launch` with a config from
    launch/ scaled to one process; the run folder (and Hydra's) in `run_dir`."""
    script = str(REPO / "align" / f"{stage}.py")
    if launch:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "launch" / Path(launch).name), "--num_processes", "1", script]
    else:
        cmd = [sys.executable, script]
    return [*cmd, *args, f"output_dir={run_dir}", f"hydra.run.dir={run_dir}/hydra"]


def run_limited(cmd: list[str], log: Path, limit: float, env: dict, cwd: Path
                ) -> tuple[int | None, float, int]:
    """Run `cmd` in its own process group, its output in `log`; past `limit` seconds kill the
    whole group (an `accelerate launch` leaves its workers behind when only the launcher is
    killed, holding the GPU the next case needs). (exit status or None when killed, wall
    seconds, the group's id)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            rc = None
        # the group may outlive its leader (workers of a launcher that already exited)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return rc, time.perf_counter() - started, proc.pid


def run_entry(cmd: list[str], run_dir: Path, out: Path, timeout: int) -> dict:
    """Run one case (benchmarks/ on PYTHONPATH for its callbacks) under its time limit: its log
    in out/logs/, and `status` with probe.json's figures (benchmarks/probe.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]), "PYTHONUNBUFFERED": "1"}
    log = out / "logs" / f"{run_dir.name}.log"
    rc, wall, _ = run_limited(cmd, log, timeout, env, out)
    if rc is None:
        return {"status": f"killed past its {timeout} s limit"}
    probe = run_dir / "probe.json"
    if rc != 0 or not probe.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"status": f"failed (rc={rc}): {' | '.join(tail)[-300:]}"}
    return {"status": "ok", "wall_s": wall, **json.loads(probe.read_text())}


def progress(label: str, result: dict) -> None:
    figures = (f"  step {result['step_s_median']:.3f}s peak {result['peak_mem_gib']:.2f} GiB"
               if result["status"] == "ok" else "")
    print(f"{label} {result['status']:.120}{figures}", flush=True)


def write_report(out: Path, stem: str, header: str, table_text: str, results: list[dict]) -> None:
    """The Markdown table (stdout and out/<stem>.md) and the raw figures (out/<stem>.json)."""
    report = f"{header}\n\n{table_text}\n"
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "args"} for r in results], indent=1))
    print("\n" + report)


def run_case(case: dict, out: Path, timeout: int) -> dict:
    # Hydra's override grammar reserves ( ) , [ ] and friends: keep folder names plain.
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", case["name"]).strip("_")
    run_dir = out / "runs" / f"{case['group']}-{slug}"
    need = case.get("needs")
    if need and importlib.util.find_spec(need) is None:
        return {**case, "status": f"skipped: {need} not installed"}
    cmd = entry_command(case["stage"], case.get("launch"), [*COMMON, *case["args"]], run_dir)
    result = {**case, **run_entry(cmd, run_dir, out, timeout)}
    timing = run_dir / "timing.json"  # benchmarks/timing.py: trl's own profiling blocks
    if result["status"] == "ok" and timing.exists():
        t = json.loads(timing.read_text())
        generate = (t.get("profile") or {}).get("transformers.generate", {}).get("s")
        if generate is not None and t.get("step_s_sum"):
            result["generate_share"] = generate / t["step_s_sum"]
    return result


def table(results: list[dict]) -> str:
    rows = ["| stage | case | step s (median) | x first | tokens/s | peak GiB | x first | "
            "final loss | generate % | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    first: dict[str, dict] = {}
    for r in results:
        base = first.setdefault(r["group"], r) if r["status"] == "ok" else first.get(r["group"])
        if r["status"] != "ok":
            rows.append(f"| {r['group']} | {r['name']} | | | | | | | | {r['status']} |")
            continue

        def ratio(key):
            return f"{r[key] / base[key]:.2f}" if base and base.get(key) and r.get(key) else ""

        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else ""
        share = f"{r['generate_share']:.0%}" if r.get("generate_share") is not None else ""
        rows.append(f"| {r['group']} | {r['name']} | {r['step_s_median']:.3f} | "
                    f"{ratio('step_s_median')} | {tps} | {r['peak_mem_gib']:.2f} | "
                    f"{ratio('peak_mem_gib')} | {r['final_loss']:.4g} | {share} | ok |")
    return "\n".join(rows)


def versions() -> str:
    import importlib.metadata as md

    import torch

    names = ["torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "liger-kernel"]
    found = []
    for n in names:
        try:
            found.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            found.append(f"{n} -")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {platform.python_version()}; " + ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--case-timeout", type=int, default=150)
    parser.add_argument("--budget", type=int, default=480, help="skip cases after this many s")
    parser.add_argument("--only", default="",
                        help="comma-separated groups (grpo,dpo,sft,sftvar)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check the mechanics on a CPU (float32, no GPU settings)")
    opts = parser.parse_args()
    if opts.cpu_smoke:
        gpu_only = {"trainer.use_cpu=false", "trainer.bf16=true", "model.dtype=bfloat16"}
        COMMON[:] = [a for a in COMMON if a not in gpu_only]
    opts.out = opts.out.resolve()
    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = build_model(opts.out, opts.hidden, opts.layers)
    header = f"{versions()}; model {model.name}; {time.strftime('%Y-%m-%d')}"
    print(header, flush=True)
    results = []
    sys.path.insert(0, str(REPO / "benchmarks"))
    from run import (  # the CPU harness's variable-length task
        build_varlen,
        packed_batch_size,
    )

    varlen = build_varlen(opts.out / "varlen_sum.jsonl")
    for case in cases(model, opts.steps, varlen, packed_batch_size(varlen, str(model), 32, 256)):
        if opts.only and case["group"] not in opts.only.split(","):
            continue
        if time.perf_counter() - started > opts.budget:
            results.append({**case, "status": "skipped: time budget"})
            continue
        result = run_case(case, opts.out, opts.case_timeout)
        results.append(result)
        progress(f"{case['group']:5} {case['name']:32}", result)
    write_report(opts.out, "gpu_check", header, table(results), results)


if __name__ == "__main__":
    main()
