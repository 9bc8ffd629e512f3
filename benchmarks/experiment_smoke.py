"""GPU smoke of every experiment: a few steps of each conf/experiment/*.yaml, launched as its
first line says, on a randomly initialised model of its real architecture, with held-out
measurement on; each case in its own process group under a hard time limit.

    python benchmarks/experiment_smoke.py --plan                  # the plan: cases, limits, total
    timeout 540 python benchmarks/experiment_smoke.py                       # on one GPU
    python benchmarks/experiment_smoke.py --cpu-smoke --only qwen_sft_chat   # mechanics, on CPU

What it shows per case: the run finished (or was killed past its limit, or failed, and the next
case went on), median step time and time per 1,000 samples (GRPO: completions), the held-out
figures before and after training, whether `final/` holds a model, and peak memory three ways
beside the planner's figure for the same job: allocated and reserved by torch (over the whole
process, held-out generation included, and over training alone) and the card's used memory as
NVML reports it (pynvml when installed, else nvidia-smi; sampled from outside the run, so it
counts the CUDA context and every rank's process on that card). With 2 or more GPUs it adds a
2-process case (the GRPO experiment on its own launch file, `--num_processes 2`).

The time bound is a plan, not a hope: every case has a limit derived from what it will do (see
`expected_s`: start-up, loading, optimizer steps, generated tokens, saving; limit = 1.5 x that),
cases are admitted in priority order while their limits fit in `--budget` (450 s), and a case
past its limit is killed with its whole process group (the launcher's workers included). The
model build and every case are limited, so the script ends within the budget plus its own few
seconds of composing configs. `--plan` prints that arithmetic without building or running.

What stands in for what the GPU machine cannot reach, each said in the results: no network, so
the weights are random (the architecture is the published config.json align ships,
align/models/architectures/; the tokenizer is the tiny model's, its ids fit every vocabulary
here) and the data is align's synthetic task of the stage's shape; vLLM is off
(`trainer.use_vllm=false`: its extra pins another transformers than the main install), so GRPO
generates with HF `generate` and its plan leaves out vLLM's share. What is made small: held-out
on 8 prompts (or rows/pairs) with at most 64 new tokens, GRPO completions capped at 256 tokens, 4
generations of 2 prompts a step, on-policy DPO 2 rounds of 8 prompts x 4 samples. A random model
never ends a completion early, so GRPO generates the cap every time: its step time is a worst
case. Experiments on the embedded tiny models run as they are, made small the same way.

`--cpu-smoke` checks the mechanics on a CPU: the architectures shrunk to 2 layers of width 64,
float32, 2 steps, GRPO completions of 8 tokens, limits of 600 s (`--limit NAME=S` sets one),
no budget. Cases launched through DeepSpeed are skipped, and say so, where it is not installed.

Results: a Markdown table (with the card's name) on stdout and in `--out`/experiment_smoke.md
(benchmarks/gpu_smoke/ by default), raw figures in experiment_smoke.json, each case's log in
`--out`/logs/; the random models and run folders in `--work` (GBs: keep it off the repository).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check import run_limited, versions, write_report  # noqa: E402
from timing import Timing  # noqa: E402

from align.run.conf import CONF_DIR, experiment_usage  # noqa: E402

#: the order cases are admitted in while their limits fit the budget: the real-model
#: experiments first (what GPU users run), then the tiny ones whose generation path differs
#: (on-policy rounds, tools, a vision model), then the rest; an experiment added later comes last
PRIORITY = ["qwen_gsm8k_grpo", "llama_ultrafeedback_dpo", "qwen_sft_chat", "iterative_dpo",
            "tiny_tools", "grpo_tiny_vlm", "rm_tiny_full", "sft_tiny_vlm", "dpo_tiny_vlm",
            "grpo_tiny_lora"]
#: the experiment that also runs on 2 processes when 2+ GPUs are present: generation on every
#: rank and held-out measurement on the main one while the others wait
TWO_PROCESS = "qwen_gsm8k_grpo"

COMMON = ["logger=none", "trainer.save_strategy=no", "trainer.logging_steps=1",
          "callbacks=[experiment_smoke:SmokeProbe]", "heldout.enabled=true",
          "heldout.eval_steps=0", "heldout.max_samples=8", "heldout.batch_size=8",
          "data.max_eval_samples=8"]
HELDOUT_TOKENS = 64
GRPO = dict(max_completion_length=256, num_generations=4, per_device_train_batch_size=8,
            gradient_accumulation_steps=1, dynamic_sampling_max_rounds=1)
ON_POLICY = dict(rounds=2, prompts_per_round=8, samples_per_prompt=4, batch_size=8)
#: what a CPU smoke changes on top: float32, small batches, short rows and completions, few rows
CPU = ["trainer.bf16=false", "model.dtype=float32", "trainer.per_device_train_batch_size=4",
       "trainer.gradient_accumulation_steps=1", "data.max_samples=64"]
CPU_STAGE = {"sft": ["trainer.max_length=128"], "dpo": ["trainer.max_length=128"],
             "grpo": ["trainer.max_completion_length=8", "trainer.num_generations=4"]}
CPU_HELDOUT_TOKENS = 8
CPU_LIMIT_S = 600
SHRINK = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16)

# Allowances on one H100 for `expected_s`. No GPU has run this yet: these are estimates from
# the cards' published speeds and the CPU runs, to be replaced by the first run's `wall_s`.
# imports, compose and spec; + the launcher; + DeepSpeed's engine
START_S = {"python": 15.0, "accelerate": 20.0, "deepspeed": 30.0}
LOAD_S_PER_GB = 3.0      # bf16 weights from local disk onto the card
MICROBATCH_S = {"real": 0.15, "tiny": 0.05}  # forward + backward of one micro-batch, short rows
TOKEN_S = {"real": 0.03, "tiny": 0.015}      # one decoding step of HF generate (latency bound)
SAVE_S = 5.0
MARGIN = 1.5
BUILD_START_S, BUILD_S_PER_GB = 15.0, 2.0    # the model build: imports, then init + write
PLAN_LIMIT_S = 120       # one planner call (align/plan.py), beside the cases on the CPU


def experiments() -> list[str]:
    names = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    return sorted(names, key=lambda n: PRIORITY.index(n) if n in PRIORITY else len(PRIORITY))


def composed(stage: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from align.run.conf import register

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[*overrides, "output_dir=/tmp/align-smoke-unused"])


def model_folder(name: str, out: Path, shrink: bool) -> Path | None:
    """Where the random model of hub id `name`'s shipped architecture goes; None: not one."""
    from align.models.source import shipped_architecture

    folder = shipped_architecture(name)
    if folder is None:
        return None
    return out / "models" / (folder.name + ("-shrunk" if shrink else ""))


