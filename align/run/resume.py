"""Resuming a run: which checkpoint to continue from, and the trl state a checkpoint lacks.

`resume=true` continues from the latest *complete* checkpoint in the run folder (one whose
trainer_state.json, written last, is readable) and starts from scratch, with a log line, when
there is none (the first launch of a job that may be requeued); `resume=<checkpoint folder>`
continues from that one. A resumed run ends with the same weights and metrics as an
uninterrupted one (tests/test_resume.py; docs/resume.md says what cannot be restored).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # transformers writes it last into a checkpoint folder


def read_state(folder: Path) -> dict:
    """A complete checkpoint's trainer_state.json: global_step, log_history, ..."""
    return json.loads((folder / TRAINER_STATE).read_text())


def _name_step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[1])


def is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint folder that transformers finished writing: trainer_state.json, its last
    file, is there and parses. SIGKILL during a save leaves a folder without it (or with a
    truncated one), which transformers' own get_last_checkpoint would still pick."""
    try:
        return "global_step" in json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint-<step> folder with the highest step; incomplete ones are named
    in a warning and left alone (the next save of that step overwrites them)."""
    if not out_dir.is_dir():
        return None
    folders = sorted((p for p in out_dir.iterdir()
                      if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                     key=_name_step, reverse=True)
    for folder in folders:
        if is_complete_checkpoint(folder):
            return folder
        log.warning("resume: skipping %s, which was not completely written (no readable %s)",
                    folder, TRAINER_STATE)
    return None


def resolve_checkpoint(resume: str, out_dir: Path) -> Path:
    """`resume=<folder>`: a path, or a checkpoint name inside the run folder."""
    path = Path(resume).expanduser()
    if not path.exists() and not path.is_absolute() and (out_dir / path).exists():
        path = out_dir / path
    return path.resolve()


def check_resume(resume: Any, out_dir: Path) -> list[str]:
    if resume is None or isinstance(resume, bool):
        return []
    if not isinstance(resume, str):
        return [(f"resume={resume!r}: give true (the latest checkpoint in the run folder) or a "
                 "checkpoint folder")]
    path = resolve_checkpoint(resume, out_dir.resolve())
    if is_complete_checkpoint(path):
        return []
    latest = latest_checkpoint(out_dir.resolve())
    hint = f"; the latest complete one in the run folder is {latest}" if latest else ""
    what = "is not a complete checkpoint (no readable trainer_state.json)" if path.exists() \
        else "does not exist"
    return [f"resume={resume}: {path} {what}{hint}"]


def whole_run_train_loss(history: list[dict], resumed_at: int, launch_loss: float,
                         global_step: int) -> float | None:
    """Mean training loss over all steps of a resumed run, from the losses logged up to the
    checkpoint and the mean over this launch's steps. None when the checkpoint was not on a
    logging step (the loss of the steps between the last log and the checkpoint is lost)."""
    total, last = 0.0, 0
    for entry in history:
        if "loss" in entry and entry.get("step", 0) <= resumed_at:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    if last != resumed_at or global_step <= 0:
        return None
    return (total + launch_loss * (global_step - resumed_at)) / global_step


def warn_unlogged_steps(checkpoint: Path, state: dict) -> None:
    logged = [h["step"] for h in state.get("log_history", []) if "loss" in h]
    step = state["global_step"]
    if step and (not logged or logged[-1] != step):
        log.warning("resume: %s is not on a logging step (save_steps is not a multiple of "
                    "logging_steps), so the first loss logged after it averages fewer steps "
                    "than an uninterrupted run's; the weights are unaffected", checkpoint.name)


class FinishedRun(Exception):
    """`resume=true` into a run that already finished with the same config: nothing to train.
    The entry point prints the message and returns the run's metrics (exit 0), so a requeued
    job that has finished stays finished."""

    def __init__(self, message: str, metrics: dict):
        self.metrics = metrics
        super().__init__(message)


def finished_run(out_dir: Path, config: Any) -> FinishedRun | None:
    """A FinishedRun when `out_dir` holds a finished run (final/ and metrics.json, written
    last) whose config.yaml differs from `config` in `resume` alone; else None (a changed
    config, e.g. a raised trainer.max_steps, continues from the latest checkpoint)."""
    from omegaconf import OmegaConf

    metrics_file, final = out_dir / "metrics.json", out_dir / "final"
    if not (metrics_file.is_file() and final.is_dir() and (out_dir / "config.yaml").is_file()):
        return None
    try:
        metrics = json.loads(metrics_file.read_text())
        old = OmegaConf.to_container(OmegaConf.load(out_dir / "config.yaml"))
    except (OSError, ValueError):
        return None
    new = OmegaConf.to_container(OmegaConf.create(dict(config)))
    if [k for k in changed_keys(old, new) if k != "resume"]:
        return None
    step = (metrics.get("train") or {}).get("global_step")
    return FinishedRun(f"resume=true: {out_dir} finished (step {step}; final/ and metrics.json "
                       "are there) with this config, so there is nothing to do. To train "
                       "further, raise trainer.max_steps", metrics)


class _AtLastStep(Exception):
    pass


def train_or_load(trainer, checkpoint: Path | None):
    """`trainer.train`, resumed from `checkpoint`; a checkpoint already at the last step is
    loaded and nothing is trained. (transformers runs one more step when resumed at its last
    one: a finished run relaunched grew a step, and a new checkpoint, at every launch.) The load
    is transformers' own resume (DeepSpeed and FSDP included), stopped before the first step."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import TrainOutput

    class StopBeforeFirstStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                raise _AtLastStep

    if checkpoint is None:
        return trainer.train()
    guard = StopBeforeFirstStep()
    trainer.add_callback(guard)
    try:
        return trainer.train(resume_from_checkpoint=str(checkpoint))
    except _AtLastStep:
        state = trainer.state
        log.info("resume: %s is at the last step (%d): loaded, nothing left to train",
                 checkpoint.name, state.global_step)
        trainer.is_in_train = False
        return TrainOutput(state.global_step, 0.0, {})
    finally:
        trainer.remove_callback(guard)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + [k for k in new if k not in old]
        return [c for k in keys for c in changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".") or "<root>"]


