"""Rejection sampling and preference pairs from scored samples (align.data.select)."""

import math

import pytest

from align.data.select import preference_pairs, rejection_sample, reward_histogram, score_groups


def group(prompt, *scored, **columns):
    return [{"prompt": prompt, "completion": c, "reward": r, "rewards": {"acc": r},
             "sample_index": i, **columns} for i, (c, r) in enumerate(scored)]


def test_rejection_keeps_the_best_above_threshold_and_carries_columns():
    rows, counts = rejection_sample(
        [group("1+1=", ("3", 0.0), ("2", 1.0), ("2 ", 1.0), ("two", 0.5), solution="2")],
        threshold=0.5, max_per_prompt=2)
    assert rows == [{"prompt": "1+1=", "completion": "2", "reward": 1.0, "solution": "2"},
                    {"prompt": "1+1=", "completion": "two", "reward": 0.5, "solution": "2"}]
    assert counts["exact_duplicates"] == 1 and counts["below_threshold"] == 1
    assert counts["kept"] == 2 and counts["prompts_kept"] == 1


def test_rejection_drops_near_duplicates_and_counts_each_reason():
    long = "The answer is 12345 because we add the digits carefully."
    rows, counts = rejection_sample(
        [group("p", (long, 1.0), (long.replace("carefully", "carefuly"), 1.0),
               ("Completely different reasoning gives 12345.", 1.0), ("x", None),
               ("y", math.nan)),
         group("q", ("a", 0.0))],
        threshold=1.0, max_per_prompt=1)
    assert [r["completion"] for r in rows] == [long]
    assert counts == {"prompts": 2, "prompts_kept": 1, "kept": 1, "empty": 0, "unscored": 2,
                      "below_threshold": 1, "exact_duplicates": 0, "near_duplicates": 1,
                      "over_limit": 1}
    # with near-duplicate detection off, the typo'd copy is the second best and fills the slot
    rows, counts = rejection_sample([group("p", (long, 1.0),
                                           (long.replace("carefully", "carefuly"), 1.0))],
                                    threshold=1.0, max_per_prompt=2, near_duplicate=None)
    assert len(rows) == 2 and counts["near_duplicates"] == 0


def test_rejection_works_on_message_completions():
    msg = lambda t: [{"role": "assistant", "content": t}]  # noqa: E731
    rows, counts = rejection_sample([group("p", (msg("Hi"), 1.0), (msg(" hi "), 1.0))],
                                    threshold=0, max_per_prompt=5)
    assert rows[0]["completion"] == msg("Hi") and counts["exact_duplicates"] == 1


def test_pairs_take_best_and_worst_and_drop_what_teaches_nothing():
    groups = [
        group("a", ("4", 0.0), ("5", 1.0), ("6", 0.2), solution="5"),  # pair 5 > 4
        group("b", ("x", 1.0), ("y", 1.0)),                             # all equal
        group("c", ("x", 1.0)),                                         # one sample
        group("d", ("x", None), ("y", 0.0), ("z", None)),               # one scored
        group("e", ("ok", 0.6), ("meh", 0.5)),                          # margin 0.1 < 0.3
        group("f", ("Same", 1.0), ("same", 0.0)),                       # same text
    ]
    rows, counts = preference_pairs(groups, min_margin=0.3)
    assert rows == [{"prompt": "a", "chosen": "5", "rejected": "4", "chosen_reward": 1.0,
                     "rejected_reward": 0.0, "solution": "5"}]
    assert counts == {"prompts": 6, "pairs": 1, "too_few_scored": 2, "all_equal": 1,
                      "below_margin": 1, "same_text": 1, "empty": 0}


def test_pairs_ties_take_the_first_drawn():
    rows, _ = preference_pairs([group("p", ("a", 0.0), ("b", 1.0), ("c", 1.0), ("d", 0.0))])
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("b", "a")


def test_pairs_ties_can_take_the_most_drawn_text_the_policys_likeliest_mistake():
    samples = group("p", ("41", 0.0), ("52", 1.0), ("42", 0.0), (" 42", 0.0), ("42 ", 0.0),
                    ("41", 0.0), ("52", 1.0))
    # first drawn: "41"; most drawn: "42" (three times, however spaced) over "41" (twice)
    assert [r["rejected"] for r in preference_pairs([samples])[0]] == ["41"]
    rows, counts = preference_pairs([samples], ties="most_drawn")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("52", "42")] and counts["pairs"] == 1
    # with more pairs a prompt, the distinct mistakes come likeliest first
    rows, _ = preference_pairs([samples], pairs_per_prompt=3, ties="most_drawn")
    assert [r["rejected"] for r in rows] == ["42", "41"]
    # equal counts keep the draw order; a higher reward still beats a more common text
    tied = group("q", ("7", 0.0), ("8", 0.0), ("9", 1.0), ("8", 0.0), ("7", 0.0), ("6", 0.5),
                 ("6", 0.5), ("6", 0.5))
    rows, _ = preference_pairs([tied], pairs_per_prompt=3, ties="most_drawn")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("9", "7"), ("9", "8"), ("9", "6")]
    with pytest.raises(ValueError, match="ties must be one of first, most_drawn"):
        preference_pairs([samples], ties="likeliest")


