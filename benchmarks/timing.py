"""The CPU benchmarks' callback: benchmarks/probe.py's figures plus what a comparison needs.

Plugged into align as `callbacks=[timing:Timing]` and into the plain trl scripts directly
(benchmarks/run.py puts this folder on PYTHONPATH for both). It writes `timing.json` into
the trainer's output_dir with, on top of probe.py's report:

- `step_s_mean`: every step's time averaged, warm-up included (GRPO with
  steps_per_generation > 1 generates only on some steps, so its median would hide generation);
- `losses`, `grad_norms`: the whole logged curve, to check two runs trained identically;
- `profile`: total seconds and calls of every block trl times with its own profiling
  context (GRPO: `transformers.generate`, `_prepare_inputs`, `_calculate_rewards`,
  `compute_loss` ...). trl only sends those timings to W&B/MLflow/Trackio; this wraps the
  logging method to keep them.
"""

import json
from collections import defaultdict
from pathlib import Path

from probe import Probe

_PROFILE: dict[str, list] = defaultdict(lambda: [0.0, 0])


def _hook_trl_profiling() -> None:
    from trl.extras import profiling

    cls = profiling.ProfilingContext
    if getattr(cls, "_benchmark_hooked", False):
        return
    original = cls._log_metrics

    def _log_metrics(self, duration):
        total = _PROFILE[self.name.split(".", 1)[-1]]  # drop the trainer class prefix
        total[0] += duration
        total[1] += 1
        return original(self, duration)

    cls._log_metrics = _log_metrics
    cls._benchmark_hooked = True


class Timing(Probe):
    def __init__(self):
        super().__init__()
        _hook_trl_profiling()  # here, not at import: align imports callbacks before trl

    def on_train_end(self, args, state, control, model=None, **kwargs):
        super().on_train_end(args, state, control, model=model, **kwargs)
        if args.process_index != 0:
            return
        out = Path(args.output_dir)
        report = json.loads((out / "probe.json").read_text())
        report.update(
            step_s_mean=sum(self.step_times) / len(self.step_times) if self.step_times else None,
            step_s_sum=sum(self.step_times),
            losses=[h["loss"] for h in state.log_history if "loss" in h],
            grad_norms=[h["grad_norm"] for h in state.log_history if "grad_norm" in h],
            rewards=[h["reward"] for h in state.log_history if "reward" in h],
            profile={k: {"s": v[0], "calls": v[1]} for k, v in sorted(_PROFILE.items())},
        )
        (out / "timing.json").write_text(json.dumps(report, indent=1))
