"""Reward functions and the registry: exact rewards on hand-written completions, both completion
shapes, pickling, reference resolution and the errors a misconfigured reward gives at setup."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import rewards
from rewards import (
    REGISTRY,
    BoundReward,
    RewardConfigError,
    RewardImportError,
    UnknownRewardError,
    build_rewards,
    completion_text,
    resolve,
)
from rewards.math import extract_answer, fast_equal

BUILTINS = [
    "accuracy",
    "think_format",
    "tag_format",
    "regex_format",
    "overlong",
    "length_band",
    "cosine_length",
    "repetition",
    "code_tests",
    "json_schema",
    "tool_calls",
    "reward_model",
    "llm_judge",
]


def as_chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def run_both(name: str, texts: list[str], **columns: Any) -> tuple[list, list]:
    """Call a built-in on plain strings and on conversational completions."""
    fn = REGISTRY[name]
    # Extra columns trl always passes: every reward must ignore what it does not use.
    noise = {
        "prompts": ["p"] * len(texts),
        "trainer_state": None,
        "unused_column": [0] * len(texts),
    }
    plain = fn(completions=texts, **columns, **noise)
    chat = fn(completions=[as_chat(t) for t in texts], **columns, **noise)
    return plain, chat


def test_builtins_are_registered() -> None:
    assert sorted(REGISTRY) == sorted(BUILTINS)


def test_import_is_light() -> None:
    code = (
        "import sys, rewards; "
        "heavy = [m for m in ('torch', 'trl', 'sympy', 'math_verify', 'align', 'transformers', "
        "'jsonschema', 'hydra', 'pandas', 'pyarrow', 'rich') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- completion_text


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "a"}], "a"),
        ([{"content": "x"}, {"content": "y"}], "xy"),  # no roles: concatenated
        (
            [
                {"role": "assistant", "content": "calling tool"},
                {"role": "tool", "content": "42"},
                {"role": "assistant", "content": "final"},
            ],
            "final",
        ),
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "hi"}, {"type": "image"}],
                }
            ],
            "hi",
        ),
        ([{"role": "assistant", "content": None}], ""),
    ],
)
def test_completion_text(completion: Any, expected: str) -> None:
    assert completion_text(completion) == expected


def test_completion_text_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="int"):
        completion_text(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- accuracy

ACCURACY_CASES = [
    # (completion, solution, expected)
    (r"so the answer is \boxed{42}", "42", 1.0),
    (r"\boxed{41} wait, no: \boxed{42}", "42", 0.0),  # two different boxes: a hedge, scores 0
    (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
    ("<think>maybe 7</think><answer>12</answer>", "12", 1.0),
    ("<answer>1/2</answer>", "0.5", 1.0),
    ("<answer>The answer is 9</answer>", "9", 1.0),
    ("She has 3 apples, then 5 more, so 8.", "8", 1.0),
    ("She has 3 apples, then 5 more, so 8.", "9", 0.0),
    ("total: 1,234 dollars", "1234", 1.0),
    ("the result is -3", "-3", 1.0),
    ("half a pie is 1/2", "0.5", 1.0),
    ("the result is 3", "-3", 0.0),
    ("2.50", "2.5", 1.0),
    ("42.0", "42", 1.0),
    ("I don't know", "42", 0.0),  # no answer at all
    (r"\boxed{42", "42", 1.0),  # unbalanced box: falls back to the last number
    ("anything", "not a number at all", None),  # unparseable gold: not applicable
    ("42", "", None),
    ("42", None, None),
    ("42", 42, 1.0),  # numeric gold column
    # numbers as people write them
    ("the result is −3", "-3", 1.0),  # U+2212, the minus sign
    ("the result is −3", "3", 0.0),
    ("x = −3.5", "-3.5", 1.0),
    ("It went up by 50%.", "0.5", 1.0),  # a percentage is its fraction ...
    ("It went up by 50%.", "50", 1.0),  # ... and its number of percent (math-verify's rule)
    (r"\boxed{50\%}", "0.5", 1.0),
    ("about 1e3 grains", "1000", 1.0),
    (r"\boxed{2.5E-3}", "0.0025", 1.0),
    ("1e3", "1", 0.0),
    ("it costs 1,000 dollars", "1000", 1.0),
    (r"\boxed{1,000}", "1000", 1.0),
    # an explicit answer wins over the numbers after it
    ("The answer is 12. That is 4 boxes of 3.", "12", 1.0),
    ("The answer is 12. That is 4 boxes of 3.", "3", 0.0),
    ("Final answer: 42 apples, in 6 bags", "42", 1.0),
    ("Answer = −2, since 2 + 4 = 6", "-2", 1.0),
    ("#### 72\nthat took 3 steps", "72", 1.0),
    ("Let me answer this: 3 + 4 = 7", "7", 1.0),  # "answer" without "is"/":" is no phrase
    ("<think>maybe the answer is 5</think>The answer is 6", "6", 1.0),
    # hedges score nothing, even when one of their answers is right
    (r"\boxed{3} or \boxed{4}", "3", 0.0),
    (r"\boxed{3} or \boxed{4}", "4", 0.0),
    (r"\boxed{3}, so once more: \boxed{3}", "3", 1.0),  # the same answer twice is one answer
    ("<answer>3</answer><answer>4</answer>", "4", 0.0),
    ("The answer is 3. No wait, the answer is 4.", "4", 0.0),
    ("The answer is 3 or 4", "3", 0.0),
    (" ".join(str(i) for i in range(1, 101)), "100", 0.0),
    ("1, 2, 3, ..., 100", "100", 0.0),
    ("It is 3, 4 or 5", "5", 0.0),
    ("Possible values:\n1\n2\n3", "3", 0.0),
]


@pytest.mark.parametrize(("text", "gold", "expected"), ACCURACY_CASES)
def test_accuracy(text: str, gold: Any, expected: float | None) -> None:
    assert run_both("accuracy", [text], solution=[gold]) == ([expected], [expected])


def test_accuracy_unparseable_gold_is_none_for_every_completion() -> None:
    texts = ["42", "", r"\boxed{x}", "<answer>y</answer>"]
    assert REGISTRY["accuracy"](texts, solution=["no math here"] * 4) == [None] * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"a \boxed{\frac{1}{2}} b", r"\frac{1}{2}"),
        (r"\fbox{7}", "7"),
        ("<answer> 5 </answer> and 6", "5"),
        ("1,2,3", None),  # a list of numbers is no answer
        ("so 7 × 2 = 14", "14"),
        (r"\boxed{3} \boxed{4}", None),  # several different answers: none
        ("the answer is 1e3", "1000"),
        ("−7", "-7"),
        ("half is 1/2", "1/2"),
        ("1,234,567.5 total", "1234567.5"),
        ("no digits", None),
        ("<answer></answer>", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


# Pairs the fast path must agree with math-verify on; the ones it declines fall back to it.
FAST_PATH_TABLE = [
    ("42", "42"),
    ("42", "43"),
    ("42", "42.0"),
    ("42.0", "42"),
    ("2.50", "2.5"),
    ("-3", "-3"),
    ("3", "-3"),
    ("-0", "0"),
    ("007", "7"),
    ("0", "0.0"),
    ("100", "99.9999999"),
    ("0.1234567", "0.1234568"),
    ("0.1234567", "0.1234564"),
    ("12.5", "12.50000001"),
    ("1000000", "1000000.0000001"),
    ("123456789012345678", "123456789012345679"),
    ("123456789012345678901234567890", "123456789012345678901234567890"),
    ("3.14159265", "3.1415927"),
    ("1234", "1234.000"),
    ("5", "50"),
    ("0.5", "1/2"),  # not plain: math-verify decides
    ("42", r"\frac{84}{2}"),
]


@pytest.mark.parametrize(("gold", "answer"), FAST_PATH_TABLE)
def test_fast_path_agrees_with_math_verify(gold: str, answer: str) -> None:
    from math_verify import parse, verify

    reference = verify(parse(gold), parse(answer))
    fast = fast_equal(gold, answer)
    if fast is not None:
        assert fast == reference
    # and the whole reward, fast path or not, gives math-verify's answer
    completion = f"<answer>{answer}</answer>"
    assert REGISTRY["accuracy"]([completion], solution=[gold]) == [float(reference)]


def test_fast_path_decides_plain_cases() -> None:
    # Guards the agreement test against a fast path that silently declines everything.
    decided = [
        fast_equal(g, a) for g, a in FAST_PATH_TABLE if fast_equal(g, a) is not None
    ]
    assert len(decided) >= 12
    assert fast_equal("42", "43") is False
    assert fast_equal("2.50", "2.5") is True
    assert (
        fast_equal("0.1234567", "0.1234568") is None
    )  # rounding rules: math-verify's call


def test_accuracy_same_with_and_without_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts = [t for t, _, _ in ACCURACY_CASES]
    golds = [g for _, g, _ in ACCURACY_CASES]
    with_fast = REGISTRY["accuracy"](texts, solution=golds)
    monkeypatch.setattr(rewards.math, "fast_equal", lambda gold, answer: None)
    rewards.math._verify.cache_clear()
    assert REGISTRY["accuracy"](texts, solution=golds) == with_fast


def test_accuracy_off_the_main_thread() -> None:
    # math-verify's signal-based timeouts raise outside the main thread unless disabled.
    result: list = []
    thread = threading.Thread(
        target=lambda: result.append(
            REGISTRY["accuracy"]([r"\boxed{\frac{2}{6}}"], solution=[r"\frac{1}{3}"])
        )
    )
    rewards.math._parse.cache_clear()
    rewards.math._verify.cache_clear()
    thread.start()
    thread.join()
    assert result == [[1.0]]


# ---------------------------------------------------------------- format rewards


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nreasoning\n</think>\nanswer", 1.0),
        ("<think>r</think>", 1.0),
        ("answer first <think>r</think>", 0.0),
        ("<think>never closed", 0.0),
        ("<think>a</think><think>b</think>", 0.0),
    ],
)
def test_think_format(text: str, expected: float) -> None:
    assert run_both("think_format", [text]) == ([expected], [expected])


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("<think>r</think>\n<answer>4</answer>", {}, 1.0),
        ("  <think>r</think><answer>4</answer>\n", {}, 1.0),
        ("<think>r</think> so <answer>4</answer>", {}, 0.5),  # text between the tags
        ("<answer>4</answer><think>r</think>", {}, 0.5),  # wrong order
        ("<think>r</think> 4", {}, 0.25),
        ("<think>r</think><think>s</think><answer>4</answer>", {}, 0.25),  # think twice
        ("no tags", {}, 0.0),
        ("<think>r</think> so <answer>4</answer>", {"partial": 0.0}, 0.0),
        ("<answer>4</answer>", {"tags": ["answer"]}, 1.0),
        ("<a>1</a><b>2</b><c>3</c>", {"tags": ["a", "b", "c"], "partial": 1.0}, 1.0),
        ("<a>1</a><b>2</b>", {"tags": ["a", "b", "c"], "partial": 0.3}, 0.2),
    ],
)
def test_tag_format(text: str, kwargs: dict, expected: float) -> None:
    plain, chat = run_both("tag_format", [text], **kwargs)
    assert plain == pytest.approx([expected]) and chat == pytest.approx([expected])


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("Answer: 42", {"pattern": r"Answer: \d+"}, 1.0),
        ("Answer: 42.", {"pattern": r"Answer: \d+"}, 0.0),
        ("Answer: 42.", {"pattern": r"Answer: \d+", "mode": "search"}, 1.0),
        ("line one\nAnswer: 7", {"pattern": r".*Answer: \d+"}, 1.0),  # DOTALL
        ("nothing", {"pattern": r"\d", "mode": "search"}, 0.0),
    ],
)
def test_regex_format(text: str, kwargs: dict, expected: float) -> None:
    assert run_both("regex_format", [text], **kwargs) == ([expected], [expected])


# ---------------------------------------------------------------- length rewards


def test_overlong_matches_dapo() -> None:
    ids = [[1] * n for n in (10, 80, 90, 100, 101)]
    texts = ["x"] * len(ids)
    expected = [0.0, 0.0, -0.5, -1.0, -1.0]
    plain, chat = run_both(
        "overlong",
        texts,
        completion_ids=ids,
        max_completion_len=100,
        soft_punish_cache=20,
    )
    assert plain == expected and chat == expected


def test_overlong_needs_completion_ids() -> None:
    with pytest.raises(ValueError, match="completion_ids"):
        REGISTRY["overlong"](["x"], max_completion_len=10, soft_punish_cache=2)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, -1.0),
        (5, -0.5),
        (10, 0.0),
        (15, 0.0),
        (20, 0.0),
        (25, -0.25),
        (40, -1.0),
        (400, -1.0),
    ],
)
def test_length_band_chars(length: int, expected: float) -> None:
    plain, chat = run_both("length_band", ["a" * length], min_len=10, max_len=20)
    assert plain == [expected] and chat == [expected]


def test_length_band_tokens() -> None:
    plain, chat = run_both(
        "length_band",
        ["short text", "short text"],
        completion_ids=[[1] * 2, [1] * 30],
        min_len=4,
        max_len=20,
        unit="tokens",
    )
    assert plain == chat == [-0.5, -0.5]


# ---------------------------------------------------------------- pickling


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_pickles_by_reference(name: str) -> None:
    assert pickle.loads(pickle.dumps(REGISTRY[name])) is REGISTRY[name]


BOUND = [
    ("accuracy", {}, {"solution": ["42"]}, [1.0]),
    ("think_format", {}, {}, [0.0]),
    ("tag_format", {"tags": ["answer"]}, {}, [0.0]),
    ("regex_format", {"pattern": r".*42.*"}, {}, [1.0]),
    (
        "overlong",
        {"max_completion_len": 4, "soft_punish_cache": 2},
        {"completion_ids": [[1, 2, 3]]},
        [-0.5],
    ),
    ("length_band", {"min_len": 1, "max_len": 100}, {}, [0.0]),
]


@pytest.mark.parametrize(("ref", "kwargs", "columns", "expected"), BOUND)
def test_bound_reward_pickle_round_trip(
    ref: str, kwargs: dict, columns: dict, expected: list
) -> None:
    bound = BoundReward(ref, kwargs, name=f"my_{ref}")
    texts = ["x <answer>42"]
    assert bound(completions=texts, **columns) == expected
    clone = pickle.loads(pickle.dumps(bound))
    assert clone.__name__ == f"my_{ref}"
    assert clone._fn is None  # resolved lazily in the receiving process
    assert clone(completions=texts, **columns) == expected
    assert clone._fn is REGISTRY[ref]


# ---------------------------------------------------------------- resolve

USER_REWARDS = """
def half(completions, **kwargs):
    return [0.5] * len(completions)

