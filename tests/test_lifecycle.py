"""A run's life as a scheduler and a user see it, typed as they type it (a subprocess, relative
paths, another working directory):

- bad input removes what the launch made and nothing else: a run folder the user made, its
  files and the parents that existed all stay;
- SIGTERM (a pre-emption) and Ctrl-C end training with a checkpoint, one line and exit status
  128 + the signal; a step that outlasts `stop_grace_s` exits at the deadline with the
  checkpoint a relaunch will use; every rank of a 2-process run stops at the same step;
- `resume=true` on a finished run does nothing (no phantom step), and a checkpoint at the last
  step is loaded rather than trained one step further;
- a held-out `objective` the data cannot give never fails a run that trained and saved.

The exact resume after SIGTERM is in tests/test_resume.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
SIGNAL_ENV = "ALIGN_TEST_SIGNAL_AT_STEP"
PAUSE_ENV = "ALIGN_TEST_PAUSE_AT_STEP"


class SignalAtStep(TrainerCallback):
    """Sends this process the signal $ALIGN_TEST_SIGNAL_AT_STEP names ("10:SIGTERM", or
    "10:SIGTERM:1" for rank 1 only) at the end of that step: a real signal at a known point."""

    def on_step_end(self, args, state, control, **kwargs):
        spec = os.environ.get(SIGNAL_ENV, "")
        if not spec:
            return
        step, name, *rank = spec.split(":")
        if state.global_step == int(step) and (not rank or args.process_index == int(rank[0])):
            os.kill(os.getpid(), getattr(signal, name))


class PauseAtStep(TrainerCallback):
    """A step that does not end: at step $ALIGN_TEST_PAUSE_AT_STEP, marks the run folder and
    sleeps (a signal's handler runs, the sleep goes on)."""

    def on_step_end(self, args, state, control, **kwargs):
        step = int(os.environ.get(PAUSE_ENV) or 0)
        if step and state.global_step == step:
            Path(args.output_dir, f"paused-at-{step}").write_text(str(os.getpid()))
            time.sleep(600)


CALLBACKS = "callbacks=[tests.test_lifecycle:SignalAtStep,tests.test_lifecycle:PauseAtStep]"
SFT = ["logger=none", "model=tiny_sft", "trainer.per_device_train_batch_size=8",
       "heldout.max_samples=8", "trainer.logging_steps=2"]


def env(**extra):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ALIGN_RUN_ID", "SLURM_JOB_ID", SIGNAL_ENV, PAUSE_ENV)}
    clean.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return clean


def script(stage, cwd):
    return os.path.relpath(REPO / "align" / f"{stage}.py", cwd)


def launch(stage, cwd, *overrides, **extra):
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, script(stage, cwd), *overrides], cwd=cwd,
                          env=env(**extra), capture_output=True, text=True, timeout=600)


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- nothing lost


@pytest.mark.slow
def test_bad_input_removes_only_what_the_launch_made(tmp_path):
    """A value align rejects after Hydra made the run folder (a typo inside `trainer:`, which
    Hydra cannot know): the user's folder, its files and the parents that existed stay."""
    users = tmp_path / "runs" / "job-42"
    users.mkdir(parents=True)
    (users / "slurm-42.log").write_text("the scheduler's log\n")
    typo = "trainer.learnig_rate=1e-4"

    proc = launch("sft", tmp_path / "cwd", f"hydra.run.dir={os.path.relpath(users, tmp_path / 'cwd')}",
                  typo, "logger=none")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(error_lines(proc)) == 1 and "learnig_rate" in error_lines(proc)[0]
    assert sorted(p.name for p in users.iterdir()) == ["slurm-42.log"]  # .hydra/, sft.log gone
    assert (users / "slurm-42.log").read_text() == "the scheduler's log\n"

    # An empty folder the user made stays; the folders the launch made below it go.
    (tmp_path / "empty").mkdir()
    proc = launch("sft", tmp_path / "cwd", "hydra.run.dir=../empty/new/run", typo, "logger=none")
    assert proc.returncode == 2
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())

    # The folder the command runs in, as the run folder: it stays, empty as it was.
    (tmp_path / "here").mkdir()
    proc = launch("sft", tmp_path / "here", "hydra.run.dir=.", typo, "logger=none")
    assert proc.returncode == 2
    assert (tmp_path / "here").is_dir() and not any((tmp_path / "here").iterdir())

    # The default run folder: outputs/sft/<id> and the parents it made, all gone.
    proc = launch("sft", tmp_path / "fresh", typo, "logger=none")
    assert proc.returncode == 2
    assert not any((tmp_path / "fresh").iterdir())


# --------------------------------------------------------------------------- signals


