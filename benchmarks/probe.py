"""A TrainerCallback that measures a run for the benchmarks: step times, tokens, peak memory.

Plugged into any align entry point through the `callbacks` config key, with this folder on
PYTHONPATH:  PYTHONPATH=benchmarks python align/grpo.py callbacks=[probe:Probe] ...
It writes `probe.json` into the run folder. The first `warmup` steps are left out of the
step-time figures (allocator warm-up, kernel autotuning, compilation).
"""

import json
import resource
import time
from pathlib import Path

from transformers import TrainerCallback


class Probe(TrainerCallback):
    warmup = 2

    def __init__(self):
        self.step_times: list[float] = []
        self._t0 = 0.0
        self._train_t0 = 0.0

    @staticmethod
    def _sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._train_t0 = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.step_times.append(time.perf_counter() - self._t0)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch

        self._sync()
        timed = self.step_times[self.warmup:] or self.step_times
        logs = [h for h in state.log_history if "num_tokens" in h]
        tokens = logs[-1]["num_tokens"] if logs else None
        report = {
            "steps": len(self.step_times),
            "step_s_median": sorted(timed)[len(timed) // 2] if timed else None,
            "train_s": time.perf_counter() - self._train_t0,
            "tokens": tokens,
            "tokens_per_s": tokens / sum(self.step_times) if tokens else None,
            # GPU: peak memory allocated by torch; CPU: the process's peak resident set.
            "peak_mem_gib": (torch.cuda.max_memory_allocated() / 2**30
                             if torch.cuda.is_available()
                             else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20),
            "params": sum(p.numel() for p in model.parameters()) if model is not None else None,
            "trainable": (sum(p.numel() for p in model.parameters() if p.requires_grad)
                          if model is not None else None),
            "final_loss": next((h["loss"] for h in reversed(state.log_history) if "loss" in h),
                               None),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        }
        if args.process_index == 0:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            Path(args.output_dir, "probe.json").write_text(json.dumps(report, indent=1))