def scaled(completions, scale=1.0, **kwargs):
    return [scale] * len(completions)

not_callable = 3
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "outside_repo" / "my_rewards.py"
    path.parent.mkdir()
    path.write_text(USER_REWARDS)
    return path


def test_resolve_by_name_and_import_path() -> None:
    assert resolve("accuracy") is rewards.math.accuracy
    assert resolve("rewards.math:accuracy") is rewards.math.accuracy
    assert resolve("rewards.formats:tag_format") is REGISTRY["tag_format"]


def test_resolve_file_path(user_file: Path) -> None:
    fn = resolve(f"{user_file}:half")
    assert fn(["a", "b"]) == [0.5, 0.5]
    assert resolve(f"{user_file}:half") is fn  # loaded once, under a stable module name
    assert pickle.loads(pickle.dumps(fn)) is fn


def test_file_path_bound_reward_works_in_a_fresh_process(
    user_file: Path, tmp_path: Path
) -> None:
    # The situation of a spawned rollout worker: it never loaded the user's file itself.
    payload = tmp_path / "bound.pkl"
    payload.write_bytes(
        pickle.dumps(BoundReward(f"{user_file}:scaled", {"scale": 2.0}, name="s"))
    )
    code = f"import pickle; r = pickle.load(open({str(payload)!r}, 'rb')); print(r.__name__, r(completions=['a']))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "s [2.0]"


