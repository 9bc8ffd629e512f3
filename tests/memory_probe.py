"""A TrainerCallback that measures one training step's memory by category, on CPU or CUDA.

PyTorch's profiler tags each tensor it sees allocated as a parameter, gradient, optimizer
state, activation, input or temporary, and its memory timeline works on CPU as well as CUDA,
so the planner's per-part estimates can be checked against a real trl step on the tiny model.
The tests plug it in through the `callbacks` config key. It profiles step `STEP` (after the
optimizer has created its states) and writes `memory_probe.json` to the run folder: the
peak bytes of each category over the step, and the shape of the largest batch the model ran
forward with gradients during that step.
"""

import json
import tempfile
import warnings
from pathlib import Path

from transformers import TrainerCallback

REPORT = "memory_probe.json"
STEP = 2


class MemoryProbe(TrainerCallback):
    def __init__(self):
        self.prof = None
        self.hook = None
        self.batch: list[int] = [0, 0]

    def _record(self, module, args, kwargs):
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        if torch.is_grad_enabled() and ids is not None and ids.numel() > self.batch[0] * self.batch[1]:
            self.batch = list(ids.shape)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 != STEP:
            return
        from torch.profiler import ProfilerActivity, profile

        self.hook = model.register_forward_pre_hook(self._record, with_kwargs=True)
        activities = [ProfilerActivity.CPU]
        if args.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.prof = profile(activities=activities, profile_memory=True, record_shapes=True,
                            with_stack=True)
        self.prof.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.prof is None:
            return
        from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX

        self.prof.__exit__(None, None, None)
        self.hook.remove()
        device = "cpu" if args.device.type == "cpu" else f"cuda:{args.device.index or 0}"
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the timeline export is deprecated
            path = Path(tmp, "timeline.json")
            self.prof.export_memory_timeline(str(path), device=device)
            _, sizes = json.loads(path.read_text())
        # Each row: a leading 0, then bytes per category at index _CATEGORY_TO_INDEX + 1.
        names = {index + 1: (category.name if category else "UNKNOWN")
                 for category, index in _CATEGORY_TO_INDEX.items()}
        totals = [sum(row) for row in sizes]
        at_peak = sizes[totals.index(max(totals))]
        report = {"step": STEP, "batch": self.batch, "peak_total": max(totals),
                  "at_peak": {name: at_peak[i] for i, name in names.items()},
                  "peak": {name: max(row[i] for row in sizes) for i, name in names.items()}}
        Path(args.output_dir, REPORT).write_text(json.dumps(report, indent=1))
        self.prof = None
