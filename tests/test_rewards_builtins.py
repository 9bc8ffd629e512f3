"""The built-ins beyond math/format: exact rewards on hand-written completions (plain and
conversational), pickle round-trips, and the error policy of composed rewards."""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any

import pytest

from rewards import REGISTRY, BoundReward, RewardConfigError, RewardError, build_rewards
from rewards.code import extract_code, parse_tests
from rewards.sandbox import bwrap_problem

needs_bwrap = pytest.mark.skipif(
    bwrap_problem() is not None, reason=f"bubblewrap sandbox unavailable: {bwrap_problem()}"
)


def as_chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def run_both(name: str, texts: list[str], **columns: Any) -> tuple[list, list]:
    fn = REGISTRY[name]
    noise = {"prompts": ["p"] * len(texts), "trainer_state": None, "unused_column": [0] * len(texts)}
    plain = fn(completions=texts, **columns, **noise)
    chat = fn(completions=[as_chat(t) for t in texts], **columns, **noise)
    return plain, chat


# ---------------------------------------------------------------- cosine_length

COSINE_CASES = [
    # (completion, solution, n_tokens, expected) with max_len=100 and trl's default values
    (r"\boxed{3}", "3", 0, 1.0),
    (r"\boxed{3}", "3", 50, 0.75),
    (r"\boxed{3}", "3", 100, 0.5),
    (r"\boxed{3}", "3", 250, 0.5),  # past max_len counts as max_len
    (r"\boxed{4}", "3", 0, -1.0),
    (r"\boxed{4}", "3", 50, -0.75),
    (r"\boxed{4}", "3", 100, -0.5),
    ("<answer>3</answer>", "3", 50, 0.75),  # trl's own accuracy would call this wrong
    (r"\boxed{3}", "no gold here", 50, None),
]


@pytest.mark.parametrize(("text", "gold", "n", "expected"), COSINE_CASES)
def test_cosine_length(text: str, gold: str, n: int, expected: float | None) -> None:
    plain, chat = run_both("cosine_length", [text], solution=[gold], completion_ids=[[1] * n],
                           max_len=100)
    assert plain == chat
    assert plain == ([None] if expected is None else pytest.approx([expected]))


def test_cosine_length_matches_trl_where_trl_reads_the_answer() -> None:
    from trl.rewards import get_cosine_scaled_reward

    texts = [r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}", r"The final answer is $\frac{1}{3}$"]
    ids = [[1] * 10, [1] * 60, [1] * 90]
    gold = [r"\frac{1}{3}"] * 3
    ours = REGISTRY["cosine_length"]([as_chat(t) for t in texts], solution=gold,
                                     completion_ids=ids, max_len=100)
    theirs = get_cosine_scaled_reward(max_len=100)([as_chat(t) for t in texts], gold, ids)
    assert ours == pytest.approx(theirs)


def test_cosine_length_chars() -> None:
    plain, chat = run_both("cosine_length", ["3" + " " * 49], solution=["3"], max_len=100,
                           unit="chars")
    assert plain == chat == pytest.approx([0.75])


# ---------------------------------------------------------------- repetition


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("the cat sat on the mat", {"ngram_size": 2}, 0.0),
        ("a a a a a", {"ngram_size": 2}, -0.75),  # 4 bigrams, 1 unique
        ("go go go go", {"ngram_size": 1, "max_penalty": -2.0}, -1.5),
        ("Go go GO", {"ngram_size": 1}, -2 / 3),  # words are lower-cased
        ("short", {"ngram_size": 3}, 0.0),  # fewer words than n
    ],
)
def test_repetition_words(text: str, kwargs: dict, expected: float) -> None:
    plain, chat = run_both("repetition", [text], unit="words", **kwargs)
    assert plain == chat == pytest.approx([expected])


def test_repetition_tokens_is_trls() -> None:
    plain, chat = run_both("repetition", ["x", "y"], completion_ids=[[1, 2, 3, 4], [5] * 5],
                           ngram_size=2)
    assert plain == chat == [0.0, -0.75]  # trl's docstring example


def test_repetition_tokens_needs_ids() -> None:
    with pytest.raises(ValueError, match="unit: words"):
        REGISTRY["repetition"](["a a"])