#: trl state kept only in memory, which align adds to each checkpoint (one file per rank)
TRL_STATE = "trl_state_{rank}.pt"


def _generate_every(trainer) -> int:
    return trainer.args.steps_per_generation * trainer.num_iterations


def trl_state_saver(trainer):
    """A callback that adds to each checkpoint what trl keeps only in memory and a resume
    would otherwise lose (trl 1.16's private attributes, read when present):
      - SFT/DPO `_total_train_tokens`, the logged `num_tokens` (else it restarts at 0);
      - GRPO `_step`, the micro-step counter that schedules generation (else it restarts at
        0 and every later generation moves), and, for a checkpoint in the middle of a
        generation buffer (steps_per_generation > gradient accumulation, or
        num_iterations > 1), `_buffered_inputs`: the completions, advantages and old
        log-probs the next steps reuse (else they are generated anew and the run diverges).
    Written just before transformers writes the checkpoint, so that trainer_state.json,
    written last, still marks a complete one."""
    from transformers import TrainerCallback

    class TrlStateSaver(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if not control.should_save:
                return
            saved = {}
            if hasattr(trainer, "_total_train_tokens"):
                saved["total_train_tokens"] = trainer._total_train_tokens
            step = getattr(trainer, "_step", None)
            if step is not None and hasattr(trainer, "_buffered_inputs"):
                saved["step"] = step
                if trainer._buffered_inputs is not None and step % _generate_every(trainer):
                    saved["buffered_inputs"] = trainer._buffered_inputs
            if not saved:
                return
            import torch

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(saved, folder / TRL_STATE.format(rank=args.process_index))

    return TrlStateSaver()


def restore_trl_state(trainer, checkpoint: Path, global_step: int) -> None:
    """Put back what `trl_state_saver` saved; for a checkpoint without it (not written by
    align) restore what can be inferred, and warn about what cannot."""
    import torch

    path = checkpoint / TRL_STATE.format(rank=trainer.args.process_index)
    saved = torch.load(path, map_location=trainer.accelerator.device, weights_only=True) \
        if path.exists() else {}
    if "total_train_tokens" in saved:
        trainer._total_train_tokens = saved["total_train_tokens"]
    if not hasattr(trainer, "_buffered_inputs"):
        return
    if "step" in saved:
        trainer._step = saved["step"]
    else:
        trainer._step = global_step * trainer.args.gradient_accumulation_steps
    if "buffered_inputs" in saved:
        trainer._buffered_inputs = saved["buffered_inputs"]
    elif trainer._step % _generate_every(trainer):
        log.warning("resume: %s falls inside a GRPO generation buffer that it does not hold; "
                    "the rest of that buffer is generated anew, so the run will differ from an "
                    "uninterrupted one", checkpoint.name)