def build_models(names: list[str], out: Path, shrink: bool) -> None:
    """Randomly initialised models of the architectures align ships for these hub ids, saved with
    the tiny model's tokenizer (bfloat16, initialised on the GPU when there is one; shrunk:
    float32). Run in its own process, under the build's limit."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from align.models.source import shipped_architecture
    from align.models.tiny import tiny_model_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path("base"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name in names:
        path = model_folder(name, out, shrink)
        if (path / "config.json").exists():
            continue
        config = AutoConfig.from_pretrained(shipped_architecture(name))
        if shrink:
            for key, value in SHRINK.items():
                setattr(config, key, value)
            config.vocab_size = len(tokenizer)
            if getattr(config, "layer_types", None):  # one entry per layer (Qwen2's kinds)
                config.layer_types = config.layer_types[:SHRINK["num_hidden_layers"]]
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        torch.manual_seed(0)
        with torch.device(device):  # a 1.5B model initialises in seconds on a GPU
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.float32 if shrink else torch.bfloat16)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)


def _heldout_tokens(cfg, cap: int) -> int:
    return min(int(cfg.heldout.get("max_new_tokens", cap)), cap)


def case(name: str, work: Path, steps: int, shrink: bool, processes: int = 1) -> dict:
    """One experiment's smoke: its command line (`launch` with `processes` processes), made small,
    and what it will do, in the units `expected_s` counts."""
    stage, launch, overrides = experiment_usage(name)
    cfg = composed(stage, overrides)
    args = [*overrides, *COMMON, f"trainer.max_steps={steps}"]
    heldout_cap = CPU_HELDOUT_TOKENS if shrink else HELDOUT_TOKENS
    if "max_new_tokens" in cfg.heldout:  # a reward model's measurement does not generate
        args.append(f"heldout.max_new_tokens={_heldout_tokens(cfg, heldout_cap)}")
    if stage == "grpo":
        args.append("trainer.use_vllm=false")
        args += [f"trainer.{k}={min(int(cfg.trainer.get(k, v) or v), v)}"
                 for k, v in GRPO.items()]
    if cfg.get("on_policy") and cfg.on_policy.enabled:
        args += [f"on_policy.{k}={min(int(cfg.on_policy[k]), v)}" for k, v in ON_POLICY.items()]
        args.append(f"on_policy.max_new_tokens={_heldout_tokens(cfg, heldout_cap)}")
    if shrink:
        args += [*CPU, *CPU_STAGE.get(stage, [])]
        for reward, spec in (cfg.get("rewards") or {}).items():  # a length penalty's window
            if "soft_punish_cache" in (spec.get("kwargs") or {}):  # fits in 8 tokens
                args.append(f"rewards.{reward}.kwargs.soft_punish_cache=4")
    model = str(cfg.model.name_or_path)
    stands_in, build = [], None
    folder = model_folder(model, work, shrink)
    if folder is not None:  # a hub id: its architecture, random weights
        args.append(f"model.name_or_path={folder}")
        stands_in.append("random weights")
        build = model
    if not str(cfg.data.get("path", "")).startswith("synthetic:"):
        keep = [a for a in args if a.startswith(("data.max_samples=", "data.max_eval_samples="))]
        args = [a for a in args if not a.startswith("data.")]  # e.g. data.path=my_chats.jsonl
        args += ["data=arithmetic", "data.eval_fraction=0", *keep]  # it has its own eval split
        stands_in.append("synthetic data")
    if stage == "grpo":
        stands_in.append("HF generate, not vLLM")
    final = composed(stage, args)
    tr = final.trainer
    accumulation = int(tr.get("gradient_accumulation_steps", 1))
    on_policy = bool(final.get("on_policy") and final.on_policy.enabled)
    rounds = int(final.on_policy.rounds) if on_policy else 1
    # sequential decoding steps: what HF generate's time grows with at these batch sizes
    tokens = 0
    # a tool call and its answer are one more generation each; dynamic sampling's refills too
    tools = 1 + int(tr.get("max_tool_calling_iterations") or 0) if final.get("tools") else 1
    if stage == "grpo":
        refills = (1 + int(tr.get("dynamic_sampling_max_rounds", 4))
                   if tr.get("dynamic_sampling") else 1)
        tokens += steps * int(tr.max_completion_length) * tools * refills
    generates = final.heldout.rewards is not None and stage != "rm"
    if generates:  # held-out generation, before and after training
        calls = math.ceil(int(final.heldout.max_samples) / int(final.heldout.batch_size))
        tokens += 2 * calls * int(final.heldout.max_new_tokens) * tools
    if on_policy:  # each round samples its pairs
        calls = math.ceil(int(final.on_policy.prompts_per_round) / int(final.on_policy.batch_size))
        tokens += rounds * calls * int(final.on_policy.max_new_tokens)
    needs = "deepspeed" if launch and "zero" in Path(launch).name else None
    label = name if processes == 1 else f"{name}-{processes}proc"
    return dict(name=label, experiment=name, stage=stage, launch=launch, processes=processes,
                args=args, model=model, build=build, needs=needs, stands_in=stands_in,
                steps=steps, samples_per_step=int(tr.per_device_train_batch_size) * accumulation,
                microbatches=steps * accumulation * rounds, tokens=tokens,
                kind="real" if build else "tiny",
                completions=(f"{int(tr.num_generations)} x {int(tr.max_completion_length)} tokens"
                             if stage == "grpo" else ""),
                heldout=(f"{int(final.heldout.max_samples)} x "
                         + (f"{int(final.heldout.max_new_tokens)} tokens"
                            if generates else "rows")))


def architecture_gb(model: str) -> float:
    """bf16 weights of the shipped architecture for hub id `model`, in GB (for load/build time)."""
    from align.models.source import shipped_architecture
    from align.run.memory_estimate import model_shape

    return 2 * model_shape(str(shipped_architecture(model))).total / 1e9


def expected_s(c: dict) -> float:
    """Seconds one case should take on one H100, from the allowances above."""
    start = START_S["deepspeed" if c["needs"] == "deepspeed" else
                    "accelerate" if c["launch"] else "python"]
    load = LOAD_S_PER_GB * architecture_gb(c["model"]) if c["build"] else 0.0
    return (start + load + c["microbatches"] * MICROBATCH_S[c["kind"]]
            + c["tokens"] * TOKEN_S[c["kind"]] + SAVE_S)


def limit_of(seconds: float) -> int:
    return int(5 * math.ceil(MARGIN * seconds / 5))


def build_expected_s(models: list[str]) -> float:
    return BUILD_START_S + BUILD_S_PER_GB * sum(architecture_gb(m) for m in models)


def admit(cases: list[dict], budget: float | None, reserved: float) -> None:
    """Mark the cases whose limits fit in `budget` (after `reserved` seconds), in order."""
    left = None if budget is None else budget - reserved
    for c in cases:
        c["admitted"] = left is None or c["limit_s"] <= left
        if c["admitted"] and left is not None:
            left -= c["limit_s"]


def plan_text(cases: list[dict], build_limit: int, budget: float | None, gpus: int) -> str:
    rows = [f"plan for {gpus} GPU(s); per case: expected = start + load + micro-batches x "
            f"{MICROBATCH_S['real']}/{MICROBATCH_S['tiny']} s (real/tiny) + decoding steps x "
            f"{TOKEN_S['real']}/{TOKEN_S['tiny']} s + save {SAVE_S:g} s; limit = {MARGIN} x "
            "expected, rounded up to 5 s",
            "| case | stage, launch | processes | steps | micro-batches | GRPO completions | "
            "held-out | decoding steps | expected s | limit s | runs |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        rows.append(f"| {c['name']} | {c['stage']}, {c['launch'] or 'python'} | {c['processes']}"
                    f" | {c['steps']} | {c['microbatches']} | {c['completions']} | {c['heldout']}"
                    f" | {c['tokens']} | {c['expected_s']:.0f} | {c['limit_s']} | "
                    f"{'yes' if c['admitted'] else 'no: over the budget'} |")
    run = [c for c in cases if c["admitted"]]
    total = build_limit + sum(c["limit_s"] for c in run)
    rows.append("")
    rows.append(f"total of limits: model build {build_limit} s + "
                + " + ".join(str(c["limit_s"]) for c in run)
                + f" = {total} s (expected {sum(c['expected_s'] for c in run):.0f} s + build)"
                + (f"; budget {budget:g} s" if budget is not None else "; no budget"))
    return "\n".join(rows)


# ---------------------------------------------------------------- in the training processes
_PEAKS: dict = {"out": None, "rank": 0, "run": {}, "training": {}}


def _note_cuda_peaks(*kinds: str) -> None:
    import torch

    if not torch.cuda.is_available():
        return
    now = {"allocated": torch.cuda.max_memory_allocated(),
           "reserved": torch.cuda.max_memory_reserved()}
    for kind in kinds:
        for key, value in now.items():
            _PEAKS[kind][key] = max(_PEAKS[kind].get(key, 0), value)


def _write_peaks() -> None:
    if _PEAKS["out"] is None:
        return
    _note_cuda_peaks("run")
    Path(_PEAKS["out"], f"memory-rank{_PEAKS['rank']}.json").write_text(json.dumps(
        {"run": _PEAKS["run"] or None, "training": _PEAKS["training"] or None}))


class SmokeProbe(Timing):
    """benchmarks/timing.py's figures, and each rank's peak CUDA memory allocated and reserved
    over training alone and over the whole process (held-out measurement before and after
    included): `memory-rank<N>.json` in the run folder, written at the process's exit. Probe
    resets torch's peak counters when training begins, so the peak so far is kept first."""

    def on_train_begin(self, args, state, control, **kwargs):
        if _PEAKS["out"] is None:
            atexit.register(_write_peaks)
        _PEAKS["out"], _PEAKS["rank"] = args.output_dir, args.process_index
        _note_cuda_peaks("run")
        super().on_train_begin(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        _note_cuda_peaks("run", "training")
        super().on_train_end(args, state, control, **kwargs)


# ---------------------------------------------------------------- in the smoke's own process
def nvml_reader():
    """(read, source): read() gives each GPU's used memory in bytes, as NVML counts it (every
    process on the card, CUDA contexts included). pynvml when it is installed and finds a
    driver, else nvidia-smi on the PATH; (None, why) where neither can."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                   for i in range(pynvml.nvmlDeviceGetCount())]
        return (lambda: [pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles]), "pynvml"
    except Exception:  # not installed, or no driver (pynvml.NVMLError)
        pass
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        def read() -> list[int]:
            text = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,"
                                   "nounits"], capture_output=True, text=True, timeout=10).stdout
            return [int(float(v) * 2**20) for v in text.split()]  # MiB
        try:
            if read():
                return read, "nvidia-smi"
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return None, "not available: no pynvml and no working nvidia-smi"


class MemorySampler:
    """The highest used memory of each GPU while a case runs, read every `every` seconds."""

    def __init__(self, read, every: float = 0.25):
        self.read, self.every = read, every

    def __enter__(self):
        self.peak: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            try:
                now = self.read()
            except Exception:  # a reading missed (driver busy): the next one counts
                now = []
            if now:
                self.peak = ([max(a, b) for a, b in zip(self.peak, now, strict=True)]
                             if self.peak else now)
            if self._stop.wait(self.every):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def launch_command(c: dict, run_dir: Path) -> list[str]:
    """The experiment's command line as a user runs it: python, or `accelerate launch` with its
    launch file at `processes` processes; the run folder (and Hydra's) in `run_dir`."""
    script = str(REPO / "align" / f"{c['stage']}.py")
    if c["launch"]:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / c["launch"]), "--num_processes", str(c["processes"]), script]
    else:
        cmd = [sys.executable, script]
    return [*cmd, *c["args"], f"output_dir={run_dir}", f"hydra.run.dir={run_dir}/hydra"]


