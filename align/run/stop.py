"""Stopping a run on a signal without losing it.

A scheduler that pre-empts or times out a job sends SIGTERM and, a grace period later, SIGKILL
(SLURM: `KillWait`, or `sbatch --signal=TERM@<seconds>` ahead of the time limit; torchrun and
accelerate forward the signal to every rank and kill them 30 s later). Ctrl-C sends SIGINT.

- While a trainer trains (:func:`stopping_on_signals` around `trainer.train`), the first
  SIGTERM or SIGINT lets the current optimisation step end, saves a checkpoint there, and stops:
  every rank agrees on the step through accelerate's trigger (an all-reduce of one flag per
  step), so no rank waits in a collective the others left. `Stopped` is raised then, and the
  entry point prints one line and exits with 128 + the signal number (143 for SIGTERM, 130 for
  SIGINT). `resume=true` continues from that checkpoint exactly as from any other.
- `stop_grace_s` bounds the wait for the step to end: past it the process exits at once with
  the same line, naming the checkpoint a relaunch will continue from. Set it a little below the
  time the scheduler leaves between its signal and its kill. A second signal exits at once.
- Outside training (loading, held-out measurement, saving) a signal ends the run at once with
  the same one line, no traceback: whatever checkpoint exists is what a relaunch continues from.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: the signals a run stops cleanly on
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run was stopped by a signal; `checkpoint` is what a relaunch continues from."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(message)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signum, f"stopped by {signal_name(signum)}")


def install_process_handlers() -> None:
    """SIGTERM and SIGINT raise `Stopped` (one line from the entry point, no traceback) in the
    main thread of an entry-point process; training replaces them for its duration."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _raise_stopped)


def _checkpoint_note(out_dir: Path) -> str:
    from align.run.resume import latest_checkpoint

    found = latest_checkpoint(out_dir)
    if found is None:
        return "no checkpoint was saved, so a relaunch starts from scratch"
    return f"relaunch with resume=true to continue from {found}"


class _StopState:
    """What the signal handler and the trainer callback share."""

    def __init__(self, trainer, out_dir: Path, grace_s: float | None):
        self.trainer = trainer
        self.out_dir = out_dir
        self.grace_s = grace_s
        self.signum: int | None = None
        self.step_ended = threading.Event()

    def on_signal(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: the user or the scheduler insists
            self.exit_now(signum, "a second signal")
        self.signum = signum
        if self.trainer.accelerator.num_processes > 1:
            # accelerate's trigger: set here, all-reduced over the ranks at the step's end.
            self.trainer.accelerator.set_trigger()
        grace = f" (at most {self.grace_s:g} s, stop_grace_s)" if self.grace_s is not None else ""
        print(f"{signal_name(signum)}: saving a checkpoint when this training step ends{grace}",
              file=sys.stderr, flush=True)
        if self.grace_s is not None:
            timer = threading.Timer(self.grace_s, self._grace_over)
            timer.daemon = True
            timer.start()

    def _grace_over(self) -> None:
        if not self.step_ended.is_set():  # a checkpoint being written is left to finish
            self.exit_now(self.signum, f"the training step did not end within "
                                       f"stop_grace_s={self.grace_s:g} s")

    def exit_now(self, signum: int, why: str) -> None:
        print(f"error: stopped by {signal_name(signum)} ({why}); "
              f"{_checkpoint_note(self.out_dir)}", file=sys.stderr, flush=True)
        os._exit(128 + signum)


def _stop_callback(state: _StopState):
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        """Ends training with a checkpoint at the end of the step during which any rank got a
        signal. Runs after transformers' own flow callback, so its save decision stands."""

        def on_step_end(self, args, train_state, control, **kwargs):
            accelerator = state.trainer.accelerator
            # One process reads its own flag; several all-reduce theirs every step (a device
            # sync a single process need not pay).
            if (state.signum is not None if accelerator.num_processes == 1
                    else accelerator.check_trigger()):
                state.step_ended.set()
                control.should_save = True
                control.should_training_stop = True
                if state.signum is None:  # another rank got the signal
                    state.signum = signal.SIGTERM
            return control

    return StopOnSignal()


@contextmanager
def stopping_on_signals(trainer, out_dir: Path, grace_s: float | None) -> Iterator[None]:
    """Train inside this: a signal ends training with a checkpoint at the end of the current
    step, and `Stopped` is raised once `trainer.train` has returned."""
    state = _StopState(trainer, Path(out_dir), grace_s)
    callback = _stop_callback(state)
    trainer.add_callback(callback)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in SIGNALS} if main_thread else {}
    for signum in previous:
        signal.signal(signum, state.on_signal)
    started = time.monotonic()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        trainer.remove_callback(callback)
    if state.signum is not None:
        step = trainer.state.global_step
        raise Stopped(state.signum,
                      f"stopped by {signal_name(state.signum)} at step {step} after "
                      f"{time.monotonic() - started:.0f} s of training; "
                      f"{_checkpoint_note(state.out_dir)}")
