"""One gate for every reward value (configured rewards and environments' get_reward), the
environments' failures as one line, and metrics files as strict JSON.

Units for the gate and the files; GRPO runs as a user types them (subprocess, files of their
own beside the command) for what only a run shows.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from align.files import NonFiniteValueError, restore_nonfinite, write_json, write_jsonl
from align.measure.diagnosis import diagnose, read_history
from rewards.registry import BoundReward, RewardError, build_rewards
from tools.registry import ToolConfigError, check_environment, environment_reward

REPO = Path(__file__).resolve().parents[1]

REWARDS = '''
import math


def odd(completions, **kwargs):
    """The score of each completion is given by its text: a number, nan, inf ..."""
    return [_value(c) for c in completions]


def _value(text):
    if text == "huge":
        return 10 ** 400
    if text == "np-nan":
        import numpy
        return numpy.float32("nan")
    return None if text == "none" else float(text)


def batch_only(completions, **kwargs):
    """Fails on any batch of more than one completion; scores each one alone."""
    if len(completions) > 1:
        raise RuntimeError("cannot batch")
    return [1.0 for _ in completions]
'''


@pytest.fixture
def user_rewards(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return path


class Metrics:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def __call__(self, name: str, value: float) -> None:
        self.logged[name] = value


# --------------------------------------------------------------------------- the gate


@pytest.mark.parametrize(("text", "shown"), [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"),
                                             ("np-nan", "nan"), ("huge", "1000000")])
def test_a_non_finite_score_stops_the_default_policy_naming_reward_and_sample(
        user_rewards, text, shown):
    (bound,), _ = build_rewards({"mine": {"fn": f"{user_rewards}:odd"}})
    with pytest.raises(RewardError) as info:
        bound(completions=["1", text, "0.5"])
    message = str(info.value)
    assert f"reward 'mine' ({user_rewards}:odd) returned a non-finite score at sample 1: " in message
    assert shown in message and f"completion: '{text}'" in message
    assert "on_error: none or zero" in message  # the fix


@pytest.mark.parametrize(("policy", "fill"), [("none", None), ("zero", 0.0)])
def test_non_finite_scores_follow_the_policy_and_are_counted(user_rewards, policy, fill, caplog):
    bound = BoundReward(f"{user_rewards}:odd", name="mine", on_error=policy)
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="rewards.registry"):
        scores = bound(completions=["1", "nan", "inf", "none", "-inf"], log_metric=metrics)
    assert scores == [1.0, fill, fill, None, fill]  # "none" stays not applicable
    assert bound.errors == 3
    assert metrics.logged == {"rewards/mine/error_frac": 0.6, "rewards/mine/nonfinite_frac": 0.6,
                              "rewards/mine/batch_error_frac": 0.0}
    warned = [r.getMessage() for r in caplog.records]
    assert sum("returned a non-finite score" in m for m in warned) == 3
    assert any("failed on sample 2 of 5" in m and "inf" in m for m in warned)


def test_a_batch_that_raises_leaves_a_trace_when_every_sample_then_scores(user_rewards, caplog):
    bound = BoundReward(f"{user_rewards}:batch_only", name="b", on_error="none")
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="rewards.registry"):
        assert bound(completions=["a", "b", "c"], log_metric=metrics) == [1.0, 1.0, 1.0]
    assert metrics.logged["rewards/b/batch_error_frac"] == 1.0
    assert metrics.logged["rewards/b/error_frac"] == 0.0
    assert bound.batch_errors == 1
    assert any("raised on the batch of 3 (RuntimeError: cannot batch)" in r.getMessage()
               for r in caplog.records)
    bound(completions=["a"], log_metric=metrics)  # a batch of one does not raise
    assert metrics.logged["rewards/b/batch_error_frac"] == 0.0


class Board:
    def __init__(self, score):
        self.score = score

    def reset(self, **kwargs):
        pass

    def get_reward(self) -> float:
        return self.score


def test_an_environments_reward_passes_the_same_gate():
    gated = environment_reward(Board)
    assert gated(completions=["a", "b"], environments=[Board(1), Board(0.5)]) == [1.0, 0.5]
    assert gated.__name__ == "Board"  # logged under the class name, as trl does
    with pytest.raises(RewardError, match=r"reward 'Board' \(environment .*Board.get_reward\) "
                                          r"returned a non-finite score at sample 1: inf"):
        gated(completions=["a", "b"], environments=[Board(1), Board(math.inf)])
    with pytest.raises(RewardError, match="non-number at sample 0: True"):
        gated(completions=["a"], environments=[Board(True)])


# --------------------------------------------------------------------------- files


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_align_never_writes_bare_nan(tmp_path):
    with pytest.raises(NonFiniteValueError, match=r"stats.json: the value at /heldout/accuracy "
                                                  r"is nan"):
        write_json(tmp_path / "stats.json", {"heldout": {"accuracy": float("nan")}})
    assert not (tmp_path / "stats.json").exists()
    # what a library logged: null, with a note that gives the value back
    write_json(tmp_path / "metrics.json", {"train": {"train_loss": np.float32("inf")}, "n": 3},
               nonfinite="note")
    parsed = strict_loads((tmp_path / "metrics.json").read_text())
    assert parsed == {"train": {"train_loss": None}, "n": 3,
                      "nonfinite": {"/train/train_loss": "inf"}}
    assert restore_nonfinite(parsed) == {"train": {"train_loss": math.inf}, "n": 3}


def test_a_nan_loss_in_the_log_is_strict_json_and_still_found_by_the_doctor(tmp_path):
    history = [{"loss": 1.0, "grad_norm": 0.5, "step": 1},
               {"loss": float("nan"), "grad_norm": float("inf"), "step": 2}]
    write_jsonl(tmp_path / "log_history.jsonl", history, nonfinite="note")
    rows = [strict_loads(line) for line in
            (tmp_path / "log_history.jsonl").read_text().splitlines()]
    assert rows[1]["loss"] is None and rows[1]["nonfinite"] == {"/loss": "nan",
                                                                 "/grad_norm": "inf"}
    read, _ = read_history(tmp_path)
    assert math.isnan(read[1]["loss"]) and "nonfinite" not in read[1]
    assert [f.name for f in diagnose(read).findings] == ["nan_loss"]


def test_the_doctors_report_of_a_nan_log_is_strict_json(tmp_path):
    from align.measure.diagnosis import write_report

    history = [{"frac_reward_zero_std": 1.0, "reward_std": float("nan"), "step": s}
               for s in range(1, 7)]
    diagnosis = diagnose(history)
    assert [f.name for f in diagnosis.findings] == ["zero_reward_spread"]
    report = strict_loads(write_report(tmp_path, diagnosis, "training").read_text())
    assert report["findings"][0]["evidence"]["reward_std_mean"] is None
    assert report["nonfinite"] == {"/findings/0/evidence/reward_std_mean": "nan"}


# --------------------------------------------------------------------------- environments


ENVS = '''
class Calc:
    """Multiplies; each failure is switched on by a class attribute the test sets."""

    fail = None
    made = 0

    def __init__(self):
        Calc.made += 1
        if self.fail == "__init__" or (self.fail == "second __init__" and Calc.made > 1):
            raise OSError("no licence left")

    def reset(self, **kwargs):
        self.calls = 0
        if self.fail == "reset":
            raise ValueError("no board for this row")

    def calculator(self, expression: str) -> str:
        """Multiply two numbers.

        Args:
            expression: two numbers joined by *.
        """
        self.calls += 1
        a, b = expression.split("*")
        return str(int(a) * int(b))

    def get_reward(self) -> float:
        if self.fail == "get_reward":
            raise KeyError("score")
        return float("nan") if self.fail == "nan reward" else float(self.calls == 1)


class NotCallableReset(Calc):
    reset = "fresh"


class ClassmethodReset(Calc):
    @classmethod
    def reset(cls, **kwargs):
        pass
'''


def env_file(tmp_path: Path, fail: str | None, name: str = "envs.py") -> Path:
    (tmp_path / name).write_text(ENVS + f"\nCalc.fail = {fail!r}\n")
    return tmp_path / name


def test_environment_setup_checks(tmp_path, monkeypatch):
    from tools.registry import resolve_environment

    monkeypatch.chdir(tmp_path)

    env_file(tmp_path, "__init__")
    with pytest.raises(ToolConfigError, match=r"environment 'e': constructing one raised OSError: "
                                              r"no licence left \(at .*envs.py:\d+\)"):
        check_environment(resolve_environment("envs.py:Calc"), "e")
    env_file(tmp_path, None, "good_envs.py")  # a file is imported once per process
    for cls, match in [("NotCallableReset", r"NotCallableReset.reset is a str, which is not "
                                            r"callable; trl calls reset\(\*\*row\)"),
                       ("ClassmethodReset", r"ClassmethodReset.reset is a method, not a method "
                                            r"defined on the class")]:
        with pytest.raises(ToolConfigError, match=match) as info:
            check_environment(resolve_environment(f"good_envs.py:{cls}"), "e")
        assert "did you mean" not in str(info.value)
    with pytest.raises(ToolConfigError, match=r"method 'calculator' of Calc has the name of the "
                                              r"tool tools.calculator"):
        check_environment(resolve_environment("good_envs.py:Calc"), "e", ["calculator"])
    check_environment(resolve_environment("good_envs.py:Calc"), "e", ["python"])


def grpo(cwd: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "align" / "grpo.py"), *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=timeout)


TINY_ENV_RUN = ("experiment=tiny_tools", "tools=none", "environment=envs.py:Calc",
                "trainer.max_steps=1", "trainer.save_strategy=no",
                "trainer.per_device_train_batch_size=8", "trainer.num_generations=4",
                "logger=none", "trainer.dynamic_sampling=false", "output_dir=run")


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0].split("error: ", 1)[1]


@pytest.mark.parametrize(("args", "expected"), [
    (["environment=envs.py:Calc", "tools=calculator"],
     "environment: environment 'envs.py:Calc': method 'calculator' of Calc has the name of the "
     "tool tools.calculator"),
    (["environment=envs.py:NotCallableReset"], "NotCallableReset.reset is a str, which is not "
                                               "callable"),
])
def test_environment_config_errors_at_setup(tmp_path, args, expected):
    env_file(tmp_path, None)
    line = one_error_line(grpo(tmp_path, "experiment=tiny_tools", "logger=none", *args,
                               "output_dir=run"))
    assert expected in line
    assert not (tmp_path / "run").exists()


def test_an_environment_that_cannot_be_constructed_fails_at_setup(tmp_path):
    env_file(tmp_path, "__init__")
    line = one_error_line(grpo(tmp_path, *TINY_ENV_RUN))
    assert "environment 'envs.py:Calc': constructing one raised OSError: no licence left" in line
    assert not (tmp_path / "run").exists()


def test_a_reset_that_raises_in_training_is_one_line(tmp_path):
    """trl calls reset inside its generation step: the run ends naming the environment, the
    method, the error and where it was raised."""
    env_file(tmp_path, "reset")
    line = one_error_line(grpo(tmp_path, *TINY_ENV_RUN, "heldout.enabled=false"))
    assert line.startswith("environment Calc: Calc.reset raised ValueError: no board for this "
                           "row (at ")
    assert "envs.py:" in line


@pytest.mark.slow
@pytest.mark.parametrize(("fail", "expected"), [
    ("get_reward", "environment Calc: Calc.get_reward raised KeyError: 'score'"),
    ("nan reward", "reward 'Calc' (environment Calc.get_reward) returned a non-finite score at "
                   "sample 0: nan"),
    ("second __init__", "environment Calc: Calc.__init__ raised OSError: no licence left"),
])
def test_an_environment_failing_in_training_is_one_line(tmp_path, fail, expected):
    env_file(tmp_path, fail)
    line = one_error_line(grpo(tmp_path, *TINY_ENV_RUN, "heldout.enabled=false"))
    assert line.startswith(expected), line


@pytest.mark.slow
@pytest.mark.parametrize(("fail", "expected"), [
    ("reset", "environment Calc: Calc.reset raised ValueError: no board for this row"),
    ("nan reward", "reward 'Calc' (environment Calc.get_reward) returned a non-finite score at "
                   "sample 0: nan"),
])
def test_an_environment_failing_in_heldout_measurement_is_one_line(tmp_path, fail, expected):
    """The held-out measurement before training runs the environment as training does."""
    env_file(tmp_path, fail)
    line = one_error_line(grpo(tmp_path, *TINY_ENV_RUN, "heldout.max_samples=8"))
    assert line.startswith(expected), line


# --------------------------------------------------------------------------- a run


NAN_SOMETIMES = '''
from rewards import completion_text


def flaky(completions, **kwargs):
    """NaN for every other completion."""
    return [float("nan") if i % 2 else len(completion_text(c)) / 100
            for i, c in enumerate(completions)]
'''

DEFAULT_RUN = ("trainer.max_steps=2", "trainer.logging_steps=1", "trainer.save_strategy=no",
               "logger=none", "heldout.enabled=false", "trainer.dynamic_sampling=false",
               "+rewards.flaky.fn=my_rewards.py:flaky", "output_dir=run")


def test_a_nan_reward_stops_the_default_policy_with_one_line(tmp_path):
    (tmp_path / "my_rewards.py").write_text(NAN_SOMETIMES)
    line = one_error_line(grpo(tmp_path, *DEFAULT_RUN))
    assert line.startswith("reward 'flaky' (my_rewards.py:flaky) returned a non-finite score at "
                           "sample "), line


def test_a_nan_reward_under_on_error_zero_is_counted_and_named_by_the_doctor(tmp_path):
    (tmp_path / "my_rewards.py").write_text(NAN_SOMETIMES)
    proc = grpo(tmp_path, *DEFAULT_RUN, "+rewards.flaky.on_error=zero")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    rows = [strict_loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    fractions = [r["rewards/flaky/nonfinite_frac"] for r in rows
                 if "rewards/flaky/nonfinite_frac" in r]
    assert fractions and all(0 < f <= 1 for f in fractions)
    assert all(math.isfinite(r["rewards/flaky/mean"]) for r in rows if "rewards/flaky/mean" in r)
    doctor = strict_loads((run / "doctor.json").read_text())
    assert "reward_nonfinite" in [f["name"] for f in doctor["findings"]]
    assert ("doctor: reward_nonfinite: reward flaky returned non-finite values"
            in proc.stdout + proc.stderr)
    strict_loads((run / "metrics.json").read_text())