def planned_gib(c: dict, card: str) -> float | None:
    """The planner's peak per GPU for the same job and process count, on `card`."""
    cmd = [sys.executable, str(REPO / "align" / "plan.py"), "--stage", c["stage"], "--gpus",
           str(c["processes"]), "--card", card]
    if c["launch"]:
        cmd += ["--launch", str(REPO / c["launch"])]
    args = [a for a in c["args"] if not a.startswith("callbacks=")]
    try:
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True,
                              timeout=PLAN_LIMIT_S, cwd=REPO)
    except subprocess.TimeoutExpired:
        return None
    found = re.search(r"card:\s+([\d.]+) GiB", proc.stdout)
    return float(found.group(1)) if found else None


def _gib(value) -> float | None:
    return None if value is None else value / 2**30


def read_run(run_dir: Path) -> dict:
    """What a finished case left: probe/timing figures (the last round's, for on-policy DPO),
    held-out figures, peaks per rank, and whether final/ holds weights."""
    probes = sorted(run_dir.glob("**/timing.json"), key=lambda p: p.stat().st_mtime)
    if not probes:
        return {}
    found = json.loads(probes[-1].read_text())
    found = {k: found.get(k) for k in ("steps", "step_s_median", "params", "trainable",
                                       "final_loss", "device", "peak_mem_gib")}
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    found["heldout_before"] = metrics.get("heldout_before")
    found["heldout_after"] = metrics.get("heldout_after")
    ranks = [json.loads(p.read_text()) for p in sorted(run_dir.glob("**/memory-rank*.json"))]
    for scope in ("run", "training"):
        for key in ("allocated", "reserved"):
            values = [r[scope][key] for r in ranks if r.get(scope)]
            found[f"{key}_{scope}_gib"] = _gib(max(values)) if values else None
    found["final_saved"] = any(p.suffix in (".safetensors", ".bin")
                               for p in run_dir.glob("**/final/*"))
    return found


