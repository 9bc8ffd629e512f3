"""The offline reward bench on small files: statistics, zero-variance flags, extremes, the scored
file, a GRPO run's logged completions, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.bench import BenchError, load_samples, main

ROWS = [
    # group 1+2=: accuracy varies; group 5+5=: every sample right (zero variance)
    {"prompt": "1+2=", "completion": "3", "solution": "3"},
    {"prompt": "1+2=", "completion": "<answer>4</answer>", "solution": "3"},
    {"prompt": "1+2=", "completion": "<answer>3</answer>", "solution": "3"},
    {"prompt": "5+5=", "completion": "10", "solution": "10"},
    {"prompt": "5+5=", "completion": "it is 10", "solution": "10"},
]


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bench_scores_a_file(samples: Path, capsys: pytest.CaptureFixture) -> None:
    out = samples.with_name("out.jsonl")
    code = main(["score", str(samples), "rewards=arithmetic", "+rewards.fmt.fn=tag_format",
                 "+rewards.fmt.weight=0.5", "+rewards.fmt.kwargs={tags: [answer], partial: 0}",
                 "--out", str(out), "--top", "1", "--width", "200"])
    assert code == 0
    printed = capsys.readouterr().out
    scored = read_jsonl(out)
    assert [r["rewards/accuracy"] for r in scored] == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert [r["rewards/fmt"] for r in scored] == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert [r["reward"] for r in scored] == [1.0, 0.5, 1.5, 1.0, 1.0]
    assert scored[0]["solution"] == "3" and "_source" not in scored[0]
    # statistics row: accuracy mean 0.8, one of two groups with zero variance (flagged at 50%)
    acc_line = next(line for line in printed.splitlines() if "│ accuracy" in line)
    assert "0.800" in acc_line and "1/2 (50%) ⚠" in acc_line
    assert "zero variance" in printed and "accuracy, fmt" in printed
    highest = printed.split("highest scored samples")[1].split("lowest scored samples")[0]
    lowest = printed.split("lowest scored samples")[1]
    assert "samples.jsonl:2" in highest and "samples.jsonl:1" in lowest
    assert not list(samples.parent.glob(".out.jsonl.*"))  # no temporary left behind


def test_bench_rescores_a_grpo_run_folder(tmp_path: Path) -> None:
    """The layout a GRPO run writes: config.yaml + completions/completions_<step>.parquet with
    trl's table columns and the dataset columns copied into it by the registry."""
    import pandas as pd

    run = tmp_path / "run"
    (run / "completions").mkdir(parents=True)
    (run / "config.yaml").write_text(
        "trainer:\n  max_completion_length: 8\nrewards:\n  accuracy:\n    fn: accuracy\n    weight: 1.0\n"
    )
    chat = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    for step, answers in ((1, ["3", "4"]), (2, ["3", "3"])):
        pd.DataFrame({
            "step": [step] * 2, "prompt": [chat("user", "1+2=")] * 2,
            "completion": [chat("assistant", a) for a in answers],
            "accuracy": [0.0, 0.0], "solution": ["3", "3"], "advantage": [0.1, -0.1],
        }).to_parquet(run / "completions" / f"completions_{step:05d}.parquet")
    assert main(["score", str(run), "rewards.accuracy.weight=2"]) == 0
    scored = read_jsonl(run / "completions.scored.jsonl")
    assert [r["rewards/accuracy"] for r in scored] == [1.0, 0.0, 1.0, 1.0]
    assert [r["reward"] for r in scored] == [2.0, 0.0, 2.0, 2.0]
    assert scored[0]["accuracy"] == 0.0  # the score logged during training is kept as it was