def test_unknown_name_lists_names_and_closest() -> None:
    with pytest.raises(UnknownRewardError) as info:
        resolve("acuracy")
    message = str(info.value)
    assert "did you mean 'accuracy'" in message
    for name in BUILTINS:
        assert name in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("no_such_pkg_xyz.mod:fn", "cannot import module 'no_such_pkg_xyz.mod'"),
        (
            "rewards.math:acuracy",
            "has no attribute 'acuracy' \\(did you mean 'accuracy'\\?\\)",
        ),
        ("/nonexistent/dir/r.py:fn", "does not exist"),
    ],
)
def test_import_errors_name_module_and_attribute(ref: str, match: str) -> None:
    with pytest.raises(RewardImportError, match=match):
        resolve(ref)


def test_file_attribute_errors(user_file: Path) -> None:
    with pytest.raises(
        RewardImportError, match="has no attribute 'halff' \\(did you mean 'half'\\?\\)"
    ):
        resolve(f"{user_file}:halff")
    with pytest.raises(RewardConfigError, match="not callable"):
        resolve(f"{user_file}:not_callable")


def test_broken_user_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RewardImportError, match="boom"):
        resolve(f"{path}:fn")


# ---------------------------------------------------------------- build_rewards


def test_build_rewards() -> None:
    funcs, weights = build_rewards(
        {
            "correct": {"fn": "accuracy", "weight": 2},
            "format": {"fn": "tag_format", "kwargs": {"tags": ["answer"]}},
        }
    )
    assert [f.__name__ for f in funcs] == ["correct", "format"]
    assert weights == [2.0, 1.0]
    assert funcs[1](completions=[as_chat("<answer>1</answer>")], solution=["1"]) == [
        1.0
    ]


