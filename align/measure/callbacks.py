"""align's own TrainerCallbacks: held-out measurement during training (HeldoutCallback) and
the run doctor (DoctorCallback, at the end of this file).

Held-out measurement is turned on with `heldout.eval_steps=N` on any stage (`python align/grpo.py heldout.eval_steps=100`):
every N optimizer steps the model answers the held-out prompts greedily (align.measure.heldout.evaluate,
the same measurement as before and after training) and the figures go

  - into the trainer's log history as `heldout/<reward>` (so trainer_state.json, the run
    folder's log_history.jsonl and `python -m align.plots` see them),
  - to W&B when tracking is on, with the first `heldout.log_samples` completions as a table,
  - into metrics.json under `heldout_during` (a list of {step, train_s, <reward>: value};
    train_s: seconds of training in this launch, the measurements themselves left out).

Every rank takes part where align.device.placement says so (each generates its share of the
prompts, in lockstep on sharded weights); the main process scores and records.

PendingMeasurements runs the "before" measurements that wait for training to begin: on sharded
weights (ZeRO-3, FSDP) no rank holds the model whole before the trainer has prepared it.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class HeldoutCallback(TrainerCallback):
    """Measure `dataset` with `reward_funcs` every `cfg.eval_steps` steps (see module doc)."""

    def __init__(self, job, tokenizer, dataset, reward_funcs):
        self.job = job
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.reward_funcs = reward_funcs
        self.curve: list[dict] = job.metrics.setdefault("heldout_during", [])
        self.started = time.perf_counter()
        self.measuring = 0.0  # seconds spent in these measurements, left out of `train_s`

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.measuring = time.perf_counter(), 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.job.spec.heldout.eval_steps
        place = self.job.placement
        if not every or state.global_step % every or (place.ranks == "main"
                                                       and not self.job.is_main):
            return
        from align.device import check_placement
        from align.measure.heldout import evaluate_with_samples

        check_placement(model, place, f"held-out measurement at step {state.global_step}")
        began = time.perf_counter()
        # training seconds of this launch so far: time-to-accuracy curves compare runs by it
        train_s = round(began - self.started - self.measuring, 2)
        figures, rows = evaluate_with_samples(model, self.tokenizer, self.dataset,
                                              self.reward_funcs, self.job.spec.heldout,
                                              *self.job.tool_measurement(), place=place)
        self.measuring += time.perf_counter() - began
        if not self.job.is_main:
            return
        names = [fn.__name__ for fn in self.reward_funcs]
        logged = {f"heldout/{n}": figures[n] for n in names}
        logged["heldout/completion_tokens_mean"] = figures["completion_tokens_mean"]
        for key in ("tool_call_rate", "tool_failure_rate"):
            if key in figures:
                logged[f"heldout/{key}"] = figures[key]
        self.curve.append({"step": state.global_step, "train_s": train_s,
                           **{n: figures[n] for n in names}})
        state.log_history.append({**logged, "step": state.global_step})
        run = self.job.tracker.run
        if run is not None:
            import wandb

            table = wandb.Table(columns=["step", "prompt", "completion", "solution", *names])
            for row in rows[: self.job.spec.heldout.log_samples]:
                table.add_data(state.global_step, str(row["prompt"]), str(row["completion"]),
                               None if row["solution"] is None else str(row["solution"]),
                               *[row.get(n) for n in names])
            # transformers' W&B callback plots against train/global_step; log on the same axis.
            run.log({**logged, "heldout/samples": table, "train/global_step": state.global_step})
        log.info("step %d held-out %s", state.global_step,
                 ", ".join(f"{k}={v:.3f}" for k, v in logged.items()))


class PendingMeasurements(TrainerCallback):
    """Run the job's "before" measurements that wait for training to begin (align.run.job:
    `Job.pending`), on every rank, with the model as the trainer prepared it. A launch that
    resumes from a checkpoint skips them: the trainer has loaded the checkpoint's weights by
    then, and they would not be the model before training."""

    def __init__(self, job):
        self.job = job

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        job = self.job
        job.training_began = True
        pending, job.pending = job.pending, []
        if job.resumed_from is not None:
            if pending and job.is_main:
                log.info("held-out before training: not measured when resuming on sharded "
                         "weights (the trainer has loaded %s)", job.resumed_from.name)
            return
        for measure in pending:
            measure(model)


class DoctorCallback(TrainerCallback):
    """The run doctor during training (align.doctor, on by default: `doctor.enabled=false`
    turns it off). On every log it checks the trainer's log history and warns once per
    finding; at the end the main process writes `doctor.json` into the run folder and, when a
    W&B run is active, puts the findings in its summary (`doctor/<name>`) and sends one W&B
    alert per finding (a cheap call; a failure to alert is logged, never raised)."""

    def __init__(self, job, cfg):
        self.job = job
        self.cfg = cfg
        self.warned: set[tuple[str, str]] = set()
        self.failed = False

    def _check(self, state):
        from align.measure.diagnosis import diagnose

        try:
            diagnosis = diagnose(state.log_history, self.cfg)
        except Exception as exc:  # a diagnosis never stops the training it watches
            if not self.failed and self.job.is_main:
                log.warning("doctor: could not read the log (%s: %s); training goes on, "
                            "unchecked", type(exc).__name__, exc)
            self.failed = True
            return None
        for finding in diagnosis.findings:
            key = (finding.name, finding.evidence.get("metric", ""))
            if key not in self.warned:
                self.warned.add(key)
                if self.job.is_main:
                    log.warning("doctor: %s", finding.line())
                    self._alert(finding)
        return diagnosis

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._check(state)

    def on_train_end(self, args, state, control, **kwargs):
        diagnosis = self._check(state)
        if diagnosis is None or not self.job.is_main:
            return
        from align.measure.diagnosis import write_report

        self.job.out_dir.mkdir(parents=True, exist_ok=True)
        write_report(self.job.out_dir, diagnosis, "training")
        self.job.metrics["doctor"] = [f.name for f in diagnosis.findings]
        run = self.job.tracker.run
        if run is not None:
            run.summary["doctor/findings"] = len(diagnosis.findings)
            for finding in diagnosis.findings:
                run.summary[f"doctor/{finding.name}"] = finding.line()

    def _alert(self, finding):
        run = self.job.tracker.run
        if run is None:
            return
        try:
            import wandb

            run.alert(title=f"align doctor: {finding.name}", text=finding.line(),
                      level=wandb.AlertLevel.WARN)
        except Exception as exc:  # offline runs, old clients: the warning above is enough
            log.info("doctor: no W&B alert for %s (%s)", finding.name, exc)
