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
no, the answer is 4"; the same answer given twice counts), and several values inside one answer
(``\\boxed{390, 391}``, ``390 \\text{ or } 391``, ``\\pm 3``, a set, an interval, an inequality) are
not the number the gold asks for. A bare list of numbers ("1 2 3 ... 100", "3, 4 or 5") is no
answer at all. Numbers: a Unicode minus (``−3``) is a minus, ``1,000`` is a thousand, ``1e3`` is
1000, ``50%`` equals both 0.5 and 50 (math-verify's percent rule).

Equality is math-verify's, called the way it reads answers: LaTeX is only LaTeX to it inside a
delimiter (``$...$``, ``\\(...\\)``, ``\\[...\\]``, ``\\boxed{}``), so a gold or an answer that is bare
LaTeX (a MATH answer ``\\dfrac{1}{3}``, a box's content ``14{,}916``) is handed over as ``$...$``;
text that carries its own delimiters or reads as prose ("5 apples", "The answer is $9$") is handed
over as written, for math-verify to find the math in. So ``\\frac13`` == ``\\dfrac{1}{3}`` == ``1/3``,
``\\sqrt{12}`` == ``2\\sqrt{3}``, ``\\$18`` == ``\\text{18}`` == ``18``, ``[0, 1)`` is an interval and
``\\{1, 2\\}`` == ``\\{2, 1\\}``.

``literal`` (the default): a gold that is a number (integer, decimal, fraction, percentage) is only
matched by an answer written as a number (in any of those spellings, with units, a currency sign, a
degree sign, ``x = ...``, or scientific notation ``2.5 \\times 10^{3}``), never by an expression
that evaluates to it: ``\\boxed{17*23}`` or ``\\boxed{2^{10}}`` restates a question, and a policy paid
for it learns to copy the question. A gold that is itself an expression (``2^{10}``, ``2\\sqrt{3}``,
``\\pi``) is matched by any equal expression.

Cost (2 CPU cores, math-verify 0.9): parse ~0.2-0.5 ms, verify ~0.03 ms. GRPO scores ~512
completions a step, so when both the extracted answer and the gold are plain integers/decimals they
are compared directly (~µs), and every math-verify result is cached by string (a group of
completions shares a gold and often an answer).
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
# LaTeX digit grouping, a thin or normal space before a group of three digits: 14\,916,
# 1\ 000\ 000. math-verify reads 14\,916 as the product 14*916 (and 14{,}916 right).
_DIGIT_GROUP = re.compile(r"(?<=\d)(?:\\[,;: !]|~)(?=\d{3}(?!\d))")
# A LaTeX math span in running text: $...$ (TeX's rule: no space just inside the dollars, so "$5 and
# $6" is money, not math), $$...$$, \(...\), \[...\].
_MATH_SPAN = re.compile(
    r"\$\$.+?\$\$|(?<![\\\d$])\$(?=[^\s$])[^$\n]*?(?<![\s\\])\$(?!\$)|\\\(.+?\\\)|\\\[.+?\\\]",
    re.DOTALL,
)
# Text that carries its own LaTeX delimiters: math-verify finds the math inside it as written.
_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[")
# A word of prose: two letters or more, not a LaTeX command (\frac) nor inside \text{...}.
# "or"/"and" join values in LaTeX answers ("390 or 391"), which math-verify reads as a set.
_TEXT_GROUP = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mbox|operatorname)\s*\{[^{}]*\}"
)
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_CONNECTIVES = frozenset({"or", "and"})


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
    """One spelling per plain number: ``1,234`` -> ``1234``, ``1e3`` -> ``1000``, ``50\\%`` ->
    ``50%``. LaTeX is left as written, for math-verify (``\\frac{1}{2}\\%`` keeps its ``\\%``)."""
    answer = _DIGIT_GROUP.sub("", answer.strip())
    percent = answer.endswith("%")
    core = answer[:-1].strip().removesuffix("\\").strip() if percent else answer
    if _THOUSANDS.fullmatch(core):
        core = core.replace(",", "")
    elif _SCIENTIFIC.fullmatch(core):
        try:
            core = format(Decimal(core).normalize(), "f")
        except InvalidOperation:
            pass
    if not percent:
        return core
    return core + "%" if _NUMBER.fullmatch(core) else answer


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
        last = numbers[-1]
        # The last number inside a math span is read with its span: "$x = \frac{1}{3}$" is 1/3,
        # not 3, and "$x^2$" is no answer 2.
        span = next((m.group() for m in _MATH_SPAN.finditer(text)
                     if m.start() < last.start() < m.end()), None)
        candidates = [span or last.group()]
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


def _math_source(text: str) -> str:
    """The string to give math-verify for one gold or one answer: bare LaTeX (what a box holds, a
    MATH answer column) wrapped in ``$...$``, since math-verify reads LaTeX only inside a delimiter;
    plain numbers, text with its own delimiters and prose as they are."""
    if _NUMBER.fullmatch(text) or _DELIMITED.search(text):
        return text
    words = _WORD.findall(_TEXT_GROUP.sub(" ", text))
    if any(word.lower() not in _CONNECTIVES for word in words):
        return text
    return f"${text}$"


@functools.lru_cache(maxsize=65536)
def _parse(text: str) -> tuple[Any, ...]:
    # lazy: sympy costs ~0.3 s to import
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    # A box decides first in prose, as in the completion's own reading order (math-verify's advice
    # for rewards); plain expressions ("1/2", "50%") are found by the second config.
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return tuple(parse(_math_source(text), config, parsing_timeout=_timeouts()[0]))


@functools.lru_cache(maxsize=65536)
def _verify(gold: str, answer: str) -> bool:
    from math_verify import verify

    return bool(
        verify(list(_parse(gold)), list(_parse(answer)), timeout_seconds=_timeouts()[1])
    )


def _is_numeral(value: Any) -> bool:
    """Is a parsed value a number as written (not an expression to evaluate)? ``x = 5`` and a chain
    ``x = 17 \\cdot 23 = 391`` count by their last right-hand side, as math-verify compares them."""
    from math_verify.grader import get_pct_val, is_equation, take_last_relation
    from sympy import Integer, Mul, Number, Pow, Symbol

    if is_equation(value):
        value = take_last_relation(value).rhs
    value = get_pct_val(value, value)
    if isinstance(value, Number):  # 42, -3, 0.5, \frac{1}{2} (LaTeX fractions arrive evaluated)
        return True
    if isinstance(value, Symbol):  # \text{18}: math-verify keeps the text as a symbol
        return bool(_PLAIN_NUMBER.fullmatch(value.name))
    if isinstance(value, Mul) and len(value.args) == 2:
        a, b = value.args
        if isinstance(b, Pow) and isinstance(b.base, Integer) and b.exp == -1:
            return isinstance(a, Integer)  # "1/2" as plain text
        if isinstance(a, Number) and isinstance(b, Pow) and b.base == 10 and isinstance(b.exp, Integer):
            return 1 <= abs(a) < 10  # scientific notation, 2.5 \times 10^{3}
    return isinstance(value, Pow) and value.base == 10 and isinstance(value.exp, Integer)  # 10^{6}


@functools.lru_cache(maxsize=65536)
def _written_as_number(text: str) -> bool:
    if _PLAIN_NUMBER.fullmatch(text):
        return True
    values = [v for v in _parse(text) if not isinstance(v, str)]
    return bool(values) and _is_numeral(values[0])


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


def _equal(gold: str, answer: str, literal: bool) -> bool:
    if not answer:
        return False
    fast = fast_equal(gold, answer)
    if fast is not None:
        return fast
    if literal and _written_as_number(gold) and not _written_as_number(answer):
        return False  # an expression for a number: the question restated (module docstring)
    return _verify(gold, answer)


def score_answer(gold: Any, text: str, literal: bool = True) -> float | None:
    """1.0/0.0 for one completion text against one gold; ``None`` if the gold is unparseable.
    1.0 only if the completion gives an answer and every answer it gives equals the gold.
    ``literal``: a gold that is a number is only matched by an answer written as a number, never
    by an expression that evaluates to it (see :func:`accuracy`)."""
    gold_str = _gold_text(gold)
    if not gold_str:
        return None
    if not _PLAIN_NUMBER.fullmatch(gold_str) and not _parse(gold_str):
        return None  # checked before the answer so an unparseable gold is None for every completion
    answers = extract_answers(text)
    return float(bool(answers) and all(_equal(gold_str, a, literal) for a in answers))


@register("accuracy")
def accuracy(
    completions: Sequence[Any], solution: Sequence[Any], literal: bool = True, **kwargs: Any
) -> list[float | None]:
    """1.0 if the completion's final answer equals the ``solution`` column, else 0.0.

    The answer: ``\\boxed{}``, else ``<answer>...</answer>``, else an answer phrase ("the answer is
    12"), else the last number. A hedge scores 0: several different answers, or several values in
    one (``\\boxed{390, 391}``, a set, an interval, an inequality) when the gold is one value.
    Equality is math-verify's, with bare LaTeX (a box's content, a MATH answer column) handed to it
    in ``$...$`` as it expects (``\\frac13`` == ``1/3`` == ``\\dfrac{1}{3}``, ``14{,}916`` == 14916), and
    a numeric fast path for plain numbers. ``solution`` may be a number, a MATH-style LaTeX answer
    (with or without ``$...$``), a solution ending in ``\\boxed{}`` or GSM8K's ``#### 72``. A gold
    that math-verify cannot parse gives ``None`` (not applicable).

    ``literal`` (default true): when the gold is a number, the answer must be written as a number
    (``42``, ``0.5``, ``\\frac{1}{2}``, ``50\\%``, ``\\$18``, ``x = 42``), not an expression that
    evaluates to it: math-verify evaluates expressions, so ``\\boxed{17*23}`` would score 1 against
    391, and a policy would be paid for restating the question instead of computing the answer.
    ``literal: false`` pays any equal expression (``2^{10}`` for 1024). A gold that is itself an
    expression (``2\\sqrt{3}``, ``2^{10}``) is matched by any equal one either way.
    """
    if not isinstance(literal, bool):
        raise TypeError(f"accuracy: literal must be true or false, got {literal!r}")
    return [
        score_answer(gold, completion_text(c), literal)
        for c, gold in zip(completions, solution, strict=True)
    ]
