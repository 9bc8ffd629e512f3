"""Math answer accuracy: extract the final answer, compare it with the gold ``solution`` column.

Why not trl's ``trl.rewards.accuracy_reward`` as is: it reads ``completion[0]["content"]`` (fails on
plain-string completions and picks the wrong message with tool calls), it only extracts answers in
LaTeX with an anchor (``\\boxed{}``/``$...$``), so ``<answer>42</answer>`` or "... so 42 apples" score
0, and it parses the same gold once per completion with no fast path. Its ``None`` semantics
(unparseable gold -> ``None``) are kept here.

Which answer counts, in this order (the first kind present decides; after a closed ``</think>``,
only the text after it is read, unless it has no answer at all):

1. ``\\boxed{...}`` / ``\\fbox{...}``;
2. ``<answer>...</answer>``;
3. an explicit answer phrase: "the (final) answer is X", "Answer: X", GSM8K's "#### X";
4. otherwise the last number of the text.

A completion is a policy's bet, and a hedge is not an answer: **every** answer of the deciding kind
must equal the gold (``\\boxed{3} or \\boxed{4}`` scores 0 against 3, so does "the answer is 3 ...
no, the answer is 4"; the same answer given twice counts), and a bare list of numbers ("1 2 3 ...
100", "3, 4 or 5") is no answer at all. Numbers: a Unicode minus (``−3``) is a minus, ``1,000`` is a
thousand, ``1e3`` is 1000, ``50%`` equals both 0.5 and 50 (math-verify's percent rule).

Equality is math-verify's (``1/2`` == ``0.5`` == ``\\frac{1}{2}``). Cost (2 CPU cores,
math-verify 0.9): parse ~0.2-0.5 ms, verify ~0.03 ms. GRPO scores ~512 completions a step, so when
both the extracted answer and the gold are plain integers/decimals they are compared directly (~µs),
and every math-verify result is cached by string (a group of completions shares a gold and often an
answer).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
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
# "the answer is X", "final answer: X", "Answer = X", GSM8K's "#### X": X runs to the end of the
# sentence (a period before a space or the end of the line; "3.5" keeps its point).
_PHRASE = re.compile(
    r"(?:\b(?:final\s+answer|answer)\b(?:\s+(?:is|was|would\s+be|will\s+be)\b\s*:?|\s*[:=])|####)"
    r"[ \t]*(?P<rest>[^\n]*?)(?=\.(?:\s|$)|\n|$)",
    re.IGNORECASE,
)
# Minus signs that are not ASCII: the mathematical minus, the small and the fullwidth hyphen-minus.
_MINUS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})
# One number: a fraction ("1/2"), with thousands separators only in groups of three (so "1,2,3"
# reads as three numbers), scientific ("1e3", "2.5E-3"), a percentage ("50%").
_NUMBER = re.compile(
    r"-?\d+/\d+|-?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?|-?\d+(?:\.\d+)?(?:[eE][+-]?\d{1,3}\b)?%?|-?\.\d+%?"
)
# What may stand between the numbers of a list: "1 2 3", "1, 2, 3", "3 or 4", "1 ... 100".
_LIST_GAP = re.compile(r"[\s,;]*(?:\.{2,}|…|\bor\b|\band\b)?[\s,;]*")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d{1,3}")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _all_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, braces balanced (``\\boxed{\\frac{1}{2}}``); a box cut off
    before it closes (a truncated completion) is not an answer."""
    found = []
    for match in _BOXED_OPEN.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:i])
                    break
    return found


def _normalise(answer: str) -> str:
    """One spelling per number: ``1,234`` -> ``1234``, ``1e3`` -> ``1000``, ``50\\%`` -> ``50%``."""
    answer = answer.strip().replace("\\%", "%")
    percent = answer.endswith("%")
    core = answer[:-1].strip() if percent else answer
    if _THOUSANDS.fullmatch(core):
        core = core.replace(",", "")
    elif _SCIENTIFIC.fullmatch(core):
        try:
            core = format(Decimal(core).normalize(), "f")
        except InvalidOperation:
            pass
    return core + "%" if percent else core


def _numbers(text: str) -> list[re.Match[str]]:
    return list(_NUMBER.finditer(text))


def _is_list(text: str, numbers: list[re.Match[str]], i: int) -> bool:
    """Is number ``i`` part of a bare list ("1 2 3", "3 or 4")?"""
    before = i > 0 and _LIST_GAP.fullmatch(text[numbers[i - 1].end() : numbers[i].start()])
    after = i + 1 < len(numbers) and _LIST_GAP.fullmatch(text[numbers[i].end() : numbers[i + 1].start()])
    return bool(before or after)