def test_build_rewards_accepts_omegaconf() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"fmt": {"fn": "tag_format", "kwargs": {"tags": ["think", "answer"]}}}
    )
    funcs, _ = build_rewards(cfg)
    assert funcs[0].kwargs == {"tags": ["think", "answer"]}
    assert (
        type(funcs[0].kwargs["tags"]) is list
    )  # plain containers pickle without omegaconf


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ({}, "no rewards configured"),
        (
            {"a": {"fn": "accuracy", "wieght": 2}},
            r"unknown keys \['wieght'\] \(did you mean 'weight'\?\)",
        ),
        ({"a": {"weight": 1}}, "missing 'fn'"),
        ({"a": "accuracy"}, "expected a mapping"),
        ({"a": {"fn": "accuracy", "weight": "high"}}, "weight must be a finite number"),
        ({"a": {"fn": "accuracy", "kwargs": ["x"]}}, "kwargs must be a mapping"),
        (
            {"f": {"fn": "regex_format", "kwargs": {"patern": "x"}}},
            r"unknown kwarg 'patern' \(did you mean 'pattern'\?\)",
        ),
        ({"f": {"fn": "regex_format"}}, "needs kwargs.pattern"),
        (
            {"f": {"fn": "regex_format", "kwargs": {"pattern": "("}}},
            "not a valid regular expression",
        ),
        (
            {"f": {"fn": "regex_format", "kwargs": {"pattern": "x", "mode": "match"}}},
            "mode must be one of",
        ),
        ({"f": {"fn": "tag_format", "kwargs": {"tags": "answer"}}}, "non-empty list"),
        (
            {"f": {"fn": "overlong", "kwargs": {"max_completion_len": 10}}},
            "soft_punish_cache",
        ),
        (
            {"f": {"fn": "length_band", "kwargs": {"min_len": 5, "max_len": 5}}},
            "min_len < max_len",
        ),
        (
            {"f": {"fn": "accuracy", "kwargs": {"completion_ids": []}}},
            "supplied by the trainer",
        ),
        ({"f": {"fn": "acuracy"}}, "did you mean 'accuracy'"),
        (
            {"f": {"fn": "length_band", "kwargs": {"min_len": float("nan"), "max_len": 5}}},
            r"kwarg min_len is not a finite number",
        ),
        (
            {"f": {"fn": "overlong", "kwargs": {"max_completion_len": float("inf"),
                                                "soft_punish_cache": 4}}},
            r"kwarg max_completion_len is not a finite number",
        ),
    ],
)
def test_build_rewards_errors(specs: dict, match: str) -> None:
    with pytest.raises(RewardConfigError, match=match):
        build_rewards(specs)


