"""Embedded synthetic tasks: small, exactly checkable problems that need no download.

Supported task: ``"arithmetic"`` -- ``a+b=`` with ``0 <= a, b <= max_operand``; the answer is the
digits of ``a+b`` and nothing else. Every pair is enumerated once and shuffled with ``seed``; the
first ``n_eval`` pairs are the held-out ``"eval"`` split, the rest ``"train"`` (optionally capped at
``n_train``), so the two splits never share a problem.

Supported task: ``"multiplication"`` -- ``a*b=`` with ``min_operand <= a, b <= max_operand``
(100-999 by default: three digits, which the tiny model cannot multiply in its head), the tool-use
task. ``n_eval`` (200) held-out and ``n_train`` (20,000) training problems are drawn without
replacement from all pairs with ``seed``. Its ``"sft"`` kind is tool-use traces when ``tool`` names
a tool (``calculator``, the default): ``messages`` (the user's problem, an assistant turn calling
``tool(expression="a*b")``, the tool's answer, the assistant repeating it) and a ``tools`` column
(the tool's JSON schema, as trl's SFT passes it to the chat template); ``tool: null`` gives plain
prompt/completion answers (the no-tool control).

Supported task: ``"shapes"`` (for vision-language models; needs Pillow, the ``vision`` extra) --
a 56x56 picture of 1-4 circles or squares of one colour on a 2x2 grid, with the question "How
many shapes are there?" (answer: the digit) or "What colour are the shapes?" (answer: red, green,
blue or yellow). Every (colour, occupied cells, shape per cell) combination is one problem (320
in all, times the questions asked: ``questions=[count, colour]`` by default); they are shuffled with
``seed`` and the first ``n_eval`` (64) are the ``"eval"`` split. Rows carry the picture in an
``images`` column ({bytes, path} PNG values) and messages of typed parts
(``[{"type": "image"}, {"type": "text", "text": ...}]``), the form align's data layer gives
vision-language data; counting answers are numbers, so the ``accuracy`` reward scores them.

Dataset kinds (the column layouts trl's trainers accept):

- ``"sft"``: ``prompt`` (user turn) + ``completion`` (assistant answer), conversational, so
  trl's completion-only loss trains on the answer (the ``shapes`` task gives ``messages``).
- ``"preference"``: ``prompt`` / ``chosen`` / ``rejected`` (conversational) plus ``solution``.
- ``"prompt"``: ``prompt`` (conversational) and ``solution`` (the answer string), for GRPO and
  held-out evaluation.

Example::

    from align.data.synthetic import build_synthetic
    train = build_synthetic("arithmetic", "sft", "train", seed=0)
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if (
    TYPE_CHECKING
):  # datasets is imported lazily so that importing this module stays cheap
    import datasets

SYNTHETIC_TASKS = ("arithmetic", "multiplication", "shapes")
SYNTHETIC_KINDS = ("sft", "preference", "prompt")
SYNTHETIC_SPLITS = ("train", "eval")


def arithmetic_prompt(a: int, b: int) -> str:
    """The user-turn text of the problem ``a+b``."""
    return f"{a}+{b}="


def arithmetic_pairs(
    split: str,
    seed: int = 0,
    n_eval: int = 200,
    n_train: int | None = None,
    max_operand: int = 99,
) -> list[tuple[int, int]]:
    """The ``(a, b)`` pairs of one split, in a deterministic order."""
    if split not in SYNTHETIC_SPLITS:
        raise ValueError(
            f"unknown split {split!r}; valid splits: {', '.join(SYNTHETIC_SPLITS)}"
        )
    if max_operand < 0:
        raise ValueError(f"max_operand must be >= 0, got {max_operand}")
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    if not 0 <= n_eval < len(pairs):
        raise ValueError(
            f"n_eval={n_eval} must be in [0, {len(pairs)}) for max_operand={max_operand} "
            f"({len(pairs)} pairs in all)"
        )
    if n_train is not None and n_train < 0:
        raise ValueError(f"n_train must be >= 0 or None, got {n_train}")
    # A private Random instance: the split must not depend on (or disturb) the global RNG state.
    random.Random(seed).shuffle(pairs)
    if split == "eval":
        return pairs[:n_eval]
    train = pairs[n_eval:]
    return train if n_train is None else train[:n_train]


def wrong_answer(answer: int, rng: random.Random) -> int:
    """A plausible wrong answer: off by +-1 or +-10, or one digit changed; never ``answer``, never < 0."""
    while True:
        style = rng.randrange(3)
        if style == 0:
            wrong = answer + rng.choice((-1, 1))
        elif style == 1:
            wrong = answer + rng.choice((-10, 10))
        else:
            digits = list(str(answer))
            i = rng.randrange(len(digits))
            # A leading zero would make a non-canonical number string, so the first digit of a
            # multi-digit answer is drawn from 1-9.
            choices = [
                d
                for d in "0123456789"
                if d != digits[i] and not (i == 0 and len(digits) > 1 and d == "0")
            ]
            digits[i] = rng.choice(choices)
            wrong = int("".join(digits))
        if wrong != answer and wrong >= 0:
            return wrong


def _arithmetic_rows(kind: str, pairs: list[tuple[int, int]], seed: int,
                     rejected_per_prompt: int = 1) -> list[dict]:
    # Wrong answers get their own stream, derived from the seed, so they are reproducible and do
    # not shift when the split sizes change the number of pairs drawn before them.
    rng = random.Random(f"arithmetic-rejected-{seed}")
    rows = []
    for a, b in pairs:
        if kind == "preference" and rejected_per_prompt > 1:
            rows.extend(_pairs_of_one_problem(a, b, rng, rejected_per_prompt))
            continue
        prompt, answer = arithmetic_prompt(a, b), str(a + b)
        user = [{"role": "user", "content": prompt}]
        if kind == "sft":
            # prompt/completion rather than messages: trl's completion-only loss then trains
            # on the answer alone, whatever the chat template (no generation markers needed).
            rows.append({"prompt": user, "completion": [{"role": "assistant", "content": answer}]})
        elif kind == "preference":
            rows.append(
                {
                    "prompt": user,
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [
                        {"role": "assistant", "content": str(wrong_answer(a + b, rng))}
                    ],
                    "solution": answer,
                }
            )
        else:
            rows.append({"prompt": user, "solution": answer})
    return rows


def _pairs_of_one_problem(a: int, b: int, rng: random.Random, k: int) -> list[dict]:
    """``k`` preference rows for ``a+b``, the same correct answer against ``k`` distinct wrong
    ones (every answer has at least 10 near misses: +-1, +-10 and each digit changed)."""
    answer = a + b
    wrongs: list[int] = []
    while len(wrongs) < k:
        wrong = wrong_answer(answer, rng)
        if wrong not in wrongs:
            wrongs.append(wrong)
    user = [{"role": "user", "content": arithmetic_prompt(a, b)}]
    return [{"prompt": user, "chosen": [{"role": "assistant", "content": str(answer)}],
             "rejected": [{"role": "assistant", "content": str(wrong)}], "solution": str(answer)}
            for wrong in wrongs]


#: The calculator tool's JSON schema, as ``transformers.utils.get_json_schema`` gives it for the
#: registered ``calculator`` tool (tests check they agree); kept here as data so building the
#: traces needs neither the tools package nor transformers.
CALCULATOR_SCHEMA = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression exactly and return its value.\n\n"
                       "Supports numbers, + - * / // % ** and parentheses; no variables or "
                       "functions.",
        "parameters": {
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "description": "The arithmetic expression, e.g. \"(3 + 4) * 12 / 7\".",
                }
            },
            "required": ["expression"],
        },
        "return": {"type": "string"},
    },
}


def multiplication_prompt(a: int, b: int) -> str:
    """The user-turn text of the problem ``a*b``."""
    return f"{a}*{b}="


def multiplication_pairs(split: str, seed: int = 0, n_eval: int = 200, n_train: int | None = 20000,
                         min_operand: int = 100, max_operand: int = 999) -> list[tuple[int, int]]:
    """The ``(a, b)`` pairs of one split: drawn without replacement from every pair, so the splits
    never share a problem; the eval split does not depend on ``n_train``."""
    if split not in SYNTHETIC_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SYNTHETIC_SPLITS)}")
    if not 0 <= min_operand <= max_operand:
        raise ValueError(f"need 0 <= min_operand <= max_operand, got {min_operand}, {max_operand}")
    side = max_operand - min_operand + 1
    total = side * side
    n_train = total - n_eval if n_train is None else n_train
    if n_eval < 0 or n_train < 0 or n_eval + n_train > total:
        raise ValueError(f"n_eval={n_eval} + n_train={n_train} must be at most the {total} pairs "
                         f"of operands in [{min_operand}, {max_operand}]")
    rng = random.Random(f"multiplication-{seed}")
    # eval first, then train, from one stream of distinct indices
    indices = rng.sample(range(total), n_eval + n_train)
    chosen = indices[:n_eval] if split == "eval" else indices[n_eval:]
    return [(min_operand + i // side, min_operand + i % side) for i in chosen]


def tool_trace(a: int, b: int, tool: str) -> list[dict]:
    """The conversation of one solved problem with ``tool`` called on ``a*b``."""
    expression, answer = f"{a}*{b}", str(a * b)
    call = {"type": "function", "function": {"name": tool, "arguments": {"expression": expression}}}
    return [
        {"role": "user", "content": multiplication_prompt(a, b)},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": tool, "content": answer},
        {"role": "assistant", "content": answer},
    ]


def _multiplication_rows(kind: str, split: str, tool: str | None = "calculator",
                         **params) -> list[dict]:
    import json

    if kind == "preference":
        raise ValueError("the multiplication task has no preference kind (it is the tool-use task "
                         "for GRPO); use the arithmetic task for DPO")
    if tool is not None and tool != "calculator":
        raise ValueError(f"tool must be 'calculator' or null, got {tool!r}")
    rows = []
    tools = json.dumps([CALCULATOR_SCHEMA])
    for a, b in multiplication_pairs(split, **params):
        prompt, answer = multiplication_prompt(a, b), str(a * b)
        user = [{"role": "user", "content": prompt}]
        if kind == "prompt":
            rows.append({"prompt": user, "solution": answer})
        elif tool is None:
            rows.append({"prompt": user, "completion": [{"role": "assistant", "content": answer}]})
        else:
            rows.append({"messages": tool_trace(a, b, tool), "tools": tools})
    return rows


def build_synthetic(task: str, kind: str, split: str, **params) -> datasets.Dataset:
    """Build one split of an embedded synthetic task as a ``datasets.Dataset``.

    Args:
        task: one of ``SYNTHETIC_TASKS``.
        kind: ``"sft"``, ``"preference"`` or ``"prompt"`` (see the module docstring for columns).
        split: ``"train"`` or ``"eval"``.
        **params: ``seed`` (0), ``n_eval`` (200), ``n_train`` (None: all the rest),
            ``max_operand`` (99), ``rejected_per_prompt`` (1; arithmetic preference rows of the
            train split: each problem k times, against k distinct wrong answers). Unknown names
            raise ``TypeError``.
    """
    if task not in SYNTHETIC_TASKS:
        raise ValueError(
            f"unknown synthetic task {task!r}; available tasks: {', '.join(SYNTHETIC_TASKS)}"
        )
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(
            f"unknown dataset kind {kind!r}; valid kinds: {', '.join(SYNTHETIC_KINDS)}"
        )
    if split not in SYNTHETIC_SPLITS:
        raise ValueError(
            f"unknown split {split!r}; valid splits: {', '.join(SYNTHETIC_SPLITS)}"
        )
    allowed = {"seed", "n_eval", "n_train", "max_operand", "rejected_per_prompt"}
    if task == "multiplication":
        allowed = {"seed", "n_eval", "n_train", "min_operand", "max_operand", "tool"}
    if task == "shapes":
        allowed = {"seed", "n_eval", "n_train", "questions"}
    unknown = set(params) - allowed
    if unknown:
        raise TypeError(
            f"unknown parameters for task {task!r}: {sorted(unknown)}; valid: {sorted(allowed)}"
        )

    import datasets

    if task == "shapes":
        return datasets.Dataset.from_list(_shapes_rows(kind, split, **params))
    if task == "multiplication":
        return datasets.Dataset.from_list(_multiplication_rows(kind, split, **params))
    per_prompt = params.pop("rejected_per_prompt", 1)
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or not 1 <= per_prompt <= 10:
        raise ValueError(f"rejected_per_prompt must be an integer from 1 to 10, got {per_prompt!r}")
    pairs = arithmetic_pairs(split, **params)
    # the held-out split keeps one pair per problem, so its figures compare across settings
    rows = _arithmetic_rows(kind, pairs, params.get("seed", 0),
                            per_prompt if split == "train" else 1)
    if not rows:  # from_list cannot infer columns from nothing
        columns = {
            "sft": ["prompt", "completion"],
            "preference": ["prompt", "chosen", "rejected", "solution"],
        }
        return datasets.Dataset.from_dict(
            {c: [] for c in columns.get(kind, ["prompt", "solution"])}
        )
    return datasets.Dataset.from_list(rows)


# --------------------------------------------------------------------------- shapes (vision)

SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220),
                 "yellow": (230, 200, 20)}
SHAPE_QUESTIONS = {"count": "How many shapes are there?", "colour": "What colour are the shapes?"}
SHAPE_IMAGE_SIZE = 56


def shape_problems(split: str, seed: int = 0, n_eval: int = 64, n_train: int | None = None,
                   questions: tuple[str, ...] | list[str] = ("count", "colour")) -> list[tuple]:
    """The (colour, cells, kinds, question) problems of one split, in a deterministic order."""
    from itertools import combinations, product

    if split not in SYNTHETIC_SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SYNTHETIC_SPLITS)}")
    unknown = [q for q in questions if q not in SHAPE_QUESTIONS]
    if unknown or not questions:
        raise ValueError(f"questions={list(questions)}: choose from {', '.join(SHAPE_QUESTIONS)}")
    problems = [
        (colour, cells, kinds, question)
        for question in questions
        for colour in SHAPE_COLOURS
        for n in range(1, 5)
        for cells in combinations(range(4), n)
        for kinds in product(("circle", "square"), repeat=n)
    ]
    if not 0 <= n_eval < len(problems):
        raise ValueError(f"n_eval={n_eval} must be in [0, {len(problems)}) for questions={list(questions)}")
    random.Random(seed).shuffle(problems)
    if split == "eval":
        return problems[:n_eval]
    train = problems[n_eval:]
    return train if n_train is None else train[:n_train]


def draw_shapes(colour: str, cells: tuple[int, ...], kinds: tuple[str, ...], rng: random.Random):
    """A PIL image: one shape per occupied cell of a 2x2 grid, jittered a little."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SHAPE_IMAGE_SIZE, SHAPE_IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    half = SHAPE_IMAGE_SIZE // 2
    for cell, kind in zip(cells, kinds):
        x0 = (cell % 2) * half + rng.randint(2, 6)
        y0 = (cell // 2) * half + rng.randint(2, 6)
        side = rng.randint(14, 18)
        box = (x0, y0, x0 + side, y0 + side)
        (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=SHAPE_COLOURS[colour])
    return image


def _shapes_rows(kind: str, split: str, seed: int = 0, **params) -> list[dict]:
    from align.data.media import png_bytes, require_pillow

    require_pillow("the synthetic shapes task")
    rng = random.Random(f"shapes-{split}-{seed}")
    rows = []
    for colour, cells, kinds, question in shape_problems(split, seed=seed, **params):
        answer = str(len(cells)) if question == "count" else colour
        if question == "count":
            wrong = str(rng.choice([n for n in range(1, 5) if n != len(cells)]))
        else:
            wrong = rng.choice([c for c in SHAPE_COLOURS if c != colour])
        user = [{"role": "user", "content": [{"type": "image", "text": None},
                                             {"type": "text", "text": SHAPE_QUESTIONS[question]}]}]
        images = [png_bytes(draw_shapes(colour, cells, kinds, rng))]

        def said(text):
            return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

        if kind == "sft":
            rows.append({"messages": user + said(answer), "images": images})
        elif kind == "preference":
            rows.append({"prompt": user, "chosen": said(answer), "rejected": said(wrong),
                         "images": images, "solution": answer})
        else:
            rows.append({"prompt": user, "images": images, "solution": answer})
    return rows
