"""FSDP2 (torch's `fully_shard`) around trl's trainers: on CPU too, and a whole model saved.

    accelerate launch --config_file launch/fsdp2.yaml --num_processes 2 align/sft.py

Two things the libraries leave to the caller:

- **CPU.** accelerate 1.16 turns an FSDP launch into FSDP only on an accelerator
  (`AcceleratorState`: MULTI_GPU, MULTI_XPU, ...); on CPU (MULTI_CPU over gloo) it drops the
  plugin and the trainer wraps the model in plain DDP, with no word about it. torch's
  `fully_shard` runs on CPU over gloo, and accelerate's FSDP2 path (`fsdp2_prepare_model`,
  DCP checkpoints, `get_state_dict`) has nothing CUDA-only in it, so `shard_on_cpu` marks the
  process's accelerate state FSDP before the trainer builds its Accelerator. That is how CPU
  tests and CPU-only clusters run the FSDP2 path GPU users launch.
- **Saving.** transformers' `save_model` writes weights under FSDP only for a full state dict;
  launch/fsdp2.yaml keeps SHARDED_STATE_DICT, so that checkpoints are written by every rank in
  parallel (torch.distributed.checkpoint) and resume as transformers expects. `save_full_model`
  switches the plugin to a full state dict for the one final save (the use accelerate's
  `set_state_dict_type` documents: train sharded, save full), every rank taking part in the
  gather, and switches back.
"""

from __future__ import annotations

import os

#: accelerate's distributed type of a CPU process group (gloo)
MULTI_CPU = "MULTI_CPU"


def fsdp_asked(env=None) -> bool:
    """The launch asks for FSDP (`distributed_type: FSDP` in the accelerate config)."""
    env = os.environ if env is None else env
    return env.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def shards_on_cpu(fsdp: bool, process_group: str) -> bool:
    """Whether align must mark accelerate's state FSDP itself: the launch asks for FSDP and the
    processes form a CPU group (accelerate would fall back to DDP there)."""
    return fsdp and process_group == MULTI_CPU


def shard_on_cpu(args) -> None:
    """Make the Accelerator that trl's trainer builds shard with FSDP over the CPU process group
    that `args` (trl's config, a transformers TrainingArguments) set up. Call after `args` is
    built and before the trainer; a no-op unless `shards_on_cpu`. The state is the process's
    (accelerate's shared state): every trainer built afterwards (DPO's on-policy rounds) shards
    too."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    group = args.distributed_state.distributed_type
    if not shards_on_cpu(fsdp_asked(), str(group).split(".")[-1]):
        return
    # The plugin reads the launch's FSDP_* settings, as accelerate's own does on a GPU.
    plugin = FullyShardedDataParallelPlugin()
    # The trainer builds its Accelerator with the config's precision; the shared state must
    # agree, or accelerate refuses the second Accelerator.
    Accelerator(mixed_precision=args.mixed_precision)
    if args.mixed_precision != "no":
        plugin.set_mixed_precision(args.mixed_precision)
    state = AcceleratorState()
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def save_full_model(trainer, folder: str) -> None:
    """`trainer.save_model(folder)` with the whole model in it. Call on every rank: under FSDP
    the weights are gathered from all of them (the main process writes)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled \
        else None
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        trainer.save_model(folder)
        return
    kept = plugin.state_dict_type
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        trainer.save_model(folder)
    finally:
        plugin.set_state_dict_type(kept)