def test_nonfinite_kwargs_are_found_inside_lists_and_mappings(tmp_path: Path) -> None:
    path = tmp_path / "user.py"
    path.write_text("def f(completions, bands=None, **kwargs):\n    return [1.0] * len(completions)\n")
    for bands, where in (([1.0, float("-inf")], r"bands\[1\]"), ({"low": float("nan")}, r"bands\.low"),
                         ([{"x": [0.0, float("inf")]}], r"bands\[0\]\.x\[1\]")):
        with pytest.raises(RewardConfigError, match=f"kwarg {where} is not a finite number"):
            build_rewards({"f": {"fn": f"{path}:f", "kwargs": {"bands": bands}}})
    build_rewards({"f": {"fn": f"{path}:f", "kwargs": {"bands": [1.0, 2, {"x": -3.5}]}}})


def test_build_rewards_rejects_kwarg_shadowing_a_column(tmp_path: Path) -> None:
    path = tmp_path / "user.py"
    path.write_text(
        "def f(completions, level=1, **kwargs):\n    return [1.0] * len(completions)\n"
    )
    specs = {"f": {"fn": f"{path}:f", "kwargs": {"level": 2}}}
    build_rewards(specs, columns=["prompt", "solution"])
    with pytest.raises(
        RewardConfigError, match=r"\['level'\] collide with dataset columns"
    ):
        build_rewards(specs, columns=["prompt", "level"])


def test_reward_without_var_kwargs_fails_at_setup(tmp_path: Path) -> None:
    path = tmp_path / "strict.py"
    path.write_text("def strict(completions):\n    return [1.0] * len(completions)\n")
    with pytest.raises(RewardConfigError, match=r"must accept \*\*kwargs"):
        BoundReward(f"{path}:strict")


def test_bound_kwarg_colliding_with_a_column(tmp_path: Path) -> None:
    path = tmp_path / "user.py"
    path.write_text(
        textwrap.dedent(
            """
            def by_level(completions, level=1, **kwargs):
                return [float(level)] * len(completions)
            """
        )
    )
    bound = BoundReward(f"{path}:by_level", {"level": 3})
    assert bound(completions=["a"]) == [3.0]
    with pytest.raises(
        RewardConfigError, match=r"\['level'\] collide with dataset columns"
    ):
        bound(completions=["a"], level=[2])
