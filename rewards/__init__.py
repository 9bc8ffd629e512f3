"""Reward functions for GRPO, and the registry that turns the ``rewards:`` config into trl's
``reward_funcs`` / ``reward_weights``.

Contract: a reward is a pure, module-level (hence picklable) function
``fn(completions, **columns) -> list[float | None]``. ``completions`` are strings or message lists
(trl passes message lists when prompts are conversational); dataset columns arrive as keyword
arguments, along with ``prompts``, ``completion_ids``, ``trainer_state``, ``log_extra`` and
``log_metric``, so every reward takes ``**kwargs`` and ignores what it does not use. ``None``
means "not applicable" (trl turns it into NaN and leaves it out of the mean).

Built-ins: ``accuracy``, ``think_format``, ``tag_format``, ``regex_format``, ``overlong``,
``length_band``. Your own reward: reference it as ``"my_pkg.my_rewards:fn"``.

This package does not import ``align``, and importing it does not import torch, trl or sympy.
"""

from rewards.registry import (
    REGISTRY,
    BoundReward,
    RewardConfigError,
    RewardImportError,
    UnknownRewardError,
    build_rewards,
    check_reward_kwargs,
    register,
    resolve,
)
from rewards.text import completion_text

# Imported for their @register side effect; after the registry so they can import it.
from rewards import formats, length, math  # isort: skip

__all__ = [
    "REGISTRY",
    "BoundReward",
    "RewardConfigError",
    "RewardImportError",
    "UnknownRewardError",
    "build_rewards",
    "check_reward_kwargs",
    "completion_text",
    "formats",
    "length",
    "math",
    "register",
    "resolve",
]