def run_case(c: dict, out: Path, work: Path, limit: int, read) -> dict:
    """One case under its limit: its log in out/logs/, its run folder in work/runs/."""
    run_dir = work / "runs" / c["name"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]), "PYTHONUNBUFFERED": "1"}
    idle = read() if read else None
    with MemorySampler(read or (lambda: [])) as sampler:
        rc, wall, pgid = run_limited(launch_command(c, run_dir), out / "logs" / f"{c['name']}.log",
                                     limit, env, out)
    result = {**c, "limit_s": limit, "wall_s": wall, "pgid": pgid,
              "nvml_idle_gib": [_gib(v) for v in idle] if idle else None,
              "nvml_peak_gib": [_gib(v) for v in sampler.peak] if sampler.peak else None}
    if rc is None:
        return {**result, "status": f"killed past its {limit} s limit"}
    found = read_run(run_dir)
    if rc != 0 or not found:
        log = (out / "logs" / f"{c['name']}.log").read_text(errors="replace")
        # the worker's own error, not the launcher's report that a worker failed
        errors = [line for line in log.splitlines()
                  if re.match(r"\w+(Error|Exception): ", line)
                  and not line.startswith("ChildFailedError")]
        what = errors[-1] if errors else " | ".join(log.strip().splitlines()[-3:])
        return {**result, "status": f"failed (rc={rc}): {what[:300]}"}
    result.update(found, status="ok")
    if found.get("step_s_median"):
        result["s_per_1000_samples"] = found["step_s_median"] * 1000 / c["samples_per_step"]
    return result


