"""GPU smoke of every experiment: a few steps of each conf/experiment/*.yaml on a randomly
initialised model of its real architecture, with its real trainer settings and its launch
config scaled to one GPU; peak memory against the planner's figure for the same job, step time
and time per 1,000 samples (GRPO: completions). On a CPU the "peak" is the process's resident
set, not comparable with the plan.

    python benchmarks/experiment_smoke.py --out /tmp/smoke       # one CUDA GPU, --budget 540 s
    python benchmarks/experiment_smoke.py --cpu-smoke --only qwen_sft_chat   # mechanics, on CPU

No network is needed. The architecture is the published config.json align ships for the model an
experiment names (align/models/architectures/), the weights are random, the tokenizer is the tiny
model's (its ids fit every vocabulary here). What stands in for what the GPU machine cannot
reach, each said in the results: the data is align's synthetic task of the stage's shape (the
hub data sets are out of reach), so SFT/DPO rows are short and their peaks sit below a plan made
at the configured `max_length`; vLLM is off (`trainer.use_vllm=false`: not installable there), so
GRPO generates with HF `generate` and its plan leaves out vLLM's share; held-out measurement is
off (a smoke times training steps). A random model never ends a completion early, so GRPO
generates `max_completion_length` tokens every time: its step time is a worst case.

Experiments on the embedded tiny models (the *_tiny_* files) run as they are. `--cpu-smoke`
checks the mechanics on a CPU: the architecture shrunk to 2 layers of width 64, float32, 2 steps,
GRPO completions of 8 tokens.

Results: a Markdown table on stdout and in `--out`/experiment_smoke.md, raw figures in
experiment_smoke.json; copy the table into benchmarks/RESULTS.md with the card name.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check import entry_command, progress, run_entry, versions, write_report

from align.run.conf import CONF_DIR, experiment_usage

COMMON = ["logger=none", "heldout.enabled=false", "trainer.save_strategy=no",
          "trainer.logging_steps=1", "callbacks=[timing:Timing]"]
#: what a CPU smoke changes: float32, small batches, short rows and completions, few rows
CPU = ["trainer.bf16=false", "model.dtype=float32", "trainer.per_device_train_batch_size=4",
       "trainer.gradient_accumulation_steps=1", "data.max_samples=64"]
CPU_STAGE = {"sft": ["trainer.max_length=128"], "dpo": ["trainer.max_length=128"],
             "grpo": ["trainer.max_completion_length=8", "trainer.num_generations=4"]}
SHRINK = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def composed(stage: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from align.run.conf import register

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[*overrides, "output_dir=/tmp/align-smoke-unused"])


def build_model(name: str, out: Path, shrink: bool) -> Path:
    """A randomly initialised model of the architecture align ships for hub id `name`, saved with
    the tiny model's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from align.models.source import shipped_architecture
    from align.models.tiny import tiny_model_path

    folder = shipped_architecture(name)
    if folder is None:
        raise SystemExit(f"{name}: align ships no architecture for it "
                         "(align/models/architectures/)")
    path = out / "models" / (folder.name + ("-shrunk" if shrink else ""))
    if (path / "config.json").exists():
        return path
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path("base"))
    config = AutoConfig.from_pretrained(folder)
    if shrink:
        for key, value in SHRINK.items():
            setattr(config, key, value)
        config.vocab_size = len(tokenizer)
        if getattr(config, "layer_types", None):  # one entry per layer (Qwen2's attention kinds)
            config.layer_types = config.layer_types[:SHRINK["num_hidden_layers"]]
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if shrink
                                             else torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def case(name: str, out: Path, steps: int, shrink: bool) -> dict:
    """The command line of one experiment's smoke (`launch` scaled to one process)."""
    stage, launch, overrides = experiment_usage(name)
    cfg = composed(stage, overrides)
    args = [*overrides, *COMMON, f"trainer.max_steps={steps}"]
    if stage == "grpo":
        args.append("trainer.use_vllm=false")
    if shrink:
        args += [*CPU, *CPU_STAGE[stage]]
        for reward, spec in (cfg.get("rewards") or {}).items():  # a length penalty's window
            if "soft_punish_cache" in (spec.get("kwargs") or {}):  # fits in 8 tokens
                args.append(f"rewards.{reward}.kwargs.soft_punish_cache=4")
    model = str(cfg.model.name_or_path)
    stands_in = []
    from align.models.source import shipped_architecture

    if shipped_architecture(model) is not None:  # a hub id: its architecture, random weights
        args.append(f"model.name_or_path={build_model(model, out, shrink)}")
        stands_in.append("random weights")
    if not str(cfg.data.get("path", "")).startswith("synthetic:"):
        keep = [a for a in args if a.startswith("data.max_samples=")]
        args = [a for a in args if not a.startswith("data.")]  # e.g. data.path=my_chats.jsonl
        args += ["data=arithmetic", "data.eval_fraction=0", *keep]  # it has its own eval split
        stands_in.append("synthetic data")
    final = composed(stage, args).trainer  # samples per optimizer step (GRPO: completions)
    batch = (int(final.per_device_train_batch_size)
             * int(final.get("gradient_accumulation_steps", 1)))
    return dict(name=name, stage=stage, launch=launch, args=args, model=model,
                samples_per_step=batch, stands_in=stands_in)


