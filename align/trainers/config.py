"""trl's GRPOConfig and DPOConfig with align's keys (`trainer.dynamic_sampling`, ...,
`trainer.ref_logps_cache`).

The `trainer:` section of a GRPO or DPO config is its class's schema: every trl field plus the ones
below, checked the same way (type, range) before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig as TrlDPOConfig
from trl import GRPOConfig as TrlGRPOConfig


@dataclass
class GRPOConfig(TrlGRPOConfig):
    dynamic_sampling: bool = field(default=False, metadata={"help": (
        "DAPO's dynamic sampling: groups whose completions all got the same reward (zero "
        "advantage, no gradient) are dropped and replaced by groups from fresh prompts, "
        "generated until the batch is full or dynamic_sampling_max_rounds is reached.")})
    dynamic_sampling_max_rounds: int = field(default=4, metadata={"help": (
        "At most this many extra generation rounds per batch with dynamic_sampling; a batch "
        "still short after them keeps some zero-spread groups (they add no gradient).")})


@dataclass
class DPOConfig(TrlDPOConfig):
    ref_logps_cache: bool = field(default=True, metadata={"help": (
        "With precompute_ref_log_probs: keep the reference log-probs under $ALIGN_CACHE/ref_logps, "
        "keyed by the reference weights, the tokenised rows and the collator and forward "
        "settings, so that every later run or sweep candidate sharing them reads them instead of "
        "running the reference forward again (align.trainers.dpo). false: trl's own cache only "
        "(a temporary file per run).")})