def _heldout_cell(r: dict) -> str:
    before, after = r.get("heldout_before") or {}, r.get("heldout_after") or {}
    keys = [k for k in (after or before) if "/" not in k]
    if not keys:
        return "not measured"
    key = keys[0]

    def fmt(d):
        return f"{d[key]:.3g}" if isinstance(d.get(key), (int, float)) else "-"

    return f"{key} {fmt(before)} -> {fmt(after)}"


def _mem_cell(*values) -> str:
    return " / ".join("n/a" if v is None else f"{v:.2f}" for v in values)


def table(results: list[dict], nvml_source: str) -> str:
    rows = [f"Peak GiB: torch allocated / reserved over the whole run (held-out included), over "
            f"training alone, and NVML used on the busiest card ({nvml_source}).", "",
            "| case | stage, launch (processes) | parameters | step s (median) | "
            "s per 1,000 samples | held-out before -> after | final/ | peak alloc / reserved, "
            "run | same, training | NVML used | planned GiB | alloc / plan | s / limit | "
            "stands in | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        how = f"{r['stage']}, {r['launch'] or 'python'} ({r['processes']})"
        if r["status"] != "ok":
            wall = f"{r['wall_s']:.0f} / {r['limit_s']}" if r.get("wall_s") is not None else ""
            rows.append(f"| {r['name']} | {how} | | | | | | | | | | | {wall} | | {r['status']} |")
            continue
        plan = r.get("planned_gib")
        alloc = r.get("allocated_training_gib")
        nvml = max(r["nvml_peak_gib"]) if r.get("nvml_peak_gib") else None
        rows.append(
            f"| {r['name']} | {how} | {r['params'] / 1e6:.1f}M | {r['step_s_median']:.3f} | "
            f"{r.get('s_per_1000_samples', 0):.1f} | {_heldout_cell(r)} | "
            f"{'saved' if r['final_saved'] else 'MISSING'} | "
            f"{_mem_cell(r['allocated_run_gib'], r['reserved_run_gib'])} | "
            f"{_mem_cell(alloc, r['reserved_training_gib'])} | {_mem_cell(nvml)} | "
            f"{plan if plan is not None else ''} | "
            f"{f'{alloc / plan:.2f}' if plan and alloc is not None else ''} | "
            f"{r['wall_s']:.0f} / {r['limit_s']} | {', '.join(r['stands_in'])} | ok |")
    return "\n".join(rows)


def parse_limits(items: list[str], names: list[str]) -> dict[str, int]:
    limits = {}
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in names or not seconds.isdigit():
            raise ValueError(f"--limit {item}: expected NAME=SECONDS with NAME one of "
                             f"{', '.join(names)}")
        limits[name] = int(seconds)
    return limits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu_smoke",
                        help="the table, the JSON and the logs (default: benchmarks/gpu_smoke)")
    parser.add_argument("--work", type=Path, default=None, help="the random models and the run "
                        "folders (GBs on a GPU; default: a new folder in the temp directory)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per case "
                        "(the first 2 are left out of the median)")
    parser.add_argument("--only", default="", help="comma-separated experiment names")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds of case limits admitted (with the build's); the script's "
                        "own composing adds a few seconds")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs to plan for (default: those present; --plan on a CPU: 1)")
    parser.add_argument("--card", default=None, help="card for the planner's figure (default: "
                        "the GPU's memory, else h100)")
    parser.add_argument("--limit", action="append", default=[], metavar="NAME=SECONDS",
                        help="set one case's limit")
    parser.add_argument("--plan", action="store_true",
                        help="print the cases, their limits and the total; run nothing")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check the mechanics on a CPU (shrunk models, float32, no budget)")
    parser.add_argument("--build", default=None, help=argparse.SUPPRESS)  # the build process
    opts = parser.parse_args(argv)
    started = time.perf_counter()
    opts.out = opts.out.resolve()
    # named now, made only when something runs (--plan leaves nothing behind)
    work = (opts.work or Path(tempfile.gettempdir())
            / f"align-gpu-smoke-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}").resolve()
    if opts.build is not None:
        build_models(opts.build.split(","), work, opts.cpu_smoke)
        return
    names = experiments()
    wanted = [n for n in opts.only.split(",") if n]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        parser.error(f"--only {','.join(unknown)}: no such experiment; choose from "
                     f"{', '.join(names)}")
    import torch

    gpus = opts.gpus if opts.gpus is not None else max(torch.cuda.device_count(), 1)
    try:
        limits = parse_limits(opts.limit, [*names, f"{TWO_PROCESS}-2proc"])
    except ValueError as e:
        parser.error(str(e))
    budget = None if opts.cpu_smoke else opts.budget
    steps = 2 if opts.cpu_smoke else opts.steps
    cases = [case(n, work, steps, opts.cpu_smoke) for n in (wanted or names)]
    if gpus >= 2 and TWO_PROCESS in (wanted or names):
        at = next(i for i, c in enumerate(cases) if c["experiment"] == TWO_PROCESS) + 1
        cases.insert(at, case(TWO_PROCESS, work, steps, opts.cpu_smoke, processes=2))
    for c in cases:
        c["expected_s"] = expected_s(c)
        c["limit_s"] = limits.get(c["name"], CPU_LIMIT_S if opts.cpu_smoke
                                  else limit_of(c["expected_s"]))
    for c in cases:  # an optional package missing: said, not failed (and nothing built for it)
        c["missing"] = c["needs"] if c["needs"] and find_spec(c["needs"]) is None else None
    builds = sorted({c["build"] for c in cases if c["build"] and not c["missing"]})
    build_limit = (CPU_LIMIT_S if opts.cpu_smoke
                   else limit_of(build_expected_s(builds)) if builds else 0)
    admit(cases, budget, build_limit)
    print(plan_text(cases, build_limit, budget, gpus), flush=True)
    print(f"the script's own work before the first case (composing every case's config): "
          f"{time.perf_counter() - started:.0f} s here", flush=True)
    if opts.plan:
        return

    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "logs").mkdir(exist_ok=True)
    card = opts.card or (f"{torch.cuda.get_device_properties(0).total_memory / 2**30:g}"
                         if torch.cuda.is_available() else "h100")
    read, source = nvml_reader()
    header = (f"{versions()}; {time.strftime('%Y-%m-%d')}; {steps} steps per case; planner "
              f"card {card}; run folders in {work}")
    print(header, flush=True)
    built_ok = True
    if builds:
        rc, wall, _ = run_limited(
            [sys.executable, str(Path(__file__).resolve()), "--build", ",".join(builds),
             "--out", str(opts.out), "--work", str(work),
             *(["--cpu-smoke"] if opts.cpu_smoke else [])],
            opts.out / "logs" / "build.log", build_limit, dict(os.environ), opts.out)
        built_ok = rc == 0
        print(f"model build: {'ok' if built_ok else 'killed' if rc is None else 'failed'} in "
              f"{wall:.0f} s (limit {build_limit} s)", flush=True)
    results = []
    with ThreadPoolExecutor(max_workers=2) as planner:  # beside the cases, on the CPU
        plans = {c["name"]: planner.submit(planned_gib, c, card) for c in cases
                 if c["admitted"] and not c["missing"] and (built_ok or not c["build"])}
        for c in cases:
            if not c["admitted"]:
                result = {**c, "status": f"not run: its {c['limit_s']} s limit is over the "
                          f"{budget:g} s budget"}
            elif c["missing"]:
                result = {**c, "status": f"skipped: {c['missing']} not installed"}
            elif c["build"] and not built_ok:
                result = {**c, "status": "skipped: the model build did not finish (logs/build.log)"}
            else:
                result = run_case(c, opts.out, work, c["limit_s"], read)
            results.append(result)
            print(f"{c['name']:28} {result['status']:.120}", flush=True)
        for r in results:
            if r["status"] == "ok" and r["name"] in plans:
                r["planned_gib"] = plans[r["name"]].result()
    write_report(opts.out, "experiment_smoke", header, table(results, source), results)


if __name__ == "__main__":
    main()