# ---------------------------------------------------------------- json_schema / tool_calls

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "Ada", "age": 36}', 1.0),
        ('  {"name": "Ada", "age": 36}\n', 1.0),
        ('Here:\n```json\n{"name": "Ada", "age": 36}\n```', 1.0),
        ('{"name": "Ada", "age": -1}', 0.25),  # parses, violates the schema: partial
        ('{"name": "Ada"}', 0.25),
        ('{"name": "Ada", "age": 36, "x": 1}', 0.25),
        ('{"name": "Ada", "age": 36', 0.0),  # not JSON
        ("Ada is 36", 0.0),
    ],
)
def test_json_schema_from_config(text: str, expected: float) -> None:
    plain, chat = run_both("json_schema", [text], schema=PERSON, partial=0.25)
    assert plain == chat == [expected]


def test_json_schema_from_column() -> None:
    import json

    texts = ["[1, 2]", "[1, 2]", '"x"', "1"]
    schemas = [{"type": "array"}, json.dumps({"type": "object"}), {"type": "string"}, None]
    assert REGISTRY["json_schema"](texts, schema=schemas) == [1.0, 0.0, 1.0, None]


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    }},
    {"name": "now", "parameters": {"type": "object", "properties": {}}},
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', 1.0),
        ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}</tool_call>', 1.0),
        ('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', 0.0),  # missing city
        ('<tool_call>{"name": "get_wether", "arguments": {"city": "Oslo"}}</tool_call>', 0.0),
        ('<tool_call>{"name": "now", "arguments": {}}</tool_call>'
         '<tool_call>{"name": "get_weather", "arguments": {"city": 3}}</tool_call>', 0.5),
        ("<tool_call>{not json}</tool_call>", 0.0),
        ("It is sunny.", 0.0),  # no call
    ],
)
def test_tool_calls_in_text(text: str, expected: float) -> None:
    plain, chat = run_both("tool_calls", [text], tools=[TOOLS])
    assert plain == chat == [expected]


def test_tool_calls_in_messages() -> None:
    completion = [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"town": "x"}'}},
    ]}]
    fn = REGISTRY["tool_calls"]
    assert fn([completion], tools=[TOOLS]) == [0.5]
    assert fn(["plain answer"], tools=[TOOLS], require_call=False) == [1.0]
    assert fn(["anything"], tools=[[]]) == [None]  # no tools offered: not applicable


# ---------------------------------------------------------------- code_tests (sandboxed)

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]
STDIO_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "10"}]

CODE_CASES = [
    # (completion, tests, expected)
    ("```python\ndef add(a, b):\n    return a + b\n```", ADD_TESTS, 1.0),
    ("Sure:\n```py\ndef add(a, b):\n    return a - b\n```\nDone.", ADD_TESTS, 1 / 3),
    ("def add(a, b): return a + b", ADD_TESTS, 1.0),  # no fence: the whole text
    ("def add(a, b) return", ADD_TESTS, 0.0),  # syntax error
    ("import os\nos._exit(0)", ADD_TESTS, 0.0),  # exits before any test runs
    ("import sys\nsys.exit(0)", ADD_TESTS, 0.0),
    ("print('0 pass 0')\nprint('pass 1')\ndef add(a, b): return 7", ADD_TESTS, 0.0),  # forged lines
    ("def add(a, b):\n    while True: pass", ADD_TESTS, 0.0),  # timeout
    ("a, b = map(int, input().split())\nprint(a + b)", STDIO_TESTS, 1.0),
    ("a, b = map(int, input().split())\nprint(a * b)", STDIO_TESTS, 0.0),
    ("a, b = map(int, input().split())\nprint(a + b + (a == 5))", STDIO_TESTS, 0.5),
    ("print(3)", {"inputs": ["", ""], "outputs": ["3", "4"]}, 0.5),  # APPS shape
    ("anything", [], None),  # no tests: not applicable
]


@needs_bwrap
def test_code_tests_table() -> None:
    texts = [c for c, _, _ in CODE_CASES]
    tests = [t for _, t, _ in CODE_CASES]
    expected = [e for _, _, e in CODE_CASES]
    fn = REGISTRY["code_tests"]
    plain = fn(texts, tests=tests, timeout_s=2)
    assert plain == pytest.approx(expected)
    assert fn([as_chat(t) for t in texts], tests=tests, timeout_s=2) == plain


def test_code_tests_rlimits_mode() -> None:
    # The weaker isolation still runs and scores (used where bubblewrap is not installed).
    fn = REGISTRY["code_tests"]
    texts = ["def add(a, b): return a + b", "def add(a, b): return a"]
    assert fn(texts, tests=[ADD_TESTS, ADD_TESTS], isolation="rlimits", timeout_s=5) == \
        pytest.approx([1.0, 1 / 3])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```python\nx = 1\n```\n```\ny = 2\n```", "y = 2\n"),
        ("```bash\nls\n```\n```python\nx = 1\n```\n```bash\npwd\n```", "x = 1\n"),
        ("```bash\nls\n```", "ls\n"),
        ("x = 1", "x = 1"),
    ],
)
def test_extract_code(text: str, expected: str) -> None:
    assert extract_code(text) == expected


