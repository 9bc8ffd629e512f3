"""The embedded arithmetic task: splits, answers, wrong answers and column layouts."""

import random
import re

import pytest

from align.data.synthetic import (
    SYNTHETIC_TASKS,
    arithmetic_pairs,
    build_synthetic,
    wrong_answer,
)

PROMPT = re.compile(r"^(\d+)\+(\d+)=$")


def _operands(prompt_messages):
    (message,) = prompt_messages
    assert message["role"] == "user"
    match = PROMPT.match(message["content"])
    assert match, message["content"]
    return int(match[1]), int(match[2])


def test_splits_cover_all_pairs_disjointly():
    train, evals = arithmetic_pairs("train"), arithmetic_pairs("eval")
    assert len(evals) == 200
    assert len(train) == 100 * 100 - 200
    assert not set(train) & set(evals)
    assert set(train) | set(evals) == {(a, b) for a in range(100) for b in range(100)}


def test_splits_are_deterministic_and_depend_on_seed():
    assert arithmetic_pairs("eval", seed=0) == arithmetic_pairs("eval", seed=0)
    assert arithmetic_pairs("eval", seed=0) != arithmetic_pairs("eval", seed=1)
    first = build_synthetic("arithmetic", "prompt", "eval")
    again = build_synthetic("arithmetic", "prompt", "eval")
    assert first.to_list() == again.to_list()


def test_params_change_sizes():
    assert len(build_synthetic("arithmetic", "sft", "train", n_train=50)) == 50
    assert len(build_synthetic("arithmetic", "sft", "eval", n_eval=10)) == 10
    small = build_synthetic("arithmetic", "prompt", "train", max_operand=9, n_eval=20)
    assert len(small) == 80
    assert all(max(_operands(p)) <= 9 for p in small["prompt"])


@pytest.mark.parametrize(
    "kind, columns",
    [
        ("sft", {"prompt", "completion"}),
        ("preference", {"prompt", "chosen", "rejected", "solution"}),
        ("prompt", {"prompt", "solution"}),
    ],
)
def test_kind_columns(kind, columns):
    ds = build_synthetic("arithmetic", kind, "eval")
    assert set(ds.column_names) == columns
    assert len(ds) == 200


def test_sft_answers_are_correct():
    for row in build_synthetic("arithmetic", "sft", "train"):
        a, b = _operands(row["prompt"])
        assert row["completion"] == [{"role": "assistant", "content": str(a + b)}]


def test_prompt_solutions_are_correct_strings():
    ds = build_synthetic("arithmetic", "prompt", "eval")
    for prompt, solution in zip(ds["prompt"], ds["solution"]):
        a, b = _operands(prompt)
        assert solution == str(a + b)


def test_preference_rejected_is_wrong_and_plausible():
    ds = build_synthetic("arithmetic", "preference", "train")
    for row in ds:
        a, b = _operands(row["prompt"])
        (chosen,), (rejected,) = row["chosen"], row["rejected"]
        assert chosen == {"role": "assistant", "content": str(a + b)} and row[
            "solution"
        ] == str(a + b)
        assert rejected["role"] == "assistant"
        assert rejected["content"].isdigit(), rejected  # digits only, so never negative
        assert rejected["content"] == str(int(rejected["content"]))  # no leading zeros
        assert int(rejected["content"]) != a + b
    again = build_synthetic("arithmetic", "preference", "train")
    assert ds["rejected"] == again["rejected"]


def test_several_rejected_per_prompt_are_distinct_near_misses_of_the_train_split_only():
    one = build_synthetic("arithmetic", "preference", "train")
    four = build_synthetic("arithmetic", "preference", "train", rejected_per_prompt=4)
    assert len(four) == 4 * len(one)
    by_prompt: dict = {}
    for row in four:
        a, b = _operands(row["prompt"])
        assert row["chosen"][0]["content"] == row["solution"] == str(a + b)
        by_prompt.setdefault((a, b), []).append(int(row["rejected"][0]["content"]))
    assert len(by_prompt) == len(one)
    for (a, b), wrongs in by_prompt.items():
        assert len(set(wrongs)) == 4 and a + b not in wrongs and min(wrongs) >= 0
    # held-out pairs stay one per problem, the same as with the default
    assert build_synthetic("arithmetic", "preference", "eval", rejected_per_prompt=4)[
        "rejected"] == build_synthetic("arithmetic", "preference", "eval")["rejected"]
    for bad in (0, 11, 2.5, True, "4"):
        with pytest.raises(ValueError, match="rejected_per_prompt must be an integer from 1 to 10"):
            build_synthetic("arithmetic", "preference", "train", rejected_per_prompt=bad)


@pytest.mark.parametrize("answer", [0, 1, 9, 10, 99, 100, 198])
def test_wrong_answer_never_equals_answer(answer):
    rng = random.Random(0)
    for _ in range(500):
        wrong = wrong_answer(answer, rng)
        assert wrong != answer and wrong >= 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("algebra", "sft", "train"), "available tasks: arithmetic"),
        (("arithmetic", "rl", "train"), "valid kinds: sft, preference, prompt"),
        (("arithmetic", "sft", "test"), "valid splits: train, eval"),
    ],
)
def test_unknown_names_list_the_valid_ones(args, message):
    with pytest.raises(ValueError, match=message):
        build_synthetic(*args)


def test_unknown_param_is_rejected():
    with pytest.raises(TypeError, match="n_evals"):
        build_synthetic("arithmetic", "sft", "train", n_evals=5)


def test_task_names():
    assert SYNTHETIC_TASKS == ("arithmetic", "multiplication", "shapes")