def planned_gib(c: dict, card_gib: float) -> float | None:
    """The planner's peak per GPU for the same job on one process, on a card of `card_gib`."""
    cmd = [sys.executable, str(REPO / "align" / "plan.py"), "--stage", c["stage"], "--gpus", "1",
           "--card", f"{card_gib:g}"]
    if c["launch"]:
        cmd += ["--launch", str(REPO / c["launch"])]
    args = [a for a in c["args"] if not a.startswith("callbacks=")]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)
    found = re.search(r"card:\s+([\d.]+) GiB", proc.stdout)
    return float(found.group(1)) if found else None


def run_case(c: dict, out: Path, timeout: int) -> dict:
    run_dir = out / "runs" / c["name"]
    result = {**c, **run_entry(entry_command(c["stage"], c["launch"], c["args"], run_dir),
                               run_dir, out, timeout)}
    if result["status"] == "ok" and result.get("step_s_median"):
        result["s_per_1000_samples"] = result["step_s_median"] * 1000 / c["samples_per_step"]
    return result


def table(results: list[dict]) -> str:
    rows = ["| experiment | stage, launch (1 process) | parameters | step s (median) | "
            "s per 1,000 samples | peak GiB | planned GiB | peak / plan | stands in | status |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        how = f"{r['stage']}, {r['launch'] or 'python'}"
        if r["status"] != "ok":
            rows.append(f"| {r['name']} | {how} | | | | | | | | {r['status']} |")
            continue
        plan = r.get("planned_gib")
        ratio = f"{r['peak_mem_gib'] / plan:.2f}" if plan else ""
        rows.append(
            f"| {r['name']} | {how} | {r['params'] / 1e6:.1f}M | {r['step_s_median']:.3f} | "
            f"{r.get('s_per_1000_samples', 0):.1f} | {r['peak_mem_gib']:.2f} | "
            f"{plan if plan is not None else ''} | {ratio} | {', '.join(r['stands_in'])} | ok |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("experiment_smoke"))
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per experiment "
                        "(the first 2 are left out of the median)")
    parser.add_argument("--only", default="", help="comma-separated experiment names")
    parser.add_argument("--case-timeout", type=int, default=240)
    parser.add_argument("--budget", type=int, default=540, help="skip cases after this many s")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check the mechanics on a CPU (shrunk models, float32)")
    opts = parser.parse_args(argv)
    names = experiments()
    wanted = [n for n in opts.only.split(",") if n]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"--only {','.join(unknown)}: no such experiment; choose from "
                     f"{', '.join(names)}")
    opts.out = opts.out.resolve()
    opts.out.mkdir(parents=True, exist_ok=True)
    import torch

    card_gib = (torch.cuda.get_device_properties(0).total_memory / 2**30
                if torch.cuda.is_available() else 141.0)
    header = f"{versions()}; {time.strftime('%Y-%m-%d')}; {opts.steps} steps per experiment"
    print(header, flush=True)
    started, results = time.perf_counter(), []
    for name in wanted or names:
        c = case(name, opts.out, opts.steps, opts.cpu_smoke)
        if time.perf_counter() - started > opts.budget:
            results.append({**c, "status": "skipped: time budget"})
            continue
        result = run_case(c, opts.out, opts.case_timeout)
        if result["status"] == "ok":
            result["planned_gib"] = planned_gib(c, card_gib)
        results.append(result)
        progress(f"{name:26}", result)
    write_report(opts.out, "experiment_smoke", header, table(results), results)


if __name__ == "__main__":
    main()