def test_parse_tests_shapes_and_errors() -> None:
    assert parse_tests('["assert f()"]') == ("asserts", ["assert f()"])
    assert parse_tests("assert f() == 1") == ("asserts", ["assert f() == 1"])
    assert parse_tests([{"input": ["1", "2"], "output": 3}]) == ("stdio", [("1\n2", "3")])
    assert parse_tests(None) is None and parse_tests("") is None and parse_tests([]) is None
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        parse_tests({"inputs": ["a", "b"], "outputs": ["c"]})
    with pytest.raises(ValueError, match="list of Python statements"):
        parse_tests([1, 2])


def test_code_tests_missing_column() -> None:
    with pytest.raises(KeyError, match="tests_column"):
        REGISTRY["code_tests"](["x"], isolation="rlimits", test_cases=[["assert 1"]])


# ---------------------------------------------------------------- config errors of the new rewards


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"fn": "cosine_length"}, "max_len"),
        ({"fn": "repetition", "kwargs": {"max_penalty": 1}}, "max_penalty must be a number <= 0"),
        ({"fn": "repetition", "kwargs": {"unit": "chars"}}, "unit must be one of"),
        ({"fn": "json_schema", "kwargs": {"schema": {"type": "nope"}}}, "not a valid JSON Schema"),
        ({"fn": "code_tests", "kwargs": {"isolation": "docker"}}, "isolation must be one of"),
        ({"fn": "code_tests", "kwargs": {"language": "rust"}}, "only 'python'"),
        ({"fn": "code_tests", "kwargs": {"timeot_s": 3}}, r"did you mean 'timeout_s'"),
        ({"fn": "reward_model"}, "kwargs.model"),
        ({"fn": "llm_judge", "kwargs": {"model": "m"}}, "base_url"),
        ({"fn": "llm_judge", "kwargs": {"base_url": "http://x/v1", "model": "m",
                                        "rubric": "no placeholder"}}, r"\{completion\}"),
        ({"fn": "accuracy", "on_error": "ignore"}, r"on_error must be one of .* got 'ignore'"),
    ],
)
def test_new_config_errors(spec: dict, match: str) -> None:
    with pytest.raises(RewardConfigError, match=match):
        build_rewards({"r": spec})


# ---------------------------------------------------------------- pickling bound built-ins

BOUND = [
    ("cosine_length", {"max_len": 10}, {"solution": ["42"], "completion_ids": [[1] * 5]}, [0.75]),
    ("repetition", {"unit": "words", "ngram_size": 1}, {}, [0.0]),
    ("json_schema", {"schema": {"type": "string"}}, {}, [0.0]),
    ("tool_calls", {}, {"tools": [TOOLS]}, [0.0]),
    # the text is not Python: the solution fails to compile, so its one test fails
    ("code_tests", {"isolation": "rlimits"}, {"tests": [["assert True"]]}, [0.0]),
]


@pytest.mark.parametrize(("ref", "kwargs", "columns", "expected"), BOUND)
def test_bound_new_builtins_pickle(ref: str, kwargs: dict, columns: dict, expected: list) -> None:
    bound = BoundReward(ref, kwargs, name=f"my_{ref}", on_error="zero")
    texts = ["x <answer>42"]
    assert bound(completions=texts, **columns) == pytest.approx(expected)
    clone = pickle.loads(pickle.dumps(bound))
    assert (clone.__name__, clone.on_error, clone._fn) == (f"my_{ref}", "zero", None)
    assert clone(completions=texts, **columns) == pytest.approx(expected)


# ---------------------------------------------------------------- error policy

FLAKY = """
def flaky(completions, **kwargs):
    out = []
    for c in completions:
        if "boom" in c:
            raise RuntimeError("cannot score " + c)
        out.append(1.0 if c == "good" else (None if c == "skip" else 0.0))
    return out

def short(completions, **kwargs):
    return [1.0]

def text_score(completions, **kwargs):
    return ["high" if c == "bad" else 1.0 for c in completions]

def logs(completions, log_extra=None, **kwargs):
    log_extra("seen", list(completions))
    if any("boom" in c for c in completions):
        raise ValueError("boom")
    return [1.0] * len(completions)
"""


@pytest.fixture
def user_rewards(tmp_path: Path) -> Path:
    path = tmp_path / "user_rewards.py"
    path.write_text(FLAKY)
    return path


