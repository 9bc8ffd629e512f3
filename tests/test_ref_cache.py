"""DPO's precomputed reference log-probs in align's cache (align/trainers/dpo.py): one entry per
(reference weights, tokenised rows, collator and forward settings), shared by runs that differ
in anything else, and a new entry for any change of those. Real trl runs on the tiny model."""

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from align import dpo
from align.files import cache_root
from align.run.conf import CONF_DIR, register

register()
REPO = Path(__file__).resolve().parent.parent
# 64 pairs, 3 steps of 8: every forward on the tiny model takes milliseconds.
QUICK = ["logger=none", "heldout.enabled=false", "trainer.save_strategy=no", "trainer.max_steps=3",
         "trainer.logging_steps=1", "trainer.warmup_steps=0", "trainer.per_device_train_batch_size=8",
         "data.synthetic.n_train=64", "trainer.precompute_ref_log_probs=true"]
OTHER_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                  "{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh ALIGN_CACHE for the entries, with the tiny models (and fields) of the real one."""
    real, tmp = cache_root(), tmp_path_factory.mktemp("align_cache")
    for entry in real.iterdir():
        (tmp / entry.name).symlink_to(entry)
    before = os.environ.get("ALIGN_CACHE")
    os.environ["ALIGN_CACHE"] = str(tmp)
    yield tmp / "ref_logps"
    if before is None:
        del os.environ["ALIGN_CACHE"]
    else:
        os.environ["ALIGN_CACHE"] = before