@pytest.mark.parametrize("call", [
    lambda: rejection_sample([], threshold=0, max_per_prompt=0),
    lambda: rejection_sample([], threshold=0, near_duplicate=1.5),
    lambda: preference_pairs([], min_margin=-1),
    lambda: reward_histogram([], bins=0),
])
def test_bad_settings_raise(call):
    with pytest.raises(ValueError):
        call()


def test_histogram():
    h = reward_histogram([0.0, 1.0, 1.0, None, 0.5], bins=2)
    assert h["n"] == 4 and h["unscored"] == 1 and h["counts"] == [1, 3]
    assert h["edges"] == [0.0, 0.5, 1.0] and h["mean"] == 0.625
    assert reward_histogram([1.0, 1.0])["counts"] == [2]
    assert reward_histogram([None])["counts"] == [] and reward_histogram([None])["unscored"] == 1


def test_score_groups_calls_rewards_as_trl_does_and_weights_them():
    from rewards.registry import build_rewards

    funcs, weights = build_rewards({"acc": {"fn": "accuracy", "weight": 2.0},
                                    "short": {"fn": "length_band", "kwargs": {"max_len": 4}}})
    rows = [{"prompt": "2+2=", "solution": "4"}, {"prompt": "1+2=", "solution": "3"}]
    groups = score_groups(rows, [["4", "5"], ["3"]], funcs, weights)
    assert [len(g) for g in groups] == [2, 1]
    first = groups[0][0]
    assert first["solution"] == "4" and first["prompt_index"] == 0 and first["sample_index"] == 0
    assert first["rewards"]["acc"] == 1.0 and groups[0][1]["rewards"]["acc"] == 0.0
    assert first["reward"] == pytest.approx(2.0 + first["rewards"]["short"])
    rows_out, _ = preference_pairs(groups)
    assert rows_out[0]["chosen"] == "4" and rows_out[0]["solution"] == "4"
    with pytest.raises(ValueError, match="2 weights for 1 rewards"):
        score_groups(rows, [["4"], ["3"]], funcs[:1], weights)


def test_empty_completions_never_reach_training_rows():
    """The end token sampled first gives an empty completion: it scores (a wrong answer), but
    no SFT row or pair can hold it, so it is left out and counted."""
    msg = lambda t: [{"role": "assistant", "content": t}]  # noqa: E731
    groups = [group("p", ("", 0.0), ("5", 1.0), ("  ", 0.0)),            # only one left: no pair
              group("q", ("7", 1.0), ("", 1.0), ("8", 0.0)),
              group("r", (msg(""), 1.0), (msg("9"), 0.0), (msg("3"), 0.5))]
    pairs, counts = preference_pairs(groups)
    assert [(r["chosen"], r["rejected"]) for r in pairs] == [("7", "8"), (msg("3"), msg("9"))]
    assert counts["empty"] == 4 and counts["too_few_scored"] == 1
    rows, kept = rejection_sample(groups, threshold=1.0, max_per_prompt=3)
    assert [r["completion"] for r in rows] == ["5", "7"] and kept["empty"] == 4


def test_several_pairs_per_prompt_pair_the_best_with_distinct_worse_samples_worst_first():
    groups = [group("a", ("4", 0.0), ("5", 1.0), ("6", 0.5), (" 4", 0.0), ("7", 0.0), ("5 ", 1.0),
                    ("8", 0.9), solution="5"),
              group("b", ("x", 1.0), ("y", 0.0))]
    rows, counts = preference_pairs(groups, pairs_per_prompt=3)
    # "4" and " 4" read the same; the best's own text ("5 ") is never a rejected one
    assert [(r["prompt"], r["chosen"], r["rejected"], r["rejected_reward"]) for r in rows] == [
        ("a", "5", "4", 0.0), ("a", "5", "7", 0.0), ("a", "5", "6", 0.5), ("b", "x", "y", 0.0)]
    assert all(r["solution"] == "5" for r in rows[:3]) and counts["pairs"] == 4
    # the margin rule holds for every pair: 0.5 - 0.9 is below 0.6, so only the wrong answers
    rows, _ = preference_pairs(groups[:1], min_margin=0.6, pairs_per_prompt=5)
    assert [r["rejected"] for r in rows] == ["4", "7"]
    # one pair a prompt is the default and what it always was
    assert preference_pairs(groups)[0] == preference_pairs(groups, pairs_per_prompt=1)[0]
    assert [r["rejected"] for r in preference_pairs(groups)[0]] == ["4", "y"]
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="pairs_per_prompt must be an integer >= 1"):
            preference_pairs(groups, pairs_per_prompt=bad)
