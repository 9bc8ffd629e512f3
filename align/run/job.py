"""What every training stage does around its trainer: the run folder, seed and tracking;
held-out measurement; training with resume; saving the results.

`Job.start(cfg, stage)` parses the config into a RunSpec (align.run.spec: every key and value
checked before any model or dataset is loaded) and keeps it as `job.spec`; nothing here reads
the raw config.

A run folder holds:
  config.yaml     the resolved config (secrets removed)
  final/          the trained model, or the adapter, in Hugging Face format, with tokenizer
  metrics.json    training metrics and held-out figures before and after training
  log_history.jsonl  the trainer's log, one JSON object per logging step (for align.plots)
  doctor.json     the run doctor's findings (align.measure.diagnosis), unless doctor.enabled=false
  checkpoint-*/   trl checkpoints, when saving is on
All ranks of a multi-process run share the folder (see align.run.conf.run_id); only the main
process writes the shared files.

Resuming (`resume=true` or a checkpoint folder) is in align.run.resume and docs/resume.md.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from align.device import DeviceFacts, Placement, check_placement, local_rank, placement
from align.errors import AlignError, ConfigError
from align.files import write_atomic, write_json, write_jsonl
from align.run.resume import (
    changed_keys,
    finished_run,
    latest_checkpoint,
    read_state,
    resolve_checkpoint,
    restore_trl_state,
    train_or_load,
    trl_state_saver,
    warn_unlogged_steps,
    whole_run_train_loss,
)
from align.run.spec import RunSpec, is_main_process, parse_spec
from align.run.tracking import Tracker, start_tracking

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One training run of one stage: its spec, and the run's state (tracking, metrics)."""

    spec: RunSpec
    tracker: Tracker = field(default_factory=lambda: Tracker("none"))
    metrics: dict = field(default_factory=dict)
    #: held-out preference margins of the model before training (DPO's reference)
    reference_margins: list | None = None
    #: "before" measurements waiting for training to begin (sharded weights: see `placement`)
    pending: list = field(default_factory=list)
    #: training has begun (the trainer has prepared, and if so sharded, the model)
    training_began: bool = False
    #: the checkpoint this launch resumes from, once `train` has found it
    resumed_from: Path | None = None

    # ------------------------------------------------------------------ setup
    @classmethod
    def start(cls, cfg: DictConfig | Mapping, stage: str, facts: DeviceFacts | None = None) -> Job:
        """Parse and check the config (align.run.spec); loads no model and no data. A launch
        with `resume=true` into a run that finished with this config raises
        :class:`FinishedRun` (align.run.resume.finished_run): there is nothing to do."""
        job = cls(parse_spec(cfg, stage, facts))
        if job.spec.resume is True:
            done = finished_run(job.out_dir, job.spec.config)
            if done is not None:
                raise done
        freeze_startup_objects()
        return job

    @property
    def stage(self) -> str:
        return self.spec.stage

    @property
    def args(self):
        """trl's <Stage>Config for the trainer."""
        return self.spec.trainer

    @property
    def out_dir(self) -> Path:
        return self.spec.out_dir

    @property
    def is_main(self) -> bool:
        return is_main_process()

    @property
    def placement(self) -> Placement:
        """Where this rank's model lives and who measures (align.device.placement): a function
        of the spec's device facts, the PEFT method and this process's local rank."""
        return placement(self.spec.device, self.spec.peft.quantization is not None,
                         local_rank())

    def begin(self, data=None) -> None:
        """Create the run folder, write the resolved config, start tracking. Call after the
        data has been loaded and checked, so that bad data leaves no run behind; with the
        stage's data, also check that the run can give what a sweep optimises."""
        from transformers import set_seed

        if data is not None:
            self._check_objective(data)

        set_seed(self.spec.seed)
        before = set(self.out_dir.iterdir()) if self.out_dir.is_dir() else None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        group, run_name = hydra_run_names(self.spec.name)
        try:
            self.tracker = start_tracking(self.spec.logger, name=run_name, group=group,
                                          out_dir=self.out_dir, config=dict(self.spec.config),
                                          is_main=self.is_main, resume=bool(self.spec.resume))
        except AlignError:
            if self.is_main:  # a run stopped at its start leaves nothing of its own behind
                self._remove_new_files(before)
            raise

    def _check_objective(self, data) -> None:
        """A held-out `objective` needs held-out data. A sweep cannot rank runs without it: an
        error before training. A single run trains and saves as usual, and its task returns
        None (the end of a finished run is never an error)."""
        objective = self.spec.objective
        if not objective or not objective.startswith("heldout_"):
            return
        measured = self.spec.heldout.enabled and (data.heldout is not None
                                                  or data.eval is not None)
        if measured:
            return
        why = ("heldout.enabled=false" if not self.spec.heldout.enabled
               else "the data has no held-out split")
        fix = ("set data.eval_fraction (e.g. 0.05), data.eval_split or data.eval_path"
               if self.spec.heldout.enabled else "set heldout.enabled=true")
        if in_multirun():
            raise ConfigError(f"objective={objective}: a sweep ranks runs by it, but {why}; "
                              f"{fix}, or set objective=train.final_loss")
        log.warning("objective=%s will not be measured (%s): the run trains and saves as usual; "
                    "%s to measure it", objective, why, fix)

    def _remove_new_files(self, before: set | None) -> None:
        if before is None:
            shutil.rmtree(self.out_dir, ignore_errors=True)
            return
        for path in set(self.out_dir.iterdir()) - before:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _write_config(self) -> None:
        """config.yaml. A resumed run keeps the file of the launch it continues when only
        `resume` differs; a changed config replaces it, the old one kept aside and the changed
        keys logged (never a silent overwrite)."""
        path = self.out_dir / "config.yaml"
        text = OmegaConf.to_yaml(OmegaConf.create(dict(self.spec.config)))
        if self.spec.resume and path.exists():
            old = OmegaConf.to_container(OmegaConf.load(path))
            changed = [k for k in changed_keys(old, OmegaConf.to_container(
                OmegaConf.create(text))) if k != "resume"]
            if not changed:
                return
            n = 1
            while (self.out_dir / f"config.prev-{n}.yaml").exists():
                n += 1
            os.replace(path, self.out_dir / f"config.prev-{n}.yaml")
            log.warning("resume: the config differs from the run's config.yaml in %s; the old "
                        "one is kept as config.prev-%d.yaml", ", ".join(changed), n)
        write_atomic(path, text)

    def trl_eval_dataset(self, data):
        """The eval split to hand trl (which tokenises it up front): when trl evaluates
        (`trainer.eval_strategy`), and for SFT's held-out loss (:meth:`measure_loss`); align's
        other held-out figures read `data.heldout`."""
        if self.args.eval_strategy != "no":
            return data.eval
        return data.eval if self.stage == "sft" and self.spec.heldout.enabled else None

    def callbacks(self, tokenizer=None, heldout=None) -> list:
        """transformers TrainerCallbacks named in the `callbacks` list (import paths), plus
        the periodic held-out measurement when `heldout.eval_steps` is set and the run doctor
        (align.measure.diagnosis) unless `doctor.enabled=false`."""
        callbacks = [cls() for cls in self.spec.callbacks]
        spec = self.spec
        if spec.doctor.enabled:
            from align.measure.callbacks import DoctorCallback

            callbacks.append(DoctorCallback(self, spec.doctor))
        if spec.heldout.enabled and spec.heldout.eval_steps and heldout is not None \
                and spec.heldout_rewards:
            from align.measure.callbacks import HeldoutCallback

            callbacks.append(HeldoutCallback(self, tokenizer, heldout, list(spec.heldout_rewards)))
        if spec.heldout.enabled and self.placement.before_at_train_begin:
            from align.measure.callbacks import PendingMeasurements

            callbacks.append(PendingMeasurements(self))
        return callbacks

    # ------------------------------------------------------------------ held-out data
    def tool_measurement(self) -> tuple[tuple, int | None, object]:
        """(tools, max rounds, environment) for held-out generation: GRPO's tools and
        environment run as in its rollouts (align.measure.agent)."""
        return (self.spec.tools, self.spec.trainer_kwargs.get("max_tool_calling_iterations"),
                self.spec.environment)

    def measure(self, when: str, model, tokenizer, dataset, pairs=None) -> dict | None:
        """Held-out figures, returned on the main process (None elsewhere) and logged under
        heldout_<when>. Call on every rank: `placement` decides which ranks generate (each its
        share, in lockstep on sharded weights) and when "before" runs (when training begins,
        on sharded weights). With `pairs`
        (held-out prompt/chosen/rejected rows) also the preference figures of
        align.measure.metrics.preference_accuracy: log-prob ranking and, after training, the DPO
        implicit-reward accuracy against the model as it was before training; for a reward model
        (the rm stage) its pairwise accuracy and margin (align.measure.metrics.reward_accuracy)."""
        heldout = self.spec.heldout
        if not heldout.enabled:
            return None
        place = self.placement
        if when == "before" and place.before_at_train_begin and not self.training_began:
            # No rank holds the sharded model whole yet: measure when training begins.
            self.pending.append(lambda model: self.measure(when, model, tokenizer, dataset, pairs))
            return None
        funcs = list(self.spec.heldout_rewards) if dataset is not None else []
        # Generation is shared by every rank where placement says so; forward-only figures run
        # on the main process alone, or on every rank in lockstep where the weights are sharded.
        if not (self.is_main or place.scores_on_every_rank or (funcs and place.ranks == "all")):
            return None
        check_placement(model, place, f"held-out measurement {when} training")
        if dataset is None and pairs is None and when == "before" and self.is_main:
            log.warning("held-out measurement: the data has no eval split, so nothing is measured; "
                        "set data.eval_fraction (e.g. 0.02), data.eval_split or data.eval_path")
        figures: dict = {}
        if funcs:
            from align.measure.heldout import evaluate

            figures.update(evaluate(model, tokenizer, dataset, funcs, heldout,
                                    *self.tool_measurement(), place=place))
        if not (self.is_main or place.scores_on_every_rank):
            return None
        if pairs is not None and self.stage == "rm":
            from align.measure.metrics import reward_accuracy

            # A reward model ranks the pairs by its score, not by the log-probabilities below.
            figures.update(reward_accuracy(model, tokenizer, pairs, heldout.max_samples,
                                           heldout.batch_size))
        elif pairs is not None and {"chosen", "rejected"} <= set(pairs.column_names):
            from align.measure.metrics import preference_accuracy, preference_margins

            if when == "before":
                # DPO's reference is the model it starts from: keep its margins, so that the
                # final measurement can also score the implicit reward on held-out pairs.
                self.reference_margins = preference_margins(
                    model, tokenizer, pairs, heldout.max_samples, heldout.batch_size)
            figures.update(preference_accuracy(model, tokenizer, pairs, heldout.max_samples,
                                               heldout.batch_size, self.reference_margins))
        return self._record(when, figures) if self.is_main else None

    def measure_loss(self, when: str, trainer, rows) -> dict | None:
        """SFT's held-out loss (returned on the main process; on sharded weights every rank
        computes it in lockstep, "before" when training begins): the model's loss on the eval split as trl
        feeds it (its tokenisation, collator and completion masks: what training lowers), before
        or after training, recorded as `heldout_<when>.loss` with the number of held-out `rows`
        (trl may pack them into fewer sequences) as `loss/n`. Nothing goes into the trainer's log
        history, so a resumed run's log stays the uninterrupted run's."""
        heldout = self.spec.heldout
        if not heldout.enabled or trainer.eval_dataset is None:
            return None
        place = self.placement
        if when == "before" and place.before_at_train_begin and not self.training_began:
            self.pending.append(lambda model: self.measure_loss(when, trainer, rows))
            return None
        if not (self.is_main or place.scores_on_every_rank):
            return None
        check_placement(trainer.model, place, f"held-out loss {when} training")
        from align.measure.metrics import heldout_loss

        loss = heldout_loss(trainer.model, trainer.eval_dataset, trainer.data_collator,
                            heldout.batch_size)
        if loss != loss or not self.is_main:  # nothing labelled to score; or not the main rank
            return None
        return self._record(when, {"loss": loss, "loss/n": len(rows)})

    def _record(self, when: str, figures: dict) -> dict | None:
        if not figures:
            return None
        merged = self.metrics.setdefault(f"heldout_{when}", {})
        merged.update(figures)
        if self.tracker.run is not None:
            self.tracker.run.summary.update({f"heldout_{when}/{k}": v for k, v in figures.items()})
        return merged

    # ------------------------------------------------------------------ finish
    def resume_checkpoint(self) -> Path | None:
        """The checkpoint this launch continues from: None for a fresh start."""
        resume = self.spec.resume
        if isinstance(resume, str):
            return resolve_checkpoint(resume, self.out_dir)
        found = latest_checkpoint(self.out_dir)
        if resume:
            if found is None:
                log.info("resume=true: no complete checkpoint in %s, starting from scratch",
                         self.out_dir)
            else:
                log.info("resume=true: continuing from %s", found)
            return found
        if found is not None:
            log.warning("the run folder already holds %s; training from scratch (resume=true "
                        "would continue it)", found.name)
        return None

    def train(self, trainer) -> None:
        """Train, from the checkpoint resume names. A signal stops training with a checkpoint
        and raises align.run.stop.Stopped (the entry point exits with 128 + its number); a
        checkpoint at the last step is loaded, not trained further."""
        from align.run.stop import stopping_on_signals

        checkpoint = self.resume_checkpoint()
        self.resumed_from = checkpoint
        state = read_state(checkpoint) if checkpoint is not None else {}
        if checkpoint is not None:
            warn_unlogged_steps(checkpoint, state)
            restore_trl_state(trainer, checkpoint, state["global_step"])
            self._restore_heldout_curve(state.get("log_history", []))
        with stopping_on_signals(trainer, self.out_dir, self.spec.stop_grace_s):
            # after the stop callback, so that a checkpoint a signal asks for has trl's state too
            trainer.add_callback(trl_state_saver(trainer))
            result = train_or_load(trainer, checkpoint)
        self.metrics["train"] = dict(result.metrics)
        self.metrics["train"]["global_step"] = result.global_step
        if checkpoint is not None:
            # transformers averages train_loss over the steps of this launch only; report the
            # whole run's, as an uninterrupted run does (train_runtime & co stay per launch).
            self.metrics["train"]["resumed_from"] = checkpoint.name
            whole = whole_run_train_loss(trainer.state.log_history, state["global_step"],
                                         result.training_loss, result.global_step)
            if whole is not None:
                self.metrics["train"]["train_loss"] = whole
                summary = trainer.state.log_history[-1] if trainer.state.log_history else {}
                if "train_loss" in summary:  # the summary line of log_history.jsonl
                    summary["train_loss"] = whole
        self.metrics["world_size"] = trainer.args.world_size
        history = [h for h in trainer.state.log_history if "loss" in h]
        if history:
            self.metrics["train"]["final_loss"] = history[-1]["loss"]

    def _restore_heldout_curve(self, history: list[dict]) -> None:
        """metrics.json's `heldout_during` points measured before the checkpoint, from its log
        history (align.measure.callbacks.HeldoutCallback appends the later ones to the same list)."""
        if "heldout_during" not in self.metrics:
            return
        earlier = [{"step": h["step"], **{k.removeprefix("heldout/"): v for k, v in h.items()
                                          if k.startswith("heldout/")
                                          and k != "heldout/completion_tokens_mean"}}
                   for h in history if any(k.startswith("heldout/") for k in h)]
        self.metrics["heldout_during"][:0] = earlier

    def save(self, trainer) -> dict:
        """Save the final model/adapter, tokenizer and metrics; return the metrics."""
        from align.trainers.fsdp import save_full_model

        final = self.out_dir / "final"
        # Every rank calls it: ZeRO-3 and FSDP gather the shards (the main process writes).
        save_full_model(trainer, str(final))
        if self.is_main:
            # The per-step log, also when no checkpoint (and so no trainer_state.json) is saved.
            # Both carry what trl and transformers logged: a loss that diverged to NaN is kept as
            # null with a note (align.files.strict_json), never a bare NaN.
            write_jsonl(self.out_dir / "log_history.jsonl", trainer.state.log_history,
                        nonfinite="note")
            write_json(self.out_dir / "metrics.json", self.metrics, nonfinite="note")
            for line in summary_lines(self):
                print(line)
            print(f"run folder: {self.out_dir}")
        self.tracker.finish()
        return self.metrics


