"""Held-out measurement around a training run: generate, score with rewards, average.

Every stage measures the model on held-out prompts before and after training (greedy
decoding, so the numbers are reproducible), with reward functions from the same registry GRPO
trains with. This is what tells a user whether the run did what it was meant to.

With `heldout.eval_steps=N` the same measurement also runs every N training steps
(align.measure.callbacks.HeldoutCallback): the figures go to W&B, the trainer's log history and
metrics.json (`heldout_during`), with a few sample completions as a W&B table.

`heldout:` config section (schema: HeldoutConfig).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldoutConfig:
    enabled: bool = True
    #: first N held-out prompts (None: all)
    max_samples: int | None = 200
    max_new_tokens: int = 32
    batch_size: int = 64
    #: reward specs ({name: {fn, weight, kwargs}}); empty: the training rewards (GRPO's); null:
    #: none (data without answers: SFT's loss and DPO's preference figures only, no generation)
    rewards: dict[str, Any] | None = field(default_factory=dict)
    #: also measure every N training steps (0: only before and after training)
    eval_steps: int = 0
    #: completions logged as a W&B table at each periodic measurement
    log_samples: int = 8


def check_heldout_config(cfg: HeldoutConfig) -> list[str]:
    errors = []
    for key, low in (("max_samples", 1), ("max_new_tokens", 1), ("batch_size", 1),
                     ("eval_steps", 0), ("log_samples", 0)):
        value = getattr(cfg, key)
        if value is not None and value < low:
            what = "a positive integer" if low else "an integer >= 0"
            errors.append(f"heldout.{key}={value}: must be {what}"
                          + (" (or null: all)" if key == "max_samples" else "")
                          + (" (0: off)" if key == "eval_steps" else ""))
    return errors


def evaluate(model, tokenizer, dataset, reward_funcs, cfg: HeldoutConfig,
             tools: tuple = (), max_tool_iterations: int | None = None,
             environment=None, place=None) -> dict[str, float]:
    """Mean of each reward over greedy completions of `dataset` (a prompt dataset).

    Rewards that return None for a sample (not applicable) leave it out of that mean; the
    number of scored samples per reward is reported as `<name>/n`. With `tools` (GRPO's), the
    completions are multi-turn: the tools run as in training (align.measure.agent), and the
    figures add `tool_call_rate` (samples that called a tool), `tool_calls_mean` and
    `tool_failure_rate` (calls that failed: unknown tool, bad arguments, the tool raised). With
    an `environment` (GRPO's), each prompt gets its own instance as in training, its methods
    as tools, and its `get_reward()` is one more figure, named after its class as trl names it.

    `place` (align.device.Placement; None: this process alone) says which ranks generate: with
    ranks="all" every rank of the launch calls this, generates its share of the prompts (in
    lockstep where `place.synced`), and the main process scores them all; the other ranks get
    empty figures.
    """
    return evaluate_with_samples(model, tokenizer, dataset, reward_funcs, cfg, tools,
                                 max_tool_iterations, environment, place)[0]


def evaluate_with_samples(model, tokenizer, dataset, reward_funcs, cfg: HeldoutConfig,
                          tools: tuple = (), max_tool_iterations: int | None = None,
                          environment=None, place=None) -> tuple[dict[str, float], list[dict]]:
    """`evaluate`, plus one row per prompt: prompt, completion, solution, each reward."""
    from align.measure.generation import generate_completions, rank_and_world, share_across_ranks

    if cfg.max_samples is not None and len(dataset) > cfg.max_samples:
        dataset = dataset.select(range(cfg.max_samples))
    started = time.perf_counter()
    images = list(dataset["images"]) if "images" in dataset.column_names else None
    metrics: dict[str, float] = {}
    completion_ids = None
    ranks = place.ranks if place is not None else "main"
    synced = place.synced if place is not None else None
    if tools or environment is not None:
        from align.measure.agent import environment_reward_figures, generate_with_tools

        def roll(rows):
            out = generate_with_tools(model, tokenizer, [r["prompt"] for r in rows], tools,
                                      max_new_tokens=cfg.max_new_tokens,
                                      batch_size=cfg.batch_size,
                                      max_iterations=max_tool_iterations,
                                      environment=environment, rows=rows,
                                      synced=bool(synced))
            return list(zip(out.completions, out.completion_ids, out.calls, out.failures,
                            out.environment_rewards))

        per_prompt = share_across_ranks(list(dataset), roll, ranks)
        rollouts = ToolRolloutsView(*(map(list, zip(*per_prompt)) if per_prompt else ([],) * 5))
        metrics.update(environment_reward_figures(rollouts))
        completions = rollouts.completions
        completion_ids = [list(ids) for ids in rollouts.completion_ids]
        calls = sum(rollouts.calls)
        metrics["tool_call_rate"] = sum(1 for c in rollouts.calls if c) / max(len(completions), 1)
        metrics["tool_calls_mean"] = calls / max(len(completions), 1)
        metrics["tool_failure_rate"] = sum(rollouts.failures) / calls if calls else 0.0
    else:
        def complete(items):
            return generate_completions(
                model, tokenizer, [p for p, _ in items], max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.batch_size, synced=synced,
                images=[i for _, i in items] if images is not None else None)

        completions = share_across_ranks(
            list(zip(dataset["prompt"], images or [None] * len(dataset))), complete, ranks)
    if ranks == "all" and rank_and_world()[0] != 0:
        return {}, []  # the main process scores: rewards may call judges or run code
    columns = {k: list(dataset[k]) for k in dataset.column_names if k != "prompt"}
    rows = [{"prompt": p, "completion": c, "solution": s}
            for p, c, s in zip(dataset["prompt"], completions,
                               columns.get("solution", [None] * len(completions)))]
    if completion_ids is None:
        completion_ids = token_ids(tokenizer, completions)
    for fn in reward_funcs:
        # called as GRPOTrainer calls it: token-based rewards (overlong, length) read the ids
        scores = fn(completions=completions, prompts=list(dataset["prompt"]),
                    completion_ids=completion_ids, **columns)
        scored = [float(s) for s in scores if s is not None]
        name = fn.__name__
        if scored:
            metrics[name] = sum(scored) / len(scored)
        else:  # no held-out row carries what this reward scores (free-form chat: no answer)
            log.info("held-out %s: no prompt has what it scores (e.g. an answer); left out", name)
        metrics[f"{name}/n"] = len(scored)
        for row, score in zip(rows, scores):
            row[name] = score
    lengths = [len(ids) for ids in completion_ids]
    metrics["completion_tokens_mean"] = sum(lengths) / max(len(lengths), 1)
    metrics["samples"] = len(completions)
    log.info("held-out evaluation of %d prompts took %.1fs", len(completions),
             time.perf_counter() - started)
    return metrics, rows


def token_ids(tokenizer, completions: list) -> list[list[int]]:
    """The token ids of text completions (a VLM's processor holds its tokenizer), for rewards
    that count tokens where the generated ids are not at hand."""
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return [text_tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]


@dataclass
class ToolRolloutsView:
    """The per-prompt parts of align.measure.agent.ToolRollouts that held-out figures read,
    put back together from the ranks' shares."""

    completions: list
    completion_ids: list
    calls: list
    failures: list
    environment_rewards: list


def summary_lines(before: dict | None, after: dict | None, names: list[str]) -> list[str]:
    """Human-readable before -> after lines for each reward."""
    lines = []
    for name in names:
        b = before.get(name) if before else None
        a = after.get(name) if after else None
        figures = after or before or {}
        if name.startswith(("preference_", "implicit_reward")):
            n, what = int(figures.get("preference_pairs", 0)), "pairs"
        elif name in ("pairwise_accuracy", "reward_margin"):
            n, what = int(figures.get("reward_pairs", 0)), "pairs"
        else:
            n = int(figures.get(f"{name}/n", figures.get("samples", 0)))
            what = "rows" if name == "loss" else "prompts"
        if b is not None and a is not None:
            lines.append(f"held-out {name}: {b:.3f} -> {a:.3f} ({a - b:+.3f}) on {n} {what}")
        elif a is not None:
            lines.append(f"held-out {name}: {a:.3f} on {n} {what}")
    return lines
