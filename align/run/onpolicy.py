"""The `on_policy:` section of DPO: iterative on-policy DPO, checked before anything loads.

With `on_policy.enabled=true`, `align/dpo.py` trains in rounds (align.run.rounds): each round
samples `samples_per_prompt` completions for `prompts_per_round` fresh training prompts from the
current policy, scores them with the `rewards:` section, pairs the best against the worst (and
the next-worst, `pairs_per_prompt`; align.data.select) and trains DPO from the previous round's
weights, with the previous round's policy as the reference. `enabled=false` (the default) is
offline DPO on the data as given, one round, unchanged.

This module imports neither torch nor trl: the spec reads it in its cheap pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from align.data.select import PAIR_TIES

#: adapter methods whose weights merge into the base after a round (the next round's base and
#: reference); full fine-tuning needs no merge
MERGEABLE = ("none", "lora", "dora", "rslora", "pissa", "loftq")


@dataclass(frozen=True)
class OnPolicyConfig:
    #: false: offline DPO on the data as given (one round)
    enabled: bool = False
    #: rounds of sample -> score -> pair -> DPO, each from the previous round's weights
    rounds: int = 1
    #: fresh training prompts sampled in each round (round k takes the k-th slice)
    prompts_per_round: int = 256
    #: completions drawn per prompt; chosen = the best-scored, rejected = the worst
    samples_per_prompt: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 16
    #: prompts per generate call
    batch_size: int = 64
    #: a pair is kept when chosen's reward exceeds rejected's by at least this (and by > 0)
    min_margin: float = 0.0
    #: pairs made per prompt: the best sample against the worst, then the next-worst distinct
    #: ones (each under the margin rule)
    pairs_per_prompt: int = 1
    #: among samples of equal reward: "first" drawn, or "most_drawn" (the policy's likeliest
    #: answer: the rejected side is its most frequent mistake)
    ties: str = "first"


def check_on_policy_config(cfg: OnPolicyConfig, plain: Mapping[str, Any], stage: str) -> list[str]:
    """The section's values and what they need from the rest of the config (`plain`)."""
    if "on_policy" in plain and stage != "dpo":
        return [f"'on_policy' applies to DPO (align/dpo.py); remove it from this {stage} config"]
    errors = []
    for key, low in (("rounds", 1), ("prompts_per_round", 1), ("samples_per_prompt", 2),
                     ("max_new_tokens", 1), ("batch_size", 1), ("pairs_per_prompt", 1)):
        value = getattr(cfg, key)
        if isinstance(value, bool) or value < low:
            why = " (the best and the worst of each prompt's samples make a pair)" \
                if key == "samples_per_prompt" else ""
            errors.append(f"on_policy.{key}={value}: must be an integer >= {low}{why}")
    if not cfg.temperature > 0:
        errors.append(f"on_policy.temperature={cfg.temperature}: must be > 0 (samples must "
                      "differ for a pair to be made)")
    if cfg.min_margin < 0:
        errors.append(f"on_policy.min_margin={cfg.min_margin}: must be >= 0")
    if cfg.ties not in PAIR_TIES:
        errors.append(f"on_policy.ties={cfg.ties!r}: choose one of {', '.join(PAIR_TIES)}")
    if errors:
        return errors
    if not cfg.enabled:
        if cfg.rounds > 1:
            errors.append(f"on_policy.rounds={cfg.rounds} needs on_policy.enabled=true (offline "
                          "DPO trains once on the data as given)")
        return errors
    if not plain.get("rewards"):
        errors.append("on_policy.enabled=true scores the samples with the 'rewards' section, "
                      "which is empty: e.g. rewards=arithmetic, or +rewards.mine.fn=pkg.mod:fn")
    method = (plain.get("peft") or {}).get("method", "none")
    if method not in MERGEABLE or (plain.get("peft") or {}).get("quantization"):
        errors.append(f"on_policy.enabled=true merges each round's adapter into the next round's "
                      f"base; peft={method} cannot be merged exactly: use peft=lora or peft=none")
    if (plain.get("model") or {}).get("kind", "causal_lm") != "causal_lm":
        errors.append("on_policy.enabled=true samples text completions: it works with text "
                      "models (model.kind=causal_lm)")
    if plain.get("resume"):
        errors.append("resume does not apply to on-policy rounds: start the run again")
    return errors
