"""Held-out measurement during training, as a transformers TrainerCallback.

Turned on with `heldout.eval_steps=N` on any stage (`python align/grpo.py heldout.eval_steps=100`):
every N optimizer steps the model answers the held-out prompts greedily (align.measure.heldout.evaluate,
the same measurement as before and after training) and the figures go

  - into the trainer's log history as `heldout/<reward>` (so trainer_state.json, the run
    folder's log_history.jsonl and `python -m align.plots` see them),
  - to W&B when tracking is on, with the first `heldout.log_samples` completions as a table,
  - into metrics.json under `heldout_during` (a list of {step, <reward>: value}).

Only the main process measures; the others wait at the next collective step as usual.
"""

from __future__ import annotations

import logging

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

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.job.spec.heldout.eval_steps
        if not every or state.global_step % every or not self.job.is_main:
            return
        from align.measure.heldout import evaluate_with_samples

        figures, rows = evaluate_with_samples(model, self.tokenizer, self.dataset,
                                              self.reward_funcs, self.job.spec.heldout)
        names = [fn.__name__ for fn in self.reward_funcs]
        logged = {f"heldout/{n}": figures[n] for n in names}
        logged["heldout/completion_tokens_mean"] = figures["completion_tokens_mean"]
        self.curve.append({"step": state.global_step, **{n: figures[n] for n in names}})
        state.log_history.append({**logged, "step": state.global_step})
        run = self.job.tracker.run
        if run is not None:
            import wandb

            table = wandb.Table(columns=["step", "prompt", "completion", "solution", *names])
            for row in rows[: self.job.spec.heldout.log_samples]:
                table.add_data(state.global_step, str(row["prompt"]), row["completion"],
                               None if row["solution"] is None else str(row["solution"]),
                               *[row.get(n) for n in names])
            # transformers' W&B callback plots against train/global_step; log on the same axis.
            run.log({**logged, "heldout/samples": table, "train/global_step": state.global_step})
        log.info("step %d held-out %s", state.global_step,
                 ", ".join(f"{k}={v:.3f}" for k, v in logged.items()))
