"""Evaluation: pass@k against hand-computed values, the eval job's outputs and determinism."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from align.errors import ConfigError
from align.measure.metrics import length_stats, mean_pass_at_k, pass_at_k
from align.run.conf import CONF_DIR, register

register()
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 2 / 5),                  # pass@1 is the share correct
    (5, 2, 2, 1 - 3 / 10),             # 1 - C(3,2)/C(5,2)
    (5, 2, 3, 1 - 1 / 10),             # 1 - C(3,3)/C(5,3)
    (5, 2, 4, 1.0),                    # fewer than k wrong samples: always a correct one
    (10, 3, 5, 1 - 21 / 252),          # 1 - C(7,5)/C(10,5)
    (20, 1, 10, 0.5),                  # 1 - C(19,10)/C(20,10) = 1 - 10/20
    (4, 0, 2, 0.0),
    (4, 4, 1, 1.0),
    (200, 37, 100, 1 - 0.0),           # C(163,100)/C(200,100) is ~1e-13: rounds to 1
])
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_mean_pass_at_k_and_length_stats():
    # two problems, 4 samples each: 1 and 3 correct -> pass@2 = mean(1 - 3/6, 1 - 0/6)
    assert mean_pass_at_k([1, 3], 4, 2) == pytest.approx((0.5 + 1.0) / 2)
    stats = length_stats([1, 2, 3, 8], limit=8)
    assert stats == {"completion_tokens_mean": 3.5, "completion_tokens_median": 2.5,
                     "completion_tokens_max": 8.0, "truncated_rate": 0.25}


def compose_eval(tmp_path, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("eval", overrides=[f"output_dir={tmp_path}", "eval.max_samples=24",
                                          *overrides])


SAMPLED = ["eval.n=4", "eval.k=[1,2,4]", "eval.temperature=1.0", "eval.max_new_tokens=5"]


def test_eval_writes_scored_completions_and_a_consistent_summary(tmp_path):
    from align.eval import run

    summary = run(compose_eval(tmp_path, *SAMPLED))
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 * 4
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    # The summary is computed from the rows, and the rows from the reward function.
    for row in rows:
        assert row["correct"] == (row["completion"] == row["solution"])
        assert row["rewards"]["accuracy"] == float(row["correct"])
        assert row["tokens"] <= 5 and row["truncated"] == (row["tokens"] >= 5)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    assert summary["pass@1"] == pytest.approx(summary["accuracy"])
    counts = [sum(r["correct"] for r in rows if r["index"] == i) for i in range(24)]
    assert summary["pass@4"] == pytest.approx(sum(c > 0 for c in counts) / 24)
    assert summary["pass@1"] <= summary["pass@2"] <= summary["pass@4"]
    # The warm-up model answers about half the problems: sampling at T=1 varies between samples.
    assert 0 < summary["accuracy"] < summary["pass@4"]


def test_eval_is_repeatable_with_a_seed(tmp_path):
    from align.eval import run

    first = run(compose_eval(tmp_path / "a", *SAMPLED, "seed=3"))
    second = run(compose_eval(tmp_path / "b", *SAMPLED, "seed=3"))
    other = run(compose_eval(tmp_path / "c", *SAMPLED, "seed=4"))
    texts = [(tmp_path / d / "completions.jsonl").read_text() for d in "abc"]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]  # the seed is what makes them equal
    drop = lambda s: {k: v for k, v in s.items() if k != "seconds"}
    assert drop(first) == drop(second) and drop(first) != drop(other)


@pytest.mark.parametrize("overrides,message", [
    (["eval.n=4"], "identical samples: set eval.temperature"),
    (["eval.n=2", "eval.temperature=1", "eval.k=[1,4]"], "each k must be in [1, eval.n=2]"),
    (["eval.backend=triton"], "eval.backend='triton': choose one of hf, vllm"),
    (["+eval.temprature=1"], "unknown config key 'eval.temprature'"),
    (["rewards.accuracy.fn=acuracy"], "rewards"),
])
def test_bad_eval_config_fails_before_loading(tmp_path, overrides, message):
    from align.eval import prepare

    with pytest.raises(ConfigError, match=None) as info:
        prepare(compose_eval(tmp_path, *overrides))
    assert message in str(info.value)
    assert not any(tmp_path.iterdir())


def test_eval_of_a_folder_that_is_no_run_names_it(tmp_path):
    from align.eval import prepare

    with pytest.raises(ConfigError, match="not a run folder"):
        prepare(compose_eval(tmp_path / "out", f"run_dir={tmp_path}"))


@pytest.mark.slow
def test_eval_command_line(tmp_path):
    out = tmp_path / "res"
    done = subprocess.run(
        [sys.executable, str(REPO / "align" / "eval.py"), "eval.max_samples=16",
         f"hydra.run.dir={out}"],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accuracy:" in done.stdout and (out / "summary.json").is_file()
    bad = subprocess.run(
        [sys.executable, str(REPO / "align" / "eval.py"), "eval.n=3", f"hydra.run.dir={out}2"],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "eval.temperature" in bad.stderr
    assert not (tmp_path / "res2").exists()


# ------------------------------------------------------------ run_dir= with data overrides
def problems(first: int, n: int) -> str:
    return "".join(json.dumps({"prompt": f"{a}+{a + 1}=", "completion": str(2 * a + 1)}) + "\n"
                   for a in range(first, first + n))


@pytest.fixture(scope="module")
def run_without_heldout(tmp_path_factory):
    """A 2-step SFT run of the tiny model on a local file with no held-out split, and a
    held-out file of 7 other problems beside it."""
    from align import sft

    root = tmp_path_factory.mktemp("eval_run")
    (root / "train.jsonl").write_text(problems(0, 64))
    (root / "heldout.jsonl").write_text(problems(70, 7))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sft", overrides=[
            "data=local", f"data.path={root / 'train.jsonl'}", "trainer.max_steps=2",
            "trainer.per_device_train_batch_size=8", "trainer.save_strategy=no", "logger=none",
            f"output_dir={root / 'run'}"])
    sft.run(cfg)
    return root


def test_run_dir_takes_the_runs_data_with_the_command_lines_data_overrides(run_without_heldout,
                                                                          tmp_path):
    from align.eval import prepare

    root = run_without_heldout
    train = str(root / "train.jsonl")

    def data_of(*overrides):
        overrides = [f"run_dir={root / 'run'}", *overrides]
        return prepare(compose_eval(tmp_path, *overrides), overrides=overrides).data

    assert (data_of().path, data_of().eval_path) == (train, None)  # the run's own section
    data = data_of("data.eval_path=heldout.jsonl", "data.max_eval_samples=3")
    assert (data.name, data.path, data.eval_path, data.max_eval_samples) == (
        "local", train, "heldout.jsonl", 3)  # the user's keys on top of the run's
    data = data_of("data=arithmetic", "data.synthetic.n_eval=9")  # a choice replaces it whole
    assert (data.path, data.synthetic["n_eval"]) == ("synthetic:arithmetic", 9)


@pytest.mark.slow
def test_eval_command_line_on_a_run_folder_with_another_heldout_file(run_without_heldout):
    """As typed from the folder holding the run: relative paths. The error that names
    data.eval_path is followed, and then the given file's prompts are what is evaluated."""
    root = run_without_heldout
    command = [sys.executable, str(REPO / "align" / "eval.py"), "run_dir=run"]
    bad = subprocess.run([*command, "hydra.run.dir=res1"], check=False, capture_output=True,
                         text=True, cwd=root, timeout=300)
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines()[-1].startswith("error: data ")
    assert "set data.eval_path" in bad.stderr and "Traceback" not in bad.stderr
    done = subprocess.run([*command, "data.eval_path=heldout.jsonl", "hydra.run.dir=res2"],
                          check=False, capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((root / "res2" / "summary.json").read_text())
    assert summary["prompts"] == 7 and summary["run_dir"] == "run"
    rows = [json.loads(line) for line in (root / "res2" / "completions.jsonl").open()]
    assert [r["prompt"] for r in rows] == [f"{a}+{a + 1}=" for a in range(70, 77)]


def test_a_reward_with_nothing_to_score_is_left_out_of_the_summary(tmp_path):
    """A reward that scores no sample (None for each: e.g. no answer to check) has no mean in
    summary.json (it was NaN there, which is no JSON), only its count of 0."""
    from align.eval import run

    (tmp_path / "never.py").write_text(
        "def never(completions, **kwargs):\n    return [None] * len(completions)\n")
    summary = run(compose_eval(tmp_path / "out", "eval.max_samples=4", "eval.max_new_tokens=3",
                               f"+rewards.never.fn={tmp_path / 'never.py'}:never"))
    assert summary["rewards"]["never/n"] == 0 and "never" not in summary["rewards"]
    assert summary["rewards"]["accuracy/n"] == 4 and "accuracy" in summary["rewards"]

    def no_nan(name):
        raise AssertionError(f"summary.json holds {name}")

    json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=no_nan)


