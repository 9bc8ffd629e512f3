"""The run doctor (align.measure.diagnosis, python -m align.doctor): on real tiny runs of the
project's own entry points, each sickness it names fires, a healthy run fires none, and the CLI
reads run folders and plain trl output_dirs. The thresholds' window logic is checked on
hand-written histories (one noisy point is never a finding)."""

import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir

from align import dpo, grpo
from align.errors import ConfigError
from align.measure.callbacks import DoctorCallback
from align.measure.diagnosis import DoctorConfig, diagnose, read_history
from align.run.conf import CONF_DIR, register

register()
REPO = Path(__file__).resolve().parent.parent

ONE = '''
def one(completions, **kwargs):
    """The same reward for every completion: GRPO's advantages are all zero."""
    return [1.0] * len(completions)
'''


def compose_run(stage, out, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[
            "trainer.logging_steps=1", "trainer.warmup_steps=0", "trainer.save_strategy=no",
            "logger=none", "heldout.enabled=false", "data.max_samples=256", f"output_dir={out}",
            *overrides])


def grpo_run(out, *overrides):
    # 2 prompts x 4 samples per step: seconds per step on 2 cores
    return grpo.run(compose_run("grpo", out, "trainer.max_steps=4", "doctor.window=3",
                                "trainer.per_device_train_batch_size=8",
                                "trainer.num_generations=4", *overrides))


def report(run_dir):
    return json.loads((run_dir / "doctor.json").read_text())


def names(run_dir):
    return [f["name"] for f in report(run_dir)["findings"]]


def warnings_of(caplog, name):
    return [r for r in caplog.records if r.levelno == logging.WARNING
            and r.getMessage().startswith(f"doctor: {name}:")]


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """The default GRPO (exact-answer reward on a+b, the SFT warm-up model), 6 steps with the
    default doctor thresholds."""
    out = tmp_path_factory.mktemp("healthy")
    grpo.run(compose_run("grpo", out, "trainer.max_steps=6",
                         "trainer.per_device_train_batch_size=16", "trainer.num_generations=4"))
    return out


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    out = tmp_path_factory.mktemp("constant")
    user = out.parent / f"{out.name}_user"
    user.mkdir()
    (user / "my_rewards.py").write_text(ONE)
    # dynamic sampling off (it is on by default): the finding as a run without it sees it
    grpo_run(out / "run", "~rewards.accuracy", f"+rewards.one.fn={user / 'my_rewards.py'}:one",
             "trainer.dynamic_sampling=false")
    return out / "run"


# --------------------------------------------------------------------------- real runs


def test_constant_reward_fires_zero_reward_spread(constant):
    found = {f["name"]: f for f in report(constant)["findings"]}
    assert set(found) == {"zero_reward_spread", "reward_constant"}
    spread = found["zero_reward_spread"]
    assert spread["since_step"] == 1 and spread["until_step"] is None
    assert spread["evidence"]["mean"] == 1.0
    assert "100% of groups have zero reward spread since step 1" in spread["message"]
    assert "num_generations" in spread["fix"] and "python -m rewards score" in spread["fix"]
    assert found["reward_constant"]["evidence"]["reward"] == "one"
    assert found["reward_constant"]["evidence"]["mean"] == 1.0
    history = read_history(constant)[0]
    assert all(h["frac_reward_zero_std"] == 1.0 for h in history if "frac_reward_zero_std" in h)


def test_the_fix_for_zero_spread_names_dynamic_sampling_until_it_is_on(constant, tmp_path):
    fix = {f["name"]: f for f in report(constant)["findings"]}["zero_reward_spread"]["fix"]
    assert fix.startswith("turn on trainer.dynamic_sampling=true")
    # With it on and nothing varying, the groups trained on are what the finding reports.
    user = tmp_path / "user"
    user.mkdir()
    (user / "my_rewards.py").write_text(ONE)
    grpo_run(tmp_path / "run", "~rewards.accuracy", f"+rewards.one.fn={user / 'my_rewards.py'}:one",
             "trainer.dynamic_sampling=true", "trainer.dynamic_sampling_max_rounds=1")
    spread = {f["name"]: f for f in report(tmp_path / "run")["findings"]}["zero_reward_spread"]
    assert spread["evidence"]["metric"] == "dynamic_sampling/zero_spread_kept"
    assert "100% of the groups trained on have zero reward spread" in spread["message"]
    assert "dynamic_sampling_max_rounds" in spread["fix"] and "turn on" not in spread["fix"]