def objective_value(metrics: dict, key: str | None) -> float | None:
    """The metric a sweep optimises, read from a run's metrics by a dotted key such as
    `heldout_after.accuracy`. None when `key` is None; a ConfigError when it names nothing."""
    if not key:
        return None
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            have = sorted(f"{k}.{m}" for k, v in metrics.items() if isinstance(v, dict)
                          for m in v if isinstance(v[m], (int, float)))
            raise ConfigError(f"objective={key!r} is not in the run's metrics. Did you mean one "
                              f"of: {', '.join(have[:12])}?")
        node = node[part]
    return float(node)


def summary_lines(job: Job) -> list[str]:
    from align.measure.heldout import summary_lines as lines

    names = [k for k in (job.metrics.get("heldout_after") or job.metrics.get("heldout_before")
                         or {}) if "/" not in k and k not in ("samples", "completion_tokens_mean",
                                                              "preference_pairs",
                                                              "reward_pairs")]
    return lines(job.metrics.get("heldout_before"), job.metrics.get("heldout_after"), names)


def freeze_startup_objects() -> None:
    """End the pause of Python's cyclic garbage collector that `python align/<stage>.py` starts
    with (align.run.cli), first moving every object alive now out of its reach (gc.freeze).
    By the time the config is parsed, torch, transformers and trl are imported: some 570,000
    objects that live as long as the process. Walking them finds nothing, yet every full
    collection did (~0.1-0.3 s each on 2 cores, most of them during the imports: ~1 s of a
    60-step SFT run). Reference counting frees frozen objects as usual; only cycles that were
    already garbage stay. A process whose collector was not paused (a test or a notebook calling
    `run(cfg)`, the second job of a sweep in one process) is left as it is."""
    import gc

    if gc.isenabled():
        return
    gc.freeze()
    gc.enable()


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra sweep (`-m`)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


def hydra_run_names(name: str) -> tuple[str | None, str]:
    """(group, run name) from Hydra's runtime: a sweep's runs share a group; the run name
    carries the command-line overrides so runs can be told apart."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, name
    overrides = hc.job.override_dirname
    run_name = f"{name}:{overrides}" if overrides else name
    group = f"{name}-{Path(hc.sweep.dir).name}" if in_multirun() else None
    return group, run_name