def _soft_overlong(tokens: int, limit: int = 4, cache: int = 2) -> float:
    """DAPO's soft overlong punishment by hand: 0, then linearly down to -1 at the limit."""
    if tokens <= limit - cache:
        return 0.0
    return (limit - cache - tokens) / cache if tokens <= limit else -1.0


OVERLONG = ["+rewards.long.fn=overlong", "+rewards.long.kwargs.max_completion_len=4",
            "+rewards.long.kwargs.soft_punish_cache=2"]


def test_token_rewards_score_eval_samples_as_in_training(tmp_path):
    """A reward that counts tokens (`overlong`, in the shipped math rewards) gets the
    completions' token ids as GRPOTrainer gives them; eval called it without and stopped."""
    from align.eval import run

    summary = run(compose_eval(tmp_path, "eval.max_samples=6", "eval.n=2",
                               "eval.temperature=1.0", "eval.max_new_tokens=5", *OVERLONG))
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [r["rewards"]["long"] for r in rows] == [_soft_overlong(r["tokens"]) for r in rows]
    assert summary["rewards"]["long/n"] == 12


def test_token_rewards_score_heldout_completions_as_in_training(tiny_sft_path):
    """Held-out measurement (every stage's before/after) calls its rewards with the completions'
    token ids too: `experiment=qwen_gsm8k_grpo` stopped at its first measurement without them."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.measure.heldout import HeldoutConfig, evaluate_with_samples, token_ids
    from rewards.registry import build_rewards

    tokenizer = AutoTokenizer.from_pretrained(tiny_sft_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_sft_path)
    prompts = [[{"role": "user", "content": f"{a}+{a}="}] for a in (3, 17, 42, 88)]
    data = Dataset.from_dict({"prompt": prompts, "solution": [str(2 * a) for a in (3, 17, 42, 88)]})
    funcs, _ = build_rewards({"long": {"fn": "overlong", "kwargs": {"max_completion_len": 4,
                                                                    "soft_punish_cache": 2}}})
    figures, rows = evaluate_with_samples(model, tokenizer, data, funcs,
                                          HeldoutConfig(max_new_tokens=6))
    lengths = [len(ids) for ids in token_ids(tokenizer, [r["completion"] for r in rows])]
    assert [r["long"] for r in rows] == [_soft_overlong(n) for n in lengths]
    assert figures["long"] == pytest.approx(sum(_soft_overlong(n) for n in lengths) / 4)