def run(out, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("dpo", overrides=[*QUICK, f"output_dir={out}", *overrides])
    metrics = dpo.run(cfg)
    losses = [h["loss"] for h in map(json.loads, (out / "log_history.jsonl").read_text().splitlines())
              if "loss" in h]
    return metrics, losses


def entries(cache):
    return {p: p.stat().st_mtime_ns for p in cache.rglob("cache-*.arrow")} if cache.exists() else {}


def test_runs_with_other_beta_lr_and_seed_share_one_entry_with_the_losses_of_no_cache(cache, tmp_path):
    first, _ = run(tmp_path / "a", "seed=1", "trainer.beta=0.1", "trainer.learning_rate=5e-4")
    entry = first["reference_logps"]["train"]
    assert entry["reused"] is False and Path(entry["file"]).parent.parent == cache
    written = entries(cache)
    assert list(written) == [Path(entry["file"])]

    # Another beta, learning rate and seed (so another LoRA initialisation): the same reference.
    second, cached = run(tmp_path / "b", "seed=2", "trainer.beta=0.3", "trainer.learning_rate=1e-4")
    assert {k: second["reference_logps"]["train"][k] for k in ("file", "reused")} == {
        "file": entry["file"], "reused": True}
    assert entries(cache) == written  # no new file, the existing one not rewritten

    # The same run with trl's own per-run cache, and with no precompute at all: same losses.
    third, uncached = run(tmp_path / "c", "seed=2", "trainer.beta=0.3", "trainer.learning_rate=1e-4",
                          "trainer.ref_logps_cache=false")
    assert third["reference_logps"]["train"]["file"] is None and entries(cache) == written
    _, live = run(tmp_path / "d", "seed=2", "trainer.beta=0.3", "trainer.learning_rate=1e-4",
                  "trainer.precompute_ref_log_probs=false")
    assert len(cached) == 3 and cached == uncached == live
    assert len(set(cached)) > 1  # the loss moved: the runs trained


@pytest.mark.parametrize("change", [
    ["data.synthetic.seed=1"],                 # other rows
    ["data.synthetic.n_train=48"],             # fewer rows
    ["trainer.max_length=24"],                 # truncated by the collator
    ["trainer.truncation_mode=keep_end", "trainer.max_length=24"],
    ["model=tiny"],                            # another base (reference) model
    ["model.chat_template=TEMPLATE"],          # a file holding another template
], ids=["rows", "n_rows", "max_length", "truncation_mode", "base_model", "chat_template"])
def test_each_changed_input_gives_a_new_entry(change, cache, tmp_path):
    (tmp_path / "template.jinja").write_text(OTHER_TEMPLATE)
    change = [c.replace("TEMPLATE", str(tmp_path / "template.jinja")) for c in change]
    base, _ = run(tmp_path / "base", "trainer.max_steps=1")
    before = entries(cache)
    changed, _ = run(tmp_path / "changed", "trainer.max_steps=1", *change)
    entry = changed["reference_logps"]["train"]
    assert entry["reused"] is False and entry["file"] != base["reference_logps"]["train"]["file"]
    assert set(entries(cache)) - set(before) == {Path(entry["file"])}


def test_the_reference_hash_leaves_out_the_adapter_only(tiny_sft_path, tiny_base_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from align.trainers.dpo import hash_state, reference_state

    def adapted(path, seed):
        torch.manual_seed(seed)
        config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights="gaussian")
        return get_peft_model(AutoModelForCausalLM.from_pretrained(path), config)

    one, two = adapted(tiny_sft_path, 0), adapted(tiny_sft_path, 1)
    lora = next(k for k in one.state_dict() if "lora_A" in k)
    assert not torch.equal(one.state_dict()[lora], two.state_dict()[lora])
    assert hash_state(reference_state(one, None)) == hash_state(reference_state(two, None))
    plain = AutoModelForCausalLM.from_pretrained(tiny_sft_path)
    assert hash_state(reference_state(plain, None)) == hash_state(reference_state(one, None))
    other = adapted(tiny_base_path, 0)
    assert hash_state(reference_state(other, None)) != hash_state(reference_state(one, None))
    # A reference copy is hashed whole; an adapter named "ref" is part of the reference.
    assert hash_state(reference_state(one, plain)) == hash_state(plain.state_dict())
    one.add_adapter("ref", LoraConfig(r=4, target_modules="all-linear", init_lora_weights="gaussian"))
    assert hash_state(reference_state(one, None)) != hash_state(reference_state(two, None))


def test_the_trl_internals_the_cache_relies_on():
    """A trl or datasets upgrade that changes any of these fails here, not in a user's run."""
    from datasets import Dataset
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    precompute = inspect.getsource(DPOTrainer._precompute_ref_logps)
    assert list(inspect.signature(DPOTrainer._precompute_ref_logps).parameters) == [
        "self", "dataset", "name", "batch_size"]
    for line in ("model_hash = self._precompute_model_hash",
                 "fingerprint = [Hasher.hash((dataset._fingerprint, model_hash))]",
                 "broadcast_object_list(fingerprint, from_process=0)",
                 "cache_file = dataset._get_cache_file_path(fingerprint)",
                 "if os.path.exists(cache_file):",
                 "return concatenate_datasets([dataset, Dataset.from_file(cache_file)], axis=1)",
                 "if self.accelerator.is_main_process:",
                 "cache_file_name=cache_file",
                 "model = self.ref_model or self.model",
                 "collate_fn=self.data_collator"):
        assert line in precompute, line
    init = inspect.getsource(DPOTrainer.__init__)
    for line in ("self.train_dataset = self._precompute_ref_logps(", "self.ld_alpha",
                 "data_collator = DataCollatorForPreference("):
        assert line in init, line
    # The reference forward: the adapter disabled, or the adapter named "ref" enabled.
    ref_forward = inspect.getsource(DPOTrainer.compute_ref_log_probs)
    assert 'adapter_name="ref" if "ref" in unwrapped_model.peft_config else None' in ref_forward
    assert "self.ld_alpha" in ref_forward and "self.accelerator.autocast()" in ref_forward
    # Everything the collator does to the rows is in its dataclass fields.
    assert {f for f in DataCollatorForPreference.__dataclass_fields__} == {
        "pad_token_id", "max_length", "truncation_mode", "pad_to_multiple_of", "return_tensors"}
    # datasets names a cache file after the fingerprint, next to the dataset's first file.
    path = inspect.getsource(Dataset._get_cache_file_path)
    assert 'cache_file_name = "cache-" + fingerprint + ".arrow"' in path
    assert 'os.path.dirname(self.cache_files[0]["filename"])' in path


@pytest.mark.slow
def test_two_ranks_write_one_entry_and_a_second_launch_reads_it(cache, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    shutil.rmtree(cache, ignore_errors=True)
    found = []
    for launch in ("first", "second"):
        proc = subprocess.run(
            [accelerate, "launch", "--config_file", str(REPO / "launch" / "ddp.yaml"),
             "--num_processes", "2", str(REPO / "align" / "dpo.py"), *QUICK,
             "trainer.per_device_train_batch_size=4", f"output_dir={tmp_path / launch}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-4000:]
        metrics = json.loads((tmp_path / launch / "metrics.json").read_text())
        assert metrics["world_size"] == 2
        found.append(metrics["reference_logps"]["train"])
        assert list(entries(cache)) == [Path(found[0]["file"])]
    assert [f["reused"] for f in found] == [False, True] and found[0]["file"] == found[1]["file"]