def _phrase_answer(rest: str) -> str:
    """The answer an answer phrase gives: the number it starts with, else its LaTeX or text (for
    math-verify). A list of numbers is no answer (``""``)."""
    rest = rest.strip()
    head = re.match(r"[\s*_(]*", rest)
    body = rest[head.end() if head else 0 :]
    numbers = _numbers(body)
    if numbers and numbers[0].start() == 0:
        return "" if _is_list(body, numbers, 0) else numbers[0].group()
    return rest


def extract_answers(text: str) -> list[str]:
    """Every answer of the kind that decides (see the module docstring), normalised; ``[]`` when
    the completion gives none (a bare list of numbers gives none)."""
    text = text.translate(_MINUS)
    if "</think>" in text:
        after = text.rsplit("</think>", 1)[1]
        found = _answers_in(after)
        if found:
            return found
    return _answers_in(text)


def _answers_in(text: str) -> list[str]:
    candidates = _all_boxed(text) or _ANSWER_TAG.findall(text)
    if not candidates:
        candidates = [_phrase_answer(m.group("rest")) for m in _PHRASE.finditer(text)]
        candidates = [c for c in candidates if c] or ([""] if candidates else [])
    if not candidates:
        numbers = _numbers(text)
        if not numbers or _is_list(text, numbers, len(numbers) - 1):
            return []
        candidates = [numbers[-1].group()]
    return [_normalise(c) for c in candidates]


def extract_answer(text: str) -> str | None:
    """The final answer of a completion when it gives exactly one (repeats allowed): ``None`` when
    it gives none or several different ones. (The reward compares each with the gold, so
    ``\\boxed{0.5}`` and ``\\boxed{1/2}`` agree there.)"""
    answers = extract_answers(text)
    return answers[0] if answers and len(set(answers)) == 1 and answers[0] else None


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
    text = str(gold).translate(_MINUS)
    if "####" in text:  # GSM8K-style gold: worked solution, then "#### <final answer>"
        text = text.rsplit("####", 1)[1].replace(",", "")
    return _normalise(text)


def _equal(gold: str, answer: str) -> bool:
    if not answer:
        return False
    fast = fast_equal(gold, answer)
    if fast is not None:
        return fast
    return _verify(gold, answer)


def score_answer(gold: Any, text: str, literal: bool = False) -> float | None:
    """1.0/0.0 for one completion text against one gold; ``None`` if the gold is unparseable.
    1.0 only if the completion gives an answer and every answer it gives equals the gold.
    ``literal``: a plain-number gold is only matched by a plain number, never by an expression
    that evaluates to it (see :func:`accuracy`)."""
    gold_str = _gold_text(gold)
    if not gold_str:
        return None
    if not _PLAIN_NUMBER.fullmatch(gold_str) and not _parse(gold_str):
        return None  # checked before the answer so an unparseable gold is None for every completion
    answers = extract_answers(text)
    if literal and _PLAIN_NUMBER.fullmatch(gold_str) and not all(
            _PLAIN_NUMBER.fullmatch(a) for a in answers):
        return 0.0
    return float(bool(answers) and all(_equal(gold_str, a) for a in answers))


@register("accuracy")
def accuracy(
    completions: Sequence[Any], solution: Sequence[Any], literal: bool = False, **kwargs: Any
) -> list[float | None]:
    """1.0 if the completion's final answer equals the ``solution`` column, else 0.0.

    The answer: ``\\boxed{}``, else ``<answer>...</answer>``, else an answer phrase ("the answer is
    12"), else the last number; several different answers (a hedge) score 0 (module docstring).
    Equality is math-verify's (``1/2`` == ``0.5`` == ``\\frac{1}{2}``), with a numeric fast path for
    plain numbers. A gold that math-verify cannot parse gives ``None`` (not applicable).

    ``literal=True`` (arithmetic tasks): when the gold is a plain number, so must the answer be.
    math-verify evaluates expressions, so without it ``\\boxed{917*707}`` scores 1 against 648319:
    a policy would be paid for restating the question instead of computing the answer.
    """
    if not isinstance(literal, bool):
        raise TypeError(f"accuracy: literal must be true or false, got {literal!r}")
    return [
        score_answer(gold, completion_text(c), literal)
        for c, gold in zip(completions, solution, strict=True)
    ]
