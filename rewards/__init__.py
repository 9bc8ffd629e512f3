"""Reward functions for GRPO, and the registry that turns the ``rewards:`` config into trl's
``reward_funcs`` / ``reward_weights``.

Contract: a reward is a pure, module-level (hence picklable) function
``fn(completions, **columns) -> list[float | None]``. ``completions`` are strings or message lists
(trl passes message lists when prompts are conversational); dataset columns arrive as keyword
arguments, along with ``prompts``, ``completion_ids``, ``trainer_state``, ``log_extra`` and
``log_metric``, so every reward takes ``**kwargs`` and ignores what it does not use. ``None``
means "not applicable" (trl turns it into NaN and leaves it out of the mean).

Built-ins: ``accuracy`` (math answers), ``think_format``, ``tag_format``, ``regex_format``
(format), ``overlong``, ``length_band``, ``cosine_length`` (length), ``repetition``, ``code_tests``
(code run in :mod:`rewards.sandbox`), ``json_schema``, ``tool_calls`` (structured output),
``reward_model``, ``llm_judge``. Your own reward: reference it as ``"my_pkg.my_rewards:fn"``.

Each config entry is ``{fn, weight, kwargs, on_error}``; ``on_error`` (``raise``, ``none``,
``zero``) decides what a reward that raises does (see :class:`BoundReward`). Test rewards on
completions before training with the bench: ``python -m rewards score FILE rewards=math``
(``python -m rewards --help``; docs/rewards.md).

This package does not import ``align``, and importing it does not import torch, trl or sympy.
"""

from rewards.registry import (
    ERROR_POLICIES,
    REGISTRY,
    BoundReward,
    RewardError,
    RewardConfigError,
    RewardImportError,
    RewardUnavailableError,
    UnknownRewardError,
    build_rewards,
    check_reward_kwargs,
    register,
    resolve,
)
from rewards.text import completion_text

# Imported for their @register side effect; after the registry so they can import it.
from rewards import code, formats, judge, length, math, model, repetition, structured  # isort: skip

__all__ = [
    "ERROR_POLICIES",
    "REGISTRY",
    "BoundReward",
    "RewardError",
    "RewardConfigError",
    "RewardImportError",
    "RewardUnavailableError",
    "UnknownRewardError",
    "build_rewards",
    "check_reward_kwargs",
    "code",
    "completion_text",
    "formats",
    "judge",
    "length",
    "math",
    "model",
    "repetition",
    "structured",
    "register",
    "resolve",
]
