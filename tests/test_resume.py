"""Kill-and-resume reaches the same result as an uninterrupted run (docs/resume.md).

For SFT, DPO and GRPO, on the tiny model: one uninterrupted reference run, then the same
command (`resume=true`, as a requeued SLURM job runs it) started in a subprocess, SIGKILLed in
the middle of training after its second checkpoint, and launched again into the same run
folder (same SLURM_JOB_ID). The final weights must be bitwise identical, and so must the logged
training figures and the held-out metrics.

The kill is made deterministic by `PauseAtStep` (plugged in through the `callbacks` key): it
stops the killed launch at the end of step 10, after checkpoint-8 and two unsaved steps,
and the test sends SIGKILL from outside. Before the relaunch the test leaves a half-written
checkpoint-12 (weights, truncated trainer_state.json), as a kill during a save does: resume
must skip it. The GRPO run generates once per 3 steps (steps_per_generation=3), so
checkpoint-8 falls in the middle of a generation buffer: the hard case of GRPO resume.

Each stage takes about a minute on 2 CPU cores (three launches of ~15-20 s each).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
PAUSE_ENV = "ALIGN_TEST_PAUSE_AT_STEP"
KILL_AT, CHECKPOINT, MAX_STEPS = 10, 8, 12
COMMON = [
    "logger=none", f"trainer.max_steps={MAX_STEPS}", "trainer.save_steps=4",
    "trainer.logging_steps=2", "trainer.save_total_limit=2", "heldout.max_samples=16",
    "heldout.eval_steps=4",
    "resume=true", "callbacks=[tests.test_resume:PauseAtStep]",
]
STAGES = {
    # tiny_sft: the default random-init model answers nothing, so accuracy would be 0 -> 0
    "sft": ["model=tiny_sft", "trainer.per_device_train_batch_size=8"],
    "dpo": ["trainer.per_device_train_batch_size=8"],
    "grpo": ["trainer.per_device_train_batch_size=8", "trainer.num_generations=4",
             "trainer.steps_per_generation=3"],
}
#: log entries' keys that measure time, not training
TIMING = ("runtime", "per_second", "step_time")


class PauseAtStep(TrainerCallback):
    """Stops a launch at the end of step $ALIGN_TEST_PAUSE_AT_STEP, after announcing it in the
    run folder, so that the test kills it at a known point. A no-op without that variable."""

    def on_step_end(self, args, state, control, **kwargs):
        step = int(os.environ.get(PAUSE_ENV) or 0)
        if step and state.global_step == step:
            Path(args.output_dir, f"paused-at-{step}").write_text(str(os.getpid()))
            time.sleep(3600)


def command(stage, cwd, **env):
    """The launch command and its environment: the given variables, no inherited run id."""
    cwd.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ALIGN_RUN_ID", "SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", PAUSE_ENV)}
    # The repository root, not tests/, on the path: folders in tests/ would shadow packages.
    clean.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **env)
    return [sys.executable, str(REPO / "align" / f"{stage}.py"), *COMMON, *STAGES[stage]], clean


def run_to_end(stage, cwd, **env):
    cmd, env = command(stage, cwd, **env)
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def run_and_kill(stage, cwd, **env):
    """Start a launch, wait until it pauses after step KILL_AT, SIGKILL it; its run folder."""
    cmd, env = command(stage, cwd, **env, **{PAUSE_ENV: str(KILL_AT)})
    log = cwd.parent / f"{cwd.name}-killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not list(cwd.glob(f"outputs/{stage}/*/paused-at-{KILL_AT}")):
            assert proc.poll() is None, log.read_text()[-5000:]
            assert time.monotonic() < deadline, "the launch never reached the kill step"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (folder,) = (cwd / "outputs" / stage).iterdir()
    return folder


def weights(folder):
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def log_entries(folder):
    lines = (folder / "log_history.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not any(t in k for t in TIMING)}
            for line in lines]


def config_without_run_folder(folder):
    return [line for line in (folder / "config.yaml").read_text().splitlines()
            if not line.startswith("output_dir:")]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_killed_and_resumed_run_matches_uninterrupted(stage, tmp_path):
    import torch

    run_to_end(stage, tmp_path / "reference", SLURM_JOB_ID="1")
    (reference,) = (tmp_path / "reference" / "outputs" / stage).iterdir()

    # First launch of the requeued job: resume=true with no checkpoint yet starts fresh.
    folder = run_and_kill(stage, tmp_path / "job", SLURM_JOB_ID="4242")
    assert folder.name == "slurm-4242"
    done = sorted(p.name for p in folder.glob("checkpoint-*"))
    assert done == ["checkpoint-4", f"checkpoint-{CHECKPOINT}"], done
    assert not (folder / "metrics.json").exists()  # killed mid-training, not at a clean stop

    # What a SIGKILL during the next save leaves: weights, and a cut-off trainer_state.json.
    half = folder / f"checkpoint-{MAX_STEPS}"
    shutil.copytree(folder / f"checkpoint-{CHECKPOINT}", half)
    state = (half / "trainer_state.json").read_text()
    (half / "trainer_state.json").write_text(state[: len(state) // 2])

    # The requeued launch: same command, same job id, hence the same run folder.
    output = run_to_end(stage, tmp_path / "job", SLURM_JOB_ID="4242")
    assert [p.name for p in (tmp_path / "job" / "outputs" / stage).iterdir()] == ["slurm-4242"]
    assert f"continuing from {folder / f'checkpoint-{CHECKPOINT}'}" in output
    assert f"skipping {half}" in output

    ref_weights, got_weights = weights(reference / "final"), weights(folder / "final")
    assert ref_weights.keys() == got_weights.keys()
    different = [k for k in ref_weights if not torch.equal(ref_weights[k], got_weights[k])]
    assert not different, f"weights differ after resume: {different}"

    # Every logged figure (loss, grad norm, rewards, held-out ...) of every step, before and
    # after the resume point, except timings. The last entry is trainer's summary: its train_loss is
    # the whole run's mean, rebuilt by align from the per-launch one (see below).
    ref_log, got_log = log_entries(reference), log_entries(folder)
    ref_summary, got_summary = ref_log.pop(), got_log.pop()
    assert [e["step"] for e in ref_log if "loss" in e] == [2, 4, 6, 8, 10, 12]
    assert [e["step"] for e in ref_log if "heldout/accuracy" in e] == [4, 8, 12]
    assert got_log == ref_log
    assert got_summary.pop("train_loss") == pytest.approx(ref_summary.pop("train_loss"),
                                                          rel=1e-9, abs=1e-12)
    assert got_summary == ref_summary

    ref_metrics = json.loads((reference / "metrics.json").read_text())
    got_metrics = json.loads((folder / "metrics.json").read_text())
    ref_train, got_train = ref_metrics.pop("train"), got_metrics.pop("train")
    # held-out before, after and during training (steps 4 and 8 before the resume, 12 after);
    # train_s is a clock reading of each launch (a resumed launch's earlier points have none)
    assert [p.pop("train_s") >= 0 for p in ref_metrics["heldout_during"]] == [True] * 3
    assert [p.pop("train_s", None) is None for p in got_metrics["heldout_during"]] == \
        [True, True, False]
    assert got_metrics == ref_metrics
    assert ref_metrics["heldout_after"]["samples"] == 16
    assert [p["step"] for p in ref_metrics["heldout_during"]] == [4, 8, 12]
    assert got_train.pop("resumed_from") == f"checkpoint-{CHECKPOINT}"
    assert "resumed_from" not in ref_train
    for key in ("global_step", "final_loss", "epoch", "total_flos"):
        assert got_train[key] == ref_train[key], key
    # train_loss: the sum of logged window losses x window sizes, in another order than
    # transformers adds them up, hence a float-rounding tolerance (it came out bitwise equal).
    assert got_train["train_loss"] == pytest.approx(ref_train["train_loss"], rel=1e-9, abs=1e-12)

    # The run keeps the config of its first launch (only the run folder names differ), and the
    # half-written checkpoint was replaced by a complete one.
    assert config_without_run_folder(folder) == config_without_run_folder(reference)
    assert not list(folder.glob("config.prev-*"))
    assert json.loads((half / "trainer_state.json").read_text())["global_step"] == MAX_STEPS


@pytest.mark.slow
def test_sigterm_in_a_generation_buffer_resumes_exactly(tmp_path):
    """GRPO pre-empted by SIGTERM at step 10, in the middle of a generation buffer and off the
    save schedule: the checkpoint the signal saves carries trl's state too, and the relaunch
    ends with the uninterrupted run's weights and log."""
    import torch

    run_to_end("grpo", tmp_path / "reference", SLURM_JOB_ID="1")
    (reference,) = (tmp_path / "reference" / "outputs" / "grpo").iterdir()
    signalled = "callbacks=[tests.test_lifecycle:SignalAtStep]"
    cmd, env = command("grpo", tmp_path / "job", SLURM_JOB_ID="7",
                       ALIGN_TEST_SIGNAL_AT_STEP=f"{KILL_AT}:SIGTERM")
    proc = subprocess.run([*cmd, signalled], cwd=tmp_path / "job", env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    # trl reads a deprecated transformers attribute around every generation; align silences it
    assert "is_gradient_checkpointing" not in proc.stdout + proc.stderr
    folder = tmp_path / "job" / "outputs" / "grpo" / "slurm-7"
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-8"]
    assert list((folder / f"checkpoint-{KILL_AT}").glob("trl_state_*.pt"))

    run_to_end("grpo", tmp_path / "job", SLURM_JOB_ID="7")
    ref_weights, got_weights = weights(reference / "final"), weights(folder / "final")
    assert ref_weights.keys() == got_weights.keys()
    assert all(torch.equal(ref_weights[k], got_weights[k]) for k in ref_weights)
    ref_log, got_log = log_entries(reference)[:-1], log_entries(folder)[:-1]
    assert got_log == ref_log


# --------------------------------------------------------------------------- fast checks


def make_checkpoint(folder, step, complete=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_latest_checkpoint_skips_half_written_ones(tmp_path):
    from transformers.trainer_utils import get_last_checkpoint

    from align.run.resume import latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    make_checkpoint(tmp_path, 4)
    good = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20, complete=False)  # killed before trainer_state.json
    cut = make_checkpoint(tmp_path, 30)
    (cut / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    (tmp_path / "checkpoint-40.tmp").mkdir()
    assert latest_checkpoint(tmp_path) == good
    # transformers' own choice would be the unreadable one
    assert Path(get_last_checkpoint(str(tmp_path))).name == "checkpoint-30"


def test_resume_folder_must_be_a_complete_checkpoint(tmp_path):
    from align.run.resume import check_resume

    good = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20, complete=False)
    assert check_resume(None, tmp_path) == []
    assert check_resume(True, tmp_path) == []
    assert check_resume(str(good), tmp_path) == []
    assert check_resume("checkpoint-10", tmp_path) == []  # a name inside the run folder
    (error,) = check_resume("checkpoint-20", tmp_path)
    assert "not a complete checkpoint" in error and str(good) in error
    (error,) = check_resume("checkpoint-99", tmp_path)
    assert "does not exist" in error
    (error,) = check_resume(3, tmp_path)
    assert "give true" in error


def test_whole_run_train_loss():
    from align.run.resume import whole_run_train_loss

    history = [{"loss": 1.0, "step": 2}, {"loss": 4.0, "step": 4}, {"loss": 9.0, "step": 6},
               {"train_loss": 0.5, "step": 6}]
    # steps 1-4 before the resume (mean 1 then 4, 2 steps each), steps 5-6 in this launch
    assert whole_run_train_loss(history, 4, 9.0, 6) == pytest.approx((2 + 8 + 18) / 6)
    assert whole_run_train_loss(history, 3, 9.0, 6) is None  # checkpoint between two logs


def test_changed_config_on_resume_is_kept_aside(tmp_path, caplog):
    from hydra import compose, initialize_config_dir

    from align.run.conf import CONF_DIR, register
    from align.run.job import Job

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        first = compose("sft", overrides=["logger=none", f"output_dir={tmp_path}"])
        again = compose("sft", overrides=["logger=none", f"output_dir={tmp_path}", "resume=true"])
        changed = compose("sft", overrides=["logger=none", f"output_dir={tmp_path}",
                                            "resume=true", "trainer.learning_rate=1e-3"])
    Job.start(first, "sft")._write_config()
    original = (tmp_path / "config.yaml").read_text()

    Job.start(again, "sft")._write_config()  # only `resume` differs: the file stays
    assert (tmp_path / "config.yaml").read_text() == original

    Job.start(changed, "sft")._write_config()
    assert (tmp_path / "config.prev-1.yaml").read_text() == original
    assert "learning_rate: 0.001" in (tmp_path / "config.yaml").read_text()
    assert "trainer.learning_rate" in caplog.text