class Metrics:
    def __init__(self) -> None:
        self.logged: list[tuple[str, float]] = []

    def __call__(self, name: str, value: float) -> None:
        self.logged.append((name, value))


@pytest.mark.parametrize(("policy", "fill"), [("none", None), ("zero", 0.0)])
def test_error_policy_scores_and_logs_the_failing_sample(
    user_rewards: Path, policy: str, fill: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (bound,), _ = build_rewards({"flaky": {"fn": f"{user_rewards}:flaky", "on_error": policy}})
    metrics = Metrics()
    completions = ["good", "boom\nnow", "bad", "skip"]
    with caplog.at_level(logging.WARNING, logger="rewards.registry"):
        scores = bound(completions=completions, solution=["a", "b", "c", "d"],
                       log_metric=metrics, log_extra=None)
    assert scores == [1.0, fill, 0.0, None]
    assert bound.errors == 1
    assert metrics.logged == [("rewards/flaky/error_frac", 0.25),
                              ("rewards/flaky/nonfinite_frac", 0.0),
                              ("rewards/flaky/batch_error_frac", 1.0)]
    (record,) = [r for r in caplog.records if "failed on sample" in r.getMessage()]
    message = record.getMessage()
    assert "reward 'flaky' failed on sample 1 of 4" in message
    assert "RuntimeError: cannot score boom" in message
    assert "'boom\\\\nnow'" in message  # the completion excerpt, newlines escaped
    assert record.exc_info is not None  # the traceback is logged too

    # A clean batch still reports its (zero) error rate, so the logged curve is continuous.
    assert bound(completions=["good"], log_metric=metrics) == [1.0]
    assert ("rewards/flaky/error_frac", 0.0) in metrics.logged[-3:]


def test_error_policy_raise_is_the_default(user_rewards: Path) -> None:
    (bound,), _ = build_rewards({"flaky": {"fn": f"{user_rewards}:flaky"}})
    with pytest.raises(RuntimeError, match="cannot score boom") as info:
        bound(completions=["good", "boom"])
    assert any("on_error: none or zero" in note for note in getattr(info.value, "__notes__", []))


def test_wrong_number_of_scores_always_raises(user_rewards: Path) -> None:
    for policy in ("raise", "zero"):
        bound = BoundReward(f"{user_rewards}:short", on_error=policy)
        with pytest.raises(RewardError, match="returned 1 scores for 2 completions"):
            bound(completions=["a", "b"])


def test_non_numeric_score(user_rewards: Path) -> None:
    with pytest.raises(RewardError, match="non-number at sample 1: 'high'"):
        BoundReward(f"{user_rewards}:text_score")(completions=["ok", "bad"])
    bound = BoundReward(f"{user_rewards}:text_score", on_error="none")
    assert bound(completions=["ok", "bad"]) == [1.0, None]
    assert bound.errors == 1


def test_error_policy_mutes_log_extra_while_isolating(user_rewards: Path) -> None:
    logged: dict[str, list] = {}

    def log_extra(column: str, values: list) -> None:
        logged.setdefault(column, []).extend(values)

    bound = BoundReward(f"{user_rewards}:logs", on_error="zero")
    assert bound(completions=["a", "boom"], log_extra=log_extra) == [1.0, 0.0]
    # Only the failed batch call logged; the per-sample retries did not add misaligned rows.
    assert logged == {"seen": ["a", "boom"]}


def test_first_reward_copies_dataset_columns_to_trls_table() -> None:
    funcs, _ = build_rewards({"acc": {"fn": "accuracy"}, "fmt": {"fn": "think_format"}})
    logged: dict[str, list] = {}

    def log_extra(column: str, values: list) -> None:
        logged.setdefault(column, []).extend(values)

    columns = {"solution": ["3", "4"], "acc": [0, 0], "meta": [{"a": 1}, {"a": 2}],
               "image": [object(), object()], "prompts": ["p", "q"], "log_extra": log_extra,
               "trainer_state": None}
    for fn in funcs:
        fn(completions=["3", "5"], **columns)
    # once (first reward only), JSON-able columns only, never one named like a reward
    assert logged == {"solution": ["3", "4"], "meta": [{"a": 1}, {"a": 2}]}


def test_policy_applies_to_nan_free_floats(user_rewards: Path) -> None:
    bound = BoundReward(f"{user_rewards}:flaky", on_error="zero")
    scores = bound(completions=["good", "bad"])
    assert all(isinstance(s, float) and not math.isnan(s) for s in scores)
