"""Length rewards: penalties only, never a bonus for being short or long (that invites hacking)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewards.registry import register
from rewards.text import completion_text

LENGTH_UNITS = ("chars", "tokens")


def _need_ids(
    name: str, completion_ids: Sequence[Sequence[int]] | None, n: int
) -> Sequence[Sequence[int]]:
    if completion_ids is None:
        raise ValueError(
            f"{name} measures tokens and needs completion_ids (GRPOTrainer passes them on every call)"
        )
    if len(completion_ids) != n:
        raise ValueError(
            f"{name}: {len(completion_ids)} completion_ids for {n} completions"
        )
    return completion_ids


def _check_overlong(
    max_completion_len: int | None = None, soft_punish_cache: int | None = None
) -> None:
    if not isinstance(max_completion_len, int) or max_completion_len <= 0:
        raise ValueError(
            "overlong needs kwargs.max_completion_len, a positive int (the trainer's max_completion_length)"
        )
    if (
        not isinstance(soft_punish_cache, int)
        or not 0 <= soft_punish_cache <= max_completion_len
    ):
        raise ValueError(
            f"overlong needs kwargs.soft_punish_cache, an int in [0, max_completion_len={max_completion_len}]"
        )


@register("overlong", check=_check_overlong)
def overlong(
    completions: Sequence[Any],
    max_completion_len: int,
    soft_punish_cache: int,
    completion_ids: Sequence[Sequence[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """DAPO's soft overlong punishment on the token count (trl's ``get_soft_overlong_punishment``):
    0 up to ``max_completion_len - soft_punish_cache`` tokens, then linearly down to -1 at
    ``max_completion_len``, and -1 beyond."""
    # Imported here, not at the top, to keep `import rewards` free of trl.
    from trl.rewards import get_soft_overlong_punishment

    ids = _need_ids("overlong", completion_ids, len(completions))
    return list(
        get_soft_overlong_punishment(max_completion_len, soft_punish_cache)(ids)
    )


def _check_band(
    max_len: int | None = None, min_len: int = 0, unit: str = "chars"
) -> None:
    if (
        not isinstance(max_len, int)
        or not isinstance(min_len, int)
        or not 0 <= min_len < max_len
    ):
        raise ValueError(
            f"length_band needs ints 0 <= min_len < max_len, got min_len={min_len!r}, max_len={max_len!r}"
        )
    if unit not in LENGTH_UNITS:
        raise ValueError(f"unit must be one of {LENGTH_UNITS}, got {unit!r}")


def _band_penalty(length: int, min_len: int, max_len: int) -> float:
    if length < min_len:
        return -(min_len - length) / min_len
    if length > max_len:
        return max(-1.0, -(length - max_len) / max_len)
    return 0.0


@register("length_band", check=_check_band)
def length_band(
    completions: Sequence[Any],
    max_len: int,
    min_len: int = 0,
    unit: str = "chars",
    completion_ids: Sequence[Sequence[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """0 inside ``[min_len, max_len]``; outside, minus the relative distance to the band edge,
    capped at -1: ``-(min_len - n) / min_len`` below, ``-min(1, (n - max_len) / max_len)`` above.
    ``unit`` is ``chars`` (of the completion text) or ``tokens`` (``completion_ids``)."""
    _check_band(max_len, min_len, unit)
    if unit == "tokens":
        lengths = [
            len(ids)
            for ids in _need_ids("length_band", completion_ids, len(completions))
        ]
    else:
        lengths = [len(completion_text(c)) for c in completions]
    return [_band_penalty(n, min_len, max_len) for n in lengths]


def _check_cosine(
    max_len: int | None = None,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    unit: str = "tokens",
) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= 0:
        raise ValueError(f"cosine_length needs kwargs.max_len, a positive int, got {max_len!r}")
    if not min_value_correct <= max_value_correct:
        raise ValueError("min_value_correct must be <= max_value_correct")
    if not min_value_wrong <= max_value_wrong:
        raise ValueError("min_value_wrong must be <= max_value_wrong")
    if unit not in LENGTH_UNITS:
        raise ValueError(f"unit must be one of {LENGTH_UNITS}, got {unit!r}")


@register("cosine_length", check=_check_cosine)
def cosine_length(
    completions: Sequence[Any],
    solution: Sequence[Any],
    max_len: int,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    unit: str = "tokens",
    completion_ids: Sequence[Sequence[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Correctness scaled by length on a cosine schedule ("Demystifying Long Chain-of-Thought
    Reasoning", appendix C.1; trl's ``get_cosine_scaled_reward``): a correct answer earns
    ``max_value_correct`` at length 0 falling to ``min_value_correct`` at ``max_len``; a wrong one
    ``min_value_wrong`` at length 0 rising to ``max_value_wrong`` at ``max_len`` (short wrong
    answers are punished most, so the model keeps exploring). Lengths past ``max_len`` count as
    ``max_len``. ``None`` where the gold ``solution`` is unparseable.

    Same formula as trl's, with correctness from :func:`rewards.math.accuracy` (trl's version calls
    trl's accuracy reward, whose shortcomings are listed in :mod:`rewards.math`); ``unit`` is
    ``tokens`` (``completion_ids``, as in trl) or ``chars``.
    """
    import math

    from rewards.math import accuracy

    _check_cosine(max_len, min_value_wrong, max_value_wrong, min_value_correct,
                  max_value_correct, unit)
    correct = accuracy(completions, solution)
    if unit == "tokens":
        lengths = [len(ids) for ids in _need_ids("cosine_length", completion_ids, len(completions))]
    else:
        lengths = [len(completion_text(c)) for c in completions]
    scores: list[float | None] = []
    for ok, n in zip(correct, lengths, strict=True):
        if ok is None:
            scores.append(None)
            continue
        cosine = math.cos(min(n / max_len, 1.0) * math.pi)
        low, high = (
            (min_value_correct, max_value_correct) if ok else (max_value_wrong, min_value_wrong)
        )
        scores.append(float(low + 0.5 * (high - low) * (1.0 + cosine)))
    return scores
