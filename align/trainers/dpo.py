"""trl's DPOTrainer whose precomputed reference log-probs are shared by every run and sweep
candidate with the same reference, rows and tokenisation (`trainer.ref_logps_cache`, on by
default; it acts only with `trainer.precompute_ref_log_probs=true`).

trl already caches the precompute: `_precompute_ref_logps` names a datasets cache file
`cache-<Hasher.hash((dataset._fingerprint, model hash))>.arrow` next to the dataset's own cache
files and reads it when it exists. In align that file is never found by a second run:
- the tokenised dataset's fingerprint covers the whole DPOConfig (trl's prompt-length filter
  closes over `args`), so another beta, learning rate, seed or output_dir changes it;
- the model hash covers the whole policy: with an adapter, its random initialisation, which
  changes with the seed although the reference is the base with the adapter disabled;
- align's datasets live in memory (no cache files), so datasets puts the file in a temporary
  folder, deleted at exit, under a random name.

This subclass keeps trl's precompute as it is (batching, reference forward, rank 0's
fingerprint broadcast to every rank, the main process writing, everyone reading) and gives it
inputs that name what decides the numbers:
- as the model hash: the reference weights only (an adapter's weights left out, unless trl
  uses an adapter named "ref" as the reference), with the collator's settings (max_length,
  truncation_mode, pad token, pad_to_multiple_of), the precompute batch size and process count
  (they decide the padding of each forward), ld_alpha, mixed precision, dropout, the attention
  implementation and trl's version;
- as the dataset: the tokenised rows written once to `$ALIGN_CACHE/ref_logps/<rows>/` with
  `<rows>` a hash of their content (every column, in order), so that other data rows, another
  tokenizer or chat template, and rows dropped by max_length each give other rows; trl's file
  lands beside them.

Weights sharded before the precompute (ZeRO-3, FSDP) cannot be hashed here; such runs keep
trl's behaviour (a temporary cache per run). The trl internals used are pinned by
tests/test_ref_cache.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time

import torch
import trl
from accelerate.utils import broadcast_object_list, is_peft_model
from datasets import Dataset
from datasets.fingerprint import Hasher
from trl import DPOTrainer as TrlDPOTrainer

logger = logging.getLogger(__name__)

#: Bump when what a cache entry holds or how it is keyed changes.
CACHE_VERSION = 1


def cache_dir():
    from align.files import cache_root

    return cache_root() / "ref_logps"


def rows_hash(dataset: Dataset) -> str:
    """A hash of every column of every row, in order: what the reference forward reads."""
    digest = hashlib.sha256(",".join(sorted(dataset.column_names)).encode())
    for batch in dataset.iter(batch_size=2048):
        digest.update(json.dumps(batch, sort_keys=True, default=repr).encode())
    return digest.hexdigest()[:32]


def reference_state(model: torch.nn.Module, ref_model: torch.nn.Module | None) -> dict | None:
    """The weights of the model trl's reference forward runs: `ref_model`, or the policy's base
    with its adapters excluded (trl disables them; an adapter named "ref" is kept, trl enables
    it). None when the weights are sharded and so cannot be read whole on one process."""
    module = ref_model if ref_model is not None else model
    params = list(module.parameters())
    if any(hasattr(p, "ds_id") or type(p.data).__name__ == "DTensor" for p in params):
        return None
    if ref_model is not None or not is_peft_model(module):
        return module.state_dict()
    adapters = [name for name in module.peft_config if name != "ref"]

    def is_adapter(key: str) -> bool:
        return any(f".{name}." in key or key.endswith(f".{name}") for name in adapters)

    # peft moves a wrapped layer's weight to `<layer>.base_layer.weight`: the same weight
    return {key.replace(".base_layer", ""): value
            for key, value in module.get_base_model().state_dict().items() if not is_adapter(key)}


def hash_state(state: dict) -> str:
    """trl's `hash_module` over a state dict (dtype and bytes of every tensor, by name)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            tensor = tensor.to(torch.float32)
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


class DPOTrainer(TrlDPOTrainer):
    """trl's DPOTrainer; with `args.ref_logps_cache` (align.trainers.config.DPOConfig) its
    precomputed reference log-probs are kept in and read from align's cache (module docstring).
    `ref_logps` records, per dataset name, the cache file (None: trl's own), whether it was
    already there, and the seconds the precompute took (hashing and reading included)."""

    def __init__(self, *args, **kwargs):
        self.ref_logps: dict[str, dict] = {}
        self._reference_weights: str | None = None  # hashed once, for train and eval
        super().__init__(*args, **kwargs)

    def _reference_settings(self, batch_size: int) -> dict:
        collator = self.data_collator
        module = self.ref_model if self.ref_model is not None else self.model
        return {
            "collator": type(collator).__name__,
            "collator_settings": (dataclasses.asdict(collator) if dataclasses.is_dataclass(collator)
                                  else repr(collator)),
            "batch_size": batch_size,
            "processes": self.accelerator.num_processes,
            "ld_alpha": self.ld_alpha,
            "mixed_precision": str(self.accelerator.mixed_precision),
            "disable_dropout": self.args.disable_dropout,
            "attention": getattr(module.config, "_attn_implementation", None),
            "trl": trl.__version__,
            "version": CACHE_VERSION,
        }

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        started = time.perf_counter()
        out, cache_file, reused = self._cached_precompute(dataset, name, batch_size)
        self.ref_logps[name] = {"file": cache_file, "reused": reused,
                                "seconds": round(time.perf_counter() - started, 3)}
        return out

    def _cached_precompute(self, dataset, name: str, batch_size: int):
        if not getattr(self.args, "ref_logps_cache", False) or not isinstance(dataset, Dataset):
            return super()._precompute_ref_logps(dataset, name, batch_size), None, False
        if self._reference_weights is None:
            state = reference_state(self.accelerator.unwrap_model(self.model), self.ref_model)
            if state is None:
                logger.info("reference log-probs: sharded weights, not shared through align's cache")
                return super()._precompute_ref_logps(dataset, name, batch_size), None, False
            self._reference_weights = hash_state(state)
        # trl broadcasts rank 0's final fingerprint; the rows' folder must agree on every rank
        # before that, so it is broadcast too.
        key = [rows_hash(dataset)]
        broadcast_object_list(key, from_process=0)
        folder = cache_dir() / key[0]
        folder.mkdir(parents=True, exist_ok=True)
        with self.accelerator.main_process_first():
            # Memory-mapped from `folder` (written once, read by later runs): datasets' cache
            # path of trl's file is then `folder/cache-<fingerprint>.arrow`.
            rows = dataset.flatten_indices(cache_file_name=str(folder / "rows.arrow"),
                                           new_fingerprint=key[0])
        self._precompute_model_hash = Hasher.hash(
            (self._reference_weights, self._reference_settings(batch_size)))
        fingerprint = Hasher.hash((rows._fingerprint, self._precompute_model_hash))
        cache_file = rows._get_cache_file_path(fingerprint)
        reused = os.path.exists(cache_file)
        out = super()._precompute_ref_logps(rows, name, batch_size)
        logger.info("reference log-probs (%s): %s %s", name,
                    "read from" if reused else "computed and written to", cache_file)
        return out, cache_file, reused
