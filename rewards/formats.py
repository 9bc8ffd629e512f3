"""Format rewards: does the completion have the required shape?"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from rewards.registry import register
from rewards.text import completion_text

_TAG_NAME = re.compile(r"[A-Za-z_][\w\-.]*")
REGEX_MODES = ("fullmatch", "search")


@register("think_format")
def think_format(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 if the completion starts with ``<think>...</think>`` (one ``<think>`` only), else 0.0.

    trl's ``think_format_reward``, fed through :func:`completion_text` because trl's version reads
    ``completion[0]["content"]`` and so fails on plain-string completions.
    """
    # Imported here, not at the top, to keep `import rewards` free of trl.
    from trl.rewards import think_format_reward

    return list(
        think_format_reward([[{"content": completion_text(c)}] for c in completions])
    )


def _check_tags(
    tags: Sequence[str] = ("think", "answer"), partial: float = 0.5
) -> None:
    if isinstance(tags, str) or not tags:
        raise ValueError(f"tags must be a non-empty list of tag names, got {tags!r}")
    bad = [t for t in tags if not isinstance(t, str) or not _TAG_NAME.fullmatch(t)]
    if bad:
        raise ValueError(f"tags {bad} are not valid tag names")
    if len(set(tags)) != len(tags):
        raise ValueError(f"tags must be distinct, got {list(tags)}")
    if not 0.0 <= partial <= 1.0:
        raise ValueError(f"partial must be in [0, 1], got {partial}")


@functools.lru_cache(maxsize=64)
def _structure(tags: tuple[str, ...]) -> re.Pattern[str]:
    body = r"\s*".join(rf"<{re.escape(t)}>.*?</{re.escape(t)}>" for t in tags)
    return re.compile(rf"\s*{body}\s*", re.DOTALL)


def _tag_score(text: str, tags: tuple[str, ...], partial: float) -> float:
    paired = [
        t
        for t in tags
        if text.count(f"<{t}>") == 1
        and text.count(f"</{t}>") == 1
        and text.index(f"<{t}>") < text.index(f"</{t}>")
    ]
    if len(paired) == len(tags) and _structure(tags).fullmatch(text):
        return 1.0
    return partial * len(paired) / len(tags)


@register("tag_format", check=_check_tags)
def tag_format(
    completions: Sequence[Any],
    tags: Sequence[str] = ("think", "answer"),
    partial: float = 0.5,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 for exactly ``<t1>...</t1> <t2>...</t2> ...`` (each tag once, in order, only whitespace
    between and around); otherwise ``partial * (tags present once as an ordered pair) / len(tags)``,
    so a model that gets part of the shape still sees a gradient (set ``partial: 0`` for strict)."""
    key = tuple(tags)
    return [_tag_score(completion_text(c), key, partial) for c in completions]


def _check_regex(pattern: str | None = None, mode: str = "fullmatch") -> None:
    if not isinstance(pattern, str):
        raise TypeError(
            "regex_format needs kwargs.pattern, a regular expression string"
        )
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(
            f"pattern {pattern!r} is not a valid regular expression: {e}"
        ) from e
    if mode not in REGEX_MODES:
        raise ValueError(f"mode must be one of {REGEX_MODES}, got {mode!r}")


@functools.lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern[str]:
    # DOTALL: completions are multi-line and "." should cross lines; use (?-s:...) to opt out.
    return re.compile(pattern, re.DOTALL)


@register("regex_format", check=_check_regex)
def regex_format(
    completions: Sequence[Any], pattern: str, mode: str = "fullmatch", **kwargs: Any
) -> list[float | None]:
    """1.0 if the completion matches ``pattern`` (``mode``: ``fullmatch`` the whole text, or
    ``search`` anywhere), else 0.0. The pattern is compiled with ``re.DOTALL``."""
    _check_regex(pattern, mode)
    compiled = _compile(pattern)
    match = compiled.fullmatch if mode == "fullmatch" else compiled.search
    return [1.0 if match(completion_text(c)) else 0.0 for c in completions]
