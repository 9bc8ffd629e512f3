"""A TrainerCallback for multi-process tests: each rank writes a digest of its final weights.

Plugged in through the `callbacks` config key; ranks of a data-parallel run must end with
identical weights (ZeRO-3 shards them, so it is not meant for ZeRO-3).
"""

import hashlib
from pathlib import Path

from transformers import TrainerCallback


class WeightDigest(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256()
        for name, param in sorted(model.named_parameters()):
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        Path(args.output_dir, f"weights-rank{args.process_index}.sha256").write_text(digest.hexdigest())
