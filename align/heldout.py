"""Held-out measurement around a training run: generate, score with rewards, average.

Every stage measures the model on held-out prompts before and after training (greedy
decoding, so the numbers are reproducible), with reward functions from the same registry GRPO
trains with. This is what tells a user whether the run did what it was meant to.

`heldout:` config section (schema: HeldoutConfig).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

log = logging.getLogger(__name__)


@dataclass
class HeldoutConfig:
    enabled: bool = True
    #: first N held-out prompts (None: all)
    max_samples: Optional[int] = 200
    max_new_tokens: int = 32
    batch_size: int = 64
    #: reward specs ({name: {fn, weight, kwargs}}); GRPO defaults to its training rewards
    rewards: dict[str, Any] = field(default_factory=dict)


def evaluate(model, tokenizer, dataset, reward_funcs, cfg: HeldoutConfig) -> dict[str, float]:
    """Mean of each reward over greedy completions of `dataset` (a prompt dataset).

    Rewards that return None for a sample (not applicable) leave it out of that mean; the
    number of scored samples per reward is reported as `<name>/n`.
    """
    from align.generation import generate_completions

    if cfg.max_samples is not None and len(dataset) > cfg.max_samples:
        dataset = dataset.select(range(cfg.max_samples))
    started = time.perf_counter()
    completions = generate_completions(
        model, tokenizer, list(dataset["prompt"]), max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
    )
    columns = {k: list(dataset[k]) for k in dataset.column_names if k != "prompt"}
    metrics: dict[str, float] = {}
    for fn in reward_funcs:
        scores = fn(completions=completions, prompts=list(dataset["prompt"]), **columns)
        scored = [float(s) for s in scores if s is not None]
        name = fn.__name__
        metrics[name] = sum(scored) / len(scored) if scored else float("nan")
        metrics[f"{name}/n"] = len(scored)
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
    metrics["completion_tokens_mean"] = sum(lengths) / max(len(lengths), 1)
    metrics["samples"] = len(completions)
    log.info("held-out evaluation of %d prompts took %.1fs", len(completions),
             time.perf_counter() - started)
    return metrics


def summary_lines(before: dict | None, after: dict | None, names: list[str]) -> list[str]:
    """Human-readable before -> after lines for each reward."""
    lines = []
    for name in names:
        b = before.get(name) if before else None
        a = after.get(name) if after else None
        n = int((after or before or {}).get("samples", 0))
        if b is not None and a is not None:
            lines.append(f"held-out {name}: {b:.3f} -> {a:.3f} ({a - b:+.3f}) on {n} prompts")
        elif a is not None:
            lines.append(f"held-out {name}: {a:.3f} on {n} prompts")
    return lines
