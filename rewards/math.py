"""Math answer accuracy: extract the final answer, compare it with the gold ``solution`` column.

Why not trl's ``trl.rewards.accuracy_reward`` as is: it reads ``completion[0]["content"]`` (fails on
plain-string completions and picks the wrong message with tool calls), it only extracts answers in
LaTeX with an anchor (``\\boxed{}``/``$...$``), so ``<answer>42</answer>`` or "... so 42 apples" score
0, and it parses the same gold once per completion with no fast path. Its ``None`` semantics
(unparseable gold -> ``None``) are kept here.

Cost (2 CPU cores, math-verify 0.9): parse ~0.2 ms for an integer and ~1 ms for a LaTeX fraction,
verify ~0.03 ms. GRPO scores ~512 completions a step, so when both the extracted answer and the gold
are plain integers/decimals they are compared directly (~µs), and every math-verify result is
cached by string (a group of completions shares a gold and often an answer).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from rewards.registry import register
from rewards.text import completion_text

# Timeouts guard sympy against pathological inputs. math-verify implements them with
# signal.alarm, which raises in any thread but the main one (e.g. a reward run from a thread
# pool), so they are disabled off the main thread, as trl does.
PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5

_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# A plain fraction counts as one number ("1/2", not "2"); thousands separators only in groups of
# three, so "1,2,3" reads as three numbers.
_NUMBER = re.compile(
    r"-?\d+/\d+|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+"
)
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced (``\\boxed{\\frac{1}{2}}``)."""
    matches = list(_BOXED_OPEN.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None  # unbalanced: the completion was cut off inside the box


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last ``\\boxed{}``, else the last ``<answer>`` tag,
    else the last number (``1/2`` and ``1,234`` are numbers); ``None`` if there is none. Thousands separators are removed from a plain
    number (``1,234`` -> ``1234``) so the fast path and math-verify see the same string."""
    boxed = _last_boxed(text)
    if boxed is not None:
        answer = boxed.strip()
    else:
        tags = _ANSWER_TAG.findall(text)
        if tags:
            answer = tags[-1].strip()
        else:
            numbers = _NUMBER.findall(text)
            if not numbers:
                return None
            answer = numbers[-1]
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer or None


def _timeouts() -> tuple[int | None, int | None]:
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None


@functools.lru_cache(maxsize=65536)
def _parse(text: str) -> tuple[Any, ...]:
    from math_verify import parse  # lazy: sympy costs ~0.3 s to import

    return tuple(parse(text, parsing_timeout=_timeouts()[0]))


@functools.lru_cache(maxsize=65536)
def _verify(gold: str, answer: str) -> bool:
    from math_verify import verify

    return bool(
        verify(list(_parse(gold)), list(_parse(answer)), timeout_seconds=_timeouts()[1])
    )


def fast_equal(gold: str, answer: str) -> bool | None:
    """Compare two plain numbers without math-verify; ``None`` when math-verify must decide.

    Returns the same result as math-verify (tested on a table of cases): equal values are equal,
    distinct integers are distinct. Distinct decimals are left to math-verify, which rounds floats
    to 6 places with rules not worth copying (0.1234567 == 0.1234568, but 100 != 99.9999999).
    """
    if not (_PLAIN_NUMBER.fullmatch(gold) and _PLAIN_NUMBER.fullmatch(answer)):
        return None
    if "." not in gold and "." not in answer:
        return int(gold) == int(answer)
    if Decimal(gold) == Decimal(answer):
        return True
    return None


def _gold_text(gold: Any) -> str | None:
    if gold is None or isinstance(gold, bool):
        return None
    if isinstance(gold, (int, float)):  # a numeric dataset column
        return str(gold)
    text = str(gold)
    if "####" in text:  # GSM8K-style gold: worked solution, then "#### <final answer>"
        text = text.rsplit("####", 1)[1].replace(",", "")
    return text.strip()


def score_answer(gold: Any, text: str) -> float | None:
    """1.0/0.0 for one completion text against one gold; ``None`` if the gold is unparseable."""
    gold_str = _gold_text(gold)
    if not gold_str:
        return None
    if not _PLAIN_NUMBER.fullmatch(gold_str) and not _parse(gold_str):
        return None  # checked before the answer so an unparseable gold is None for every completion
    answer = extract_answer(text)
    if answer is None:
        return 0.0
    fast = fast_equal(gold_str, answer)
    if fast is not None:
        return float(fast)
    return float(_verify(gold_str, answer))


@register("accuracy")
def accuracy(
    completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any
) -> list[float | None]:
    """1.0 if the completion's final answer equals the ``solution`` column, else 0.0.

    The answer is the last ``\\boxed{}``, else the last ``<answer>...</answer>``, else the last number.
    Equality is math-verify's (``1/2`` == ``0.5`` == ``\\frac{1}{2}``), with a numeric fast path for
    plain numbers. A gold that math-verify cannot parse gives ``None`` (not applicable).
    """
    return [
        score_answer(gold, completion_text(c))
        for c, gold in zip(completions, solution, strict=True)
    ]
