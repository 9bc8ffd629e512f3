"""Repetition penalty: punish completions that repeat the same n-grams (degenerate loops, and a
common way to game length- or format-shaping rewards)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rewards.registry import register
from rewards.text import completion_text

REPETITION_UNITS = ("tokens", "words")
_WORD = re.compile(r"\S+")


def _check_repetition(ngram_size: int = 3, max_penalty: float = -1.0, unit: str = "tokens") -> None:
    if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size < 1:
        raise ValueError(f"ngram_size must be a positive int, got {ngram_size!r}")
    if isinstance(max_penalty, bool) or not isinstance(max_penalty, (int, float)) or max_penalty > 0:
        raise ValueError(f"max_penalty must be a number <= 0, got {max_penalty!r}")
    if unit not in REPETITION_UNITS:
        raise ValueError(f"unit must be one of {REPETITION_UNITS}, got {unit!r}")


def _word_ids(text: str) -> list[int]:
    vocab: dict[str, int] = {}
    return [vocab.setdefault(w.lower(), len(vocab)) for w in _WORD.findall(text)]


@register("repetition", check=_check_repetition)
def repetition(
    completions: Sequence[Any],
    ngram_size: int = 3,
    max_penalty: float = -1.0,
    unit: str = "tokens",
    completion_ids: Sequence[Sequence[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """``(1 - unique n-grams / n-grams) * max_penalty``: 0 without repeats, down to
    ``max_penalty`` for a fully repetitive completion; 0 for completions shorter than
    ``ngram_size``. trl's ``get_repetition_penalty_reward`` computes it, over token ids
    (``unit: tokens``, GRPOTrainer passes them) or over lower-cased whitespace-separated words
    (``unit: words``, as open-r1 does; no tokenizer needed)."""
    # Imported here, not at the top, to keep `import rewards` free of trl.
    from trl.rewards import get_repetition_penalty_reward

    _check_repetition(ngram_size, max_penalty, unit)
    if unit == "tokens":
        if completion_ids is None:
            raise ValueError(
                "repetition with unit=tokens needs completion_ids (GRPOTrainer passes them; the "
                "bench computes them with --tokenizer); or set unit: words"
            )
        ids = completion_ids
    else:
        ids = [_word_ids(completion_text(c)) for c in completions]
    return list(get_repetition_penalty_reward(ngram_size, float(max_penalty))(completion_ids=ids))
