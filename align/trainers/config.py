"""trl's GRPOConfig with align's GRPO keys (`trainer.dynamic_sampling`, ...).

The `trainer:` section of a GRPO config is this class's schema: every trl field plus the ones
below, checked the same way (type, range) before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
