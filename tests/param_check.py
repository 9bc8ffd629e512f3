"""A TrainerCallback the run tests plug in through the `callbacks` config key.

It snapshots every parameter when training begins and, when it ends, writes to the run folder
which trainable parameters did NOT change and which frozen ones DID: both lists must be empty.
"""

import json
from pathlib import Path

from transformers import TrainerCallback

REPORT = "param_changes.json"


class ParamChangeCallback(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch

        unchanged, frozen_changed, trainable = [], [], []
        for name, p in model.named_parameters():
            old, requires_grad = self.before[name]
            same = torch.equal(old, p.detach())
            if requires_grad:
                trainable.append(name)
                if same:
                    unchanged.append(name)
            elif not same:
                frozen_changed.append(name)
        report = {"trainable": trainable, "trainable_unchanged": unchanged,
                  "frozen_changed": frozen_changed, "total": len(self.before)}
        Path(args.output_dir, REPORT).write_text(json.dumps(report, indent=1))