def test_zero_spread_that_dynamic_sampling_replaced_is_not_a_finding():
    history = steps(10, **{**GRPO, "frac_reward_zero_std": 0.8,
                           "dynamic_sampling__zero_spread_kept": 0.0})
    assert diagnose(history).findings == []
    history = steps(10, **{**GRPO, "frac_reward_zero_std": 0.8,
                           "dynamic_sampling__zero_spread_kept": [0.0] * 4 + [0.6] * 6})
    assert [f.name for f in diagnose(history).findings] == ["zero_reward_spread"]


def test_tiny_completion_length_fires_truncation(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    grpo_run(tmp_path, "trainer.max_completion_length=2")
    found = {f["name"]: f for f in report(tmp_path)["findings"]}
    assert "truncation" in found
    assert found["truncation"]["evidence"]["mean"] >= 0.9
    assert found["truncation"]["evidence"]["max_length"] <= 2
    assert "max_completion_length" in found["truncation"]["fix"]
    # warned once during training, not at every later log
    assert len(warnings_of(caplog, "truncation")) == 1


def test_dpo_chosen_likelihood_falling(tmp_path, caplog):
    """Plain DPO (loss_type=[sigmoid]) pushes the rejected answers down and, on this task, the
    chosen ones with them (docs/results.md, Proof of learning: 100 steps). A few steps at the default
    learning rate do not show it yet (rewards/chosen stays within +-0.03 of zero for 24 steps,
    and the doctor stays quiet); a higher one shows it within a few steps."""
    caplog.set_level(logging.WARNING)
    dpo.run(compose_run("dpo", tmp_path, "trainer.loss_type=[sigmoid]", "trainer.max_steps=10",
                        "trainer.per_device_train_batch_size=8", "trainer.learning_rate=3e-3",
                        "doctor.window=3"))
    history = [h for h in read_history(tmp_path)[0] if "rewards/chosen" in h]
    chosen = [h["rewards/chosen"] for h in history]
    # Below the reference over the second half of the run (the step where it turns varies with
    # the CPU's float summation order: step 2 on one machine, step 4 on another).
    fell = len(chosen) >= 8 and all(c < 0 for c in chosen[len(chosen) // 2:])
    assert fell, f"the chosen answers did not get less likely in this run: {chosen}"
    found = {f["name"]: f for f in report(tmp_path)["findings"]}
    assert list(found) == ["chosen_likelihood_falling"]
    finding = found["chosen_likelihood_falling"]
    assert finding["evidence"]["mean"] < 0
    assert "loss_type=[sigmoid,sft]" in finding["fix"]
    assert len(warnings_of(caplog, "chosen_likelihood_falling")) == 1


def test_the_default_dpo_run_of_the_readme_fires_chosen_likelihood_falling():
    """The log of `python align/dpo.py logger=none heldout.enabled=false` (the plain DPO of
    docs/results.md: LoRA, 100 steps of 32 pairs, lr 5e-4, logged every 10 steps), recorded on 2 CPU cores
    on 2026-11-30: logps/chosen fell from -1.86 to -4.03, and the doctor says so with its
    default thresholds, from the step rewards/chosen turned negative."""
    history = [json.loads(line) for line in
               (REPO / "tests/data/dpo_default_log_history.jsonl").read_text().splitlines()]
    finding, = diagnose(history).findings
    assert finding.name == "chosen_likelihood_falling"
    assert (finding.since_step, finding.until_step) == (40, None)
    assert finding.evidence["logps_chosen_last"] < finding.evidence["logps_chosen_first"] - 2


def test_healthy_grpo_fires_nothing(healthy):
    saved = report(healthy)
    assert saved["findings"] == []
    assert saved["source"] == "training"
    assert saved["logged_steps"] == 6
    assert {"nan_loss", "grad_norm_spike", "zero_reward_spread", "reward_constant",
            "truncation", "entropy_collapse"} <= set(saved["checked"])
    assert any(s.startswith("kl_high") for s in saved["skipped"])  # beta=0: no kl logged
    assert json.loads((healthy / "metrics.json").read_text())["doctor"] == []


# --------------------------------------------------------------------------- the CLI


def cli(*args):
    return subprocess.run([sys.executable, "-m", "align.doctor", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_on_a_run_folder(healthy):
    (healthy / "doctor.json").unlink()
    done = cli(healthy)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no findings in 6 logged steps (checked: nan_loss, ")
    assert report(healthy)["source"] == str(healthy / "log_history.jsonl")


def test_cli_on_a_plain_trl_output_dir(constant, tmp_path):
    history = read_history(constant)[0]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    done = cli(tmp_path, "window=3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("zero_reward_spread: 100% of groups have zero reward spread")
    assert lines[-1] == f"written: {tmp_path / 'doctor.json'}"
    assert names(tmp_path) == ["zero_reward_spread", "reward_constant"]
    # with the default window (5 logged steps) 4 steps are too few to call anything
    assert cli(tmp_path).stdout.startswith("no findings in 4 logged steps")


def test_cli_on_a_folder_without_a_log(tmp_path):
    done = cli(tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "no training log here" in done.stderr
    assert not (tmp_path / "doctor.json").exists()
    bad = cli(tmp_path, "windw=3")
    assert bad.returncode == 2 and "Did you mean: window?" in bad.stderr


# --------------------------------------------------------------------------- the checks


def steps(n, **series):
    """A history of n logged steps; each keyword is a list of values (or one value)."""
    return [{"step": i + 1, "loss": 0.1, "grad_norm": 1.0,
             **{k.replace("__", "/"): (v[i] if isinstance(v, list) else v)
                for k, v in series.items()}} for i in range(n)]


GRPO = {"reward": 0.5, "reward_std": 0.4, "entropy": 0.5, "frac_reward_zero_std": 0.1,
        "completions__clipped_ratio": 0.0, "rewards__acc__std": 0.4, "rewards__acc__mean": 0.5}


@pytest.mark.parametrize("name, history", [
    ("zero_reward_spread", steps(10, **{**GRPO, "frac_reward_zero_std": [0.1] * 4 + [0.7] * 6})),
    ("truncation", steps(10, **{**GRPO, "completions__clipped_ratio": [0.0] * 5 + [0.5] * 5})),
    ("entropy_collapse", steps(10, **{**GRPO, "entropy": [0.5] * 5 + [0.01] * 5})),
    ("reward_constant", steps(10, **{**GRPO, "rewards__acc__std": [0.4] * 5 + [0.0] * 5})),
    ("kl_high", steps(10, **GRPO, kl=[0.01] * 4 + [2.0] * 6)),
    ("nan_loss", steps(10, loss=[0.5] * 7 + [math.nan] * 3)),
    ("nan_loss", steps(10, grad_norm=[1.0] * 4 + [math.inf] * 6)),
    ("grad_norm_spike", steps(12, grad_norm=[1.0] * 6 + [50.0, 1.0, 1.0, 60.0, 1.0, 1.0])),
    ("chosen_likelihood_falling", steps(10, rewards__chosen=[0.0] + [-0.05] * 9,
                                        rewards__rejected=-0.2, logps__chosen=-2.0)),
])
def test_a_sustained_pattern_is_a_finding(name, history):
    assert [f.name for f in diagnose(history).findings] == [name]


@pytest.mark.parametrize("history", [
    steps(10, **{**GRPO, "frac_reward_zero_std": [0.1] * 9 + [1.0]}),      # one bad step
    steps(10, **{**GRPO, "completions__clipped_ratio": [0.0] * 8 + [1.0, 0.0]}),
    steps(10, **{**GRPO, "entropy": [0.5] * 9 + [0.0]}),
    steps(10, **{**GRPO, "rewards__acc__std": [0.4] * 6 + [0.0] * 3 + [0.4]}),  # 3 < window
    steps(10, grad_norm=[1.0] * 4 + [math.inf] + [1.0] * 5),                 # fp16 skipped step
    steps(12, grad_norm=[1.0] * 6 + [50.0] + [1.0] * 5),                     # one spike
    # a reward model near the end (measured: norms ~6 through the run, ~0.02 once the pairs are
    # fitted, one hard batch's 23 at the last step): large against the last few, not the run
    steps(30, grad_norm=[6.0] * 20 + [0.02] * 5 + [23.0, 0.02, 0.02, 0.02, 20.0]),
    steps(10, rewards__chosen=[0.0, -0.05, 0.01] * 3 + [-0.05]),             # noise around 0
    steps(10, loss=[2.0 - 0.1 * i for i in range(10)], entropy=[2.0 / (i + 1) for i in range(10)]),
])                                                                           # SFT: entropy falls
def test_one_noisy_point_is_not_a_finding(history):
    assert diagnose(history).findings == []


def test_a_running_run_is_read_from_its_newest_checkpoint(tmp_path):
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"log_history": steps(step)}))
    history, source = read_history(tmp_path)
    assert len(history) == 10 and source == tmp_path / "checkpoint-10" / "trainer_state.json"
    (tmp_path / "log_history.jsonl").write_text(json.dumps(steps(1)[0]) + "\n")
    assert read_history(tmp_path)[0] == steps(1)  # a finished run's own log comes first


def test_findings_say_since_when_and_until_when():
    ratio = [0.0] * 3 + [0.6] * 5 + [0.0] * 5
    finding, = diagnose(steps(13, **{**GRPO, "completions__clipped_ratio": ratio})).findings
    assert (finding.since_step, finding.until_step) == (4, 8)
    assert "from step 4 to 8" in finding.message


def test_doctor_section_is_checked_with_the_config(tmp_path):
    from align.run.spec import decide

    with pytest.raises(ConfigError, match=r"doctor.windw.*Did you mean: window"):
        decide(compose_run("grpo", tmp_path, "+doctor.windw=3"), "grpo")
    with pytest.raises(ConfigError, match=r"doctor.zero_spread_fraction=1.5: a fraction"):
        decide(compose_run("grpo", tmp_path, "doctor.zero_spread_fraction=1.5"), "grpo")
    decided = decide(compose_run("grpo", tmp_path, "doctor.enabled=false"), "grpo")
    assert decided.doctor == DoctorConfig(enabled=False)


def test_callback_reports_to_wandb_when_a_run_is_active(tmp_path):
    """Findings go to the W&B run's summary and as one alert each (a fake run: no network)."""
    alerts = []
    run = SimpleNamespace(summary={}, alert=lambda **kw: alerts.append(kw))
    job = SimpleNamespace(is_main=True, out_dir=tmp_path, metrics={},
                          tracker=SimpleNamespace(run=run))
    callback = DoctorCallback(job, DoctorConfig(window=3))
    state = SimpleNamespace(log_history=[])
    for entry in steps(6, **{**GRPO, "frac_reward_zero_std": 1.0}):
        state.log_history.append(entry)
        callback.on_log(None, state, None)
    callback.on_train_end(None, state, None)
    assert [a["title"] for a in alerts] == ["align doctor: zero_reward_spread"]
    assert run.summary["doctor/findings"] == 1
    assert run.summary["doctor/zero_reward_spread"].startswith("zero_reward_spread: 100%")
    assert names(tmp_path) == ["zero_reward_spread"]


def test_a_log_the_doctor_cannot_read_never_stops_training(tmp_path, caplog):
    """A diagnosis that fails (here: a step logged as text, as no trainer writes it) is said
    once and training goes on; no doctor.json is written from it."""
    job = SimpleNamespace(is_main=True, out_dir=tmp_path, metrics={},
                          tracker=SimpleNamespace(run=None))
    callback = DoctorCallback(job, DoctorConfig(window=3))
    state = SimpleNamespace(log_history=[])
    with caplog.at_level(logging.WARNING, logger="align.measure.callbacks"):
        for entry in steps(6, **GRPO):
            state.log_history.append({**entry, "step": "n/a"})
            callback.on_log(None, state, None)
        callback.on_train_end(None, state, None)
    said = [r.getMessage() for r in caplog.records if "could not read the log" in r.getMessage()]
    assert len(said) == 1, said
    assert not (tmp_path / "doctor.json").exists() and "doctor" not in job.metrics


def test_a_reward_that_returned_non_finite_values_is_named_at_once():
    """One logged step with a non-finite share is a finding (a bug, not noise); a run of zeros
    is not, and the check is skipped when no reward logs the share (on_error: raise)."""
    history = [{"rewards/acc/nonfinite_frac": 0.0, "rewards/judge/nonfinite_frac": 0.0,
                "step": s} for s in range(1, 9)]
    history[5]["rewards/judge/nonfinite_frac"] = 0.25
    (finding,) = [f for f in diagnose(history).findings if f.name == "reward_nonfinite"]
    assert finding.line().startswith(
        "reward_nonfinite: reward judge returned non-finite values (NaN or inf) at 1 of 8 logged "
        "steps from step 6 to 6, up to 25% of a step's samples")
    assert finding.evidence == {"metric": "rewards/judge/nonfinite_frac", "steps": [6],
                                "max_frac": 0.25}
    history[5]["rewards/judge/nonfinite_frac"] = 0.0
    assert "reward_nonfinite" in diagnose(history).checked
    assert not [f for f in diagnose(history).findings if f.name == "reward_nonfinite"]
    assert any(s.startswith("reward_nonfinite (no rewards/<fn>/nonfinite_frac logged")
               for s in diagnose([{"loss": 1.0, "step": 1}]).skipped)