@pytest.mark.slow
def test_sigterm_during_a_step_saves_a_checkpoint_and_a_relaunch_finishes(tmp_path):
    """As SLURM pre-empts a job: the step ends, checkpoint-5 is saved off the save_steps
    schedule, one line, exit 143; `resume=true` trains the rest and the run finishes."""
    common = [*SFT, "trainer.max_steps=12", "trainer.save_steps=100", CALLBACKS, "resume=true",
              "hydra.run.dir=run"]
    proc = launch("sft", tmp_path, *common, **{SIGNAL_ENV: "5:SIGTERM"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    run = tmp_path / "run"
    (line,) = error_lines(proc)
    assert line.startswith("error: stopped by SIGTERM at step 5 after ")
    assert line.endswith(f"continue from {run.resolve() / 'checkpoint-5'}")
    assert "Traceback" not in proc.stderr
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-5"]
    assert not (run / "final").exists() and not (run / "metrics.json").exists()

    proc = launch("sft", tmp_path, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing from {run.resolve() / 'checkpoint-5'}" in proc.stdout + proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 12 and metrics["train"]["resumed_from"] == "checkpoint-5"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_step_that_outlasts_the_grace_period_exits_at_the_deadline(tmp_path, signum):
    """The signal arrives while a step hangs: past stop_grace_s the run exits with one line
    naming the checkpoint a relaunch continues from (checkpoint-4), no traceback."""
    proc = subprocess.Popen(
        [sys.executable, script("sft", tmp_path), *SFT, "trainer.max_steps=50",
         "trainer.save_steps=4", CALLBACKS, "stop_grace_s=2", "hydra.run.dir=run"],
        cwd=tmp_path, env=env(**{PAUSE_ENV: "6"}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "run" / "paused-at-6").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        signalled = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert time.monotonic() - signalled < 30  # the step would have slept 600 s
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: stopped by {signal.Signals(signum).name} (the training step did "
                      "not end within stop_grace_s=2 s); relaunch with resume=true to continue "
                      f"from {(tmp_path / 'run').resolve() / 'checkpoint-4'}"]
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_ctrl_c_before_training_is_one_line(tmp_path):
    """Ctrl-C while the run loads (here: as soon as Hydra made the run folder): one line, 130."""
    proc = subprocess.Popen([sys.executable, script("sft", tmp_path), *SFT, "hydra.run.dir=run"],
                            cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / ".hydra").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: stopped by SIGINT"]


@pytest.mark.slow
def test_every_rank_stops_at_the_step_where_one_rank_got_the_signal(tmp_path):
    """2 processes over gloo; only rank 1 is signalled (at step 3). Both ranks leave the loop
    at that step through accelerate's trigger (a rank that went on would wait in the next
    all-reduce for ever), checkpoint-3 is saved, and each rank says so in one line."""
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         script("sft", tmp_path), *SFT, "trainer.max_steps=40", "trainer.save_steps=100",
         CALLBACKS, "hydra.run.dir=run"],
        cwd=tmp_path, env=env(ALIGN_RUN_ID="ddp", **{SIGNAL_ENV: "3:SIGTERM:1"}),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    # each rank writes its one line; two processes on one stderr may interleave them
    said = "error: stopped by SIGTERM at step 3 after "
    assert proc.stderr.count(said) == 2, proc.stderr[-4000:]
    assert proc.stderr.count("continue from ") == 2
    assert all(part.split(";")[0].endswith("of training") for part in proc.stderr.split(said)[1:])
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*")] == ["checkpoint-3"]
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_on_a_finished_run_is_a_no_op(tmp_path):
    """A requeued job that already finished: nothing trains, nothing is added or rotated out."""
    common = [*SFT, "trainer.max_steps=6", "trainer.save_steps=3", "trainer.save_total_limit=2",
              "resume=true", "hydra.run.dir=run"]
    assert launch("sft", tmp_path, *common).returncode == 0
    run = tmp_path / "run"
    listing = sorted(p.name for p in run.iterdir())
    metrics = (run / "metrics.json").read_text()
    for _ in range(2):
        proc = launch("sft", tmp_path, *common)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"resume=true: {run.resolve()} finished (step 6;" in proc.stdout
        assert sorted(p.name for p in run.iterdir()) == listing
        assert (run / "metrics.json").read_text() == metrics

    # A changed config that leaves max_steps as it was: checkpoint-6 is the last step; it is
    # loaded and saved as final/, not trained one step further into a checkpoint-7.
    proc = launch("sft", tmp_path, *common, "trainer.logging_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-6 is at the last step (6): loaded" in proc.stdout + proc.stderr
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    after = json.loads((run / "metrics.json").read_text())
    assert after["train"]["global_step"] == 6
    before = json.loads(metrics)
    assert after["heldout_after"] == before["heldout_after"]  # the same weights, measured again


# --------------------------------------------------------------------------- objective


@pytest.mark.slow
def test_an_objective_the_data_cannot_give_does_not_fail_a_finished_run(tmp_path):
    """README's `python align/rm.py data=local data.path=pairs.jsonl`: no held-out split, so
    the default objective (held-out pairwise accuracy) cannot be measured. The run trains,
    saves and exits 0 with a warning; a sweep, which ranks runs by it, stops before training."""
    rows = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
            for a in range(10) for b in range(4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["data=local", "data.path=pairs.jsonl", "logger=none", "trainer.max_steps=2"]
    proc = launch("rm", tmp_path, *args, "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "objective=heldout_after.pairwise_accuracy will not be measured" in \
        proc.stdout + proc.stderr
    assert (tmp_path / "run" / "final").is_dir()

    proc = launch("rm", tmp_path, "-m", *args, "trainer.learning_rate=1e-4,3e-4",
                  "hydra.sweep.dir=sweep")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "objective=heldout_after.pairwise_accuracy: a sweep ranks runs by it" in proc.stderr
    assert not list((tmp_path / "sweep").glob("*/final"))