def test_bench_tokenizer_and_error_policy(samples: Path, tmp_path: Path, tiny_base_path) -> None:
    user = tmp_path / "user.py"
    user.write_text("def picky(completions, **kw):\n"
                    "    if any('it is' in c for c in completions):\n        raise ValueError('no')\n"
                    "    return [1.0] * len(completions)\n")
    out = tmp_path / "scored.parquet"
    assert main(["score", str(samples), f"+rewards.p.fn={user}:picky", "+rewards.p.on_error=none",
                 "+rewards.r.fn=repetition", "+rewards.r.kwargs={ngram_size: 1}",
                 "--tokenizer", str(tiny_base_path), "--out", str(out)]) == 0
    import pyarrow.parquet as pq

    scored = pq.read_table(out).to_pylist()
    assert [r["rewards/p"] for r in scored] == [1.0, 1.0, 1.0, 1.0, None]
    assert all(r["rewards/r"] <= 0 for r in scored)


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ('{"prompt": "x"}\n', ["rewards=arithmetic"], "row 0: no 'completion' field"),
        ('{"completion": "x"}\nnot json\n', ["rewards=arithmetic"], "line 2: not valid JSON"),
        ('{"completion": "x"}\n', [], "no rewards to score with"),
        ('{"completion": "x"}\n', ["rewards=arithmtic"], "rewards config"),
        ('{"completion": "x"}\n', ["rewards=math"], r"\+trainer.max_completion_length"),
        ('{"completion": "x"}\n', ["+rewards.a.fn=acuracy"], "did you mean 'accuracy'"),
    ],
)
def test_bench_errors(tmp_path: Path, content: str, args: list, message: str,
                      capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert main(["score", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and __import__("re").search(message, err), err
    assert not path.with_name("bad.scored.jsonl").exists()


def test_a_reward_that_breaks_its_contract_is_one_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """A NaN score under on_error: raise (the default): the gate's message, no traceback."""
    user = tmp_path / "user.py"
    user.write_text("def nan(completions, **kw):\n    return [float('nan')] * len(completions)\n")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"completion": "x"}\n')
    assert main(["score", str(path), f"+rewards.n.fn={user}:nan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nan" in err.lower() and len(err.splitlines()) == 1, err
    assert not path.with_name("bad.scored.jsonl").exists()


def test_load_samples_errors(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no such file"):
        load_samples(tmp_path / "missing.jsonl")
    with pytest.raises(BenchError, match="log_completions=true"):
        load_samples(tmp_path)


@pytest.mark.slow
def test_bench_command_line(samples: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rewards", "score", str(samples), "+rewards.acc.fn=accuracy"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "acc" in result.stdout and "scored file:" in result.stdout
    assert len(read_jsonl(samples.with_name("samples.scored.jsonl"))) == 5


def test_bench_help_example_works_without_a_tokenizer(tmp_path: Path) -> None:
    """The `--help` example, typed as a user would: from another folder, a relative path, no
    --tokenizer (token-based rewards then count whitespace-separated words, and it says so)."""
    (tmp_path / "data").mkdir()
    rows = [
        {"prompt": "1+2=", "completion": "<think>easy</think><answer>3</answer>", "solution": "3"},
        {"prompt": "1+2=", "completion": " ".join(["word"] * 200) + " 3", "solution": "3"},
    ]
    (tmp_path / "data" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = subprocess.run(
        [sys.executable, "-m", "rewards", "score", "data/samples.jsonl", "rewards=math",
         "+trainer.max_completion_length=256", "--width", "200"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "no --tokenizer" in result.stdout and "count words" in result.stdout
    scored = read_jsonl(tmp_path / "data" / "samples.scored.jsonl")
    assert [r["rewards/accuracy"] for r in scored] == [1.0, 1.0]
    # overlong (256 max, soft cache 128): 1 word is fine, 201 words are 73 into the cache
    assert [r["rewards/overlong"] for r in scored] == pytest.approx([0.0, -73 / 128])


def test_word_ids_stand_in_for_tokens() -> None:
    from rewards.bench import word_ids

    vocabulary: dict[str, int] = {}
    assert word_ids("a b  a\nc", vocabulary) == [0, 1, 0, 2]
    assert word_ids("c a", vocabulary) == [2, 0] and word_ids("", vocabulary) == []


def test_bench_scores_multi_turn_tool_completions(tmp_path: Path) -> None:
    """Logged tool-calling completions (assistant call, tool answer, assistant answer): the final
    assistant turn is the answer; a number in the tool's turn never counts, and a rollout cut off
    after its call scores 0 even though the tool's answer was right."""
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
        "name": "calculator", "arguments": {"expression": "917*707"}}}]}
    tool = {"role": "tool", "name": "calculator", "content": "648319"}
    rows = [{"prompt": [{"role": "user", "content": "917*707="}], "solution": "648319",
             "completion": completion} for completion in (
        [call, tool, {"role": "assistant", "content": "648319"}],  # right
        [call, tool, {"role": "assistant", "content": "648391"}],  # miscopied
        [call, tool],                                              # cut off after the call
        [{"role": "assistant", "content": "\\boxed{917*707}"}],    # the question restated
    )]
    (tmp_path / "logged.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "rewards", "score", "logged.jsonl", "rewards=arithmetic"],
        cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    scored = read_jsonl(tmp_path / "logged.scored.jsonl")
    assert [r["rewards/accuracy"] for r in scored] == [1.0, 0.0, 0.0, 0.0]
