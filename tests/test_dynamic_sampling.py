"""trainer.dynamic_sampling: zero-spread groups dropped and refilled, on real trl rollouts of the
tiny model; the trl internals it uses pinned; its keys checked before anything loads."""

import inspect
import logging
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

from align.errors import ConfigError
from align.run import values
from align.run.conf import CONF_DIR, register
from align.run.spec import decide

register()
REPO = Path(__file__).resolve().parent.parent
GENERATIONS = 4


def half_constant(completions, solution, **kwargs):
    """Even answers: 1.0 whatever was written (a zero-spread group); odd answers: exact match
    (spread when some samples are right and some wrong)."""
    out = []
    for completion, answer in zip(completions, solution):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        out.append(1.0 if int(answer) % 2 == 0 else float(text.strip() == str(answer)))
    return out


def constant(completions, **kwargs):
    return [1.0] * len(completions)


class Recording:
    """Keeps what the real trainer returns for each trained batch (observes, changes nothing)."""

    def _fill_with_informative_groups(self, inputs, output):
        joined = super()._fill_with_informative_groups(inputs, output)
        self.batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in joined.items()})
        return joined


def make_trainer(tmp_path, tiny_sft_path, reward, steps=3, **args):
    from align.data import load_stage_data
    from align.trainers.config import GRPOConfig
    from align.trainers.grpo import GRPOTrainer

    cls = type("RecordingTrainer", (Recording, GRPOTrainer), {})
    data = load_stage_data({"name": "arithmetic", "path": "synthetic:arithmetic",
                            "max_samples": 400, "synthetic": {"n_eval": 16}}, "grpo")
    config = GRPOConfig(output_dir=str(tmp_path), max_steps=steps, logging_steps=1,
                        per_device_train_batch_size=16, num_generations=GENERATIONS,
                        max_completion_length=5, temperature=0.7, learning_rate=5e-5,
                        beta=0.0, loss_type="dapo", report_to=[], save_strategy="no",
                        dynamic_sampling=True, seed=3, bf16=False, **args)
    trainer = cls(model=str(tiny_sft_path), reward_funcs=[reward], args=config,
                  train_dataset=data.train,
                  processing_class=AutoTokenizer.from_pretrained(tiny_sft_path))
    trainer.batches = []
    return trainer


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def group_spread(batch):
    return batch["advantages"].view(-1, GENERATIONS).abs().amax(dim=1)


def test_trl_internals_dynamic_sampling_relies_on():
    """A trl upgrade that renames or reshapes these fails here, not in a user's run."""
    from trl import GRPOTrainer
    from trl.trainer.utils import nanstd

    params = list(inspect.signature(GRPOTrainer._generate_and_score_completions).parameters)
    assert params == ["self", "inputs"]
    params = list(inspect.signature(GRPOTrainer._calculate_rewards).parameters)
    assert params == ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    assert torch.isclose(nanstd(torch.tensor([[1.0, 3.0]]), dim=1), torch.tensor([2 ** 0.5]))
    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    # the output keys joined across rounds, and the loss normaliser recomputed for them
    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
                "num_items_in_batch", "old_per_token_logps", "ref_per_token_logps",
                "tool_mask"):
        assert f'"{key}"' in source, key
    assert "num_items_in_batch = self.accelerator.gather(loss_mask.sum()).sum()" in source
    assert "rewards_per_func = self._calculate_rewards(" in source
    assert 'self._metrics = {"train": defaultdict(list)' in inspect.getsource(GRPOTrainer.__init__)


def test_zero_spread_groups_are_replaced_by_informative_ones(tmp_path, tiny_sft_path):
    trainer = make_trainer(tmp_path, tiny_sft_path, half_constant)
    trainer.train()
    assert len(trainer.batches) == 3
    for batch in trainer.batches:
        assert batch["completion_ids"].size(0) == 16  # the batch size never changes
        # every group trained on has a reward spread (non-zero advantages) ...
        assert (group_spread(batch) > 0).all(), group_spread(batch)
        # ... and the loss normaliser counts the joined batch's completion tokens
        assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"].sum())
        # left-padded prompts, right-padded completions after the join
        assert (batch["prompt_mask"][:, -1] == 1).all()
        assert (batch["completion_mask"][:, 0] == 1).all()
    # half the prompts score 1.0 whatever is written: groups were dropped and regenerated
    # (how many of a step's prompts have even answers is a draw: which one depends on the CPU's
    # float summation, through the samples drawn before it; 1 of 8 at some step on an Intel Xeon)
    zero_std = logged(trainer, "frac_reward_zero_std")
    assert min(zero_std) > 0 and max(zero_std) >= 0.25, zero_std
    assert all(r >= 1 for r in logged(trainer, "dynamic_sampling/extra_rounds"))
    assert all(g > 1 for g in logged(trainer, "dynamic_sampling/generated_groups"))
    assert logged(trainer, "dynamic_sampling/zero_spread_kept") == [0.0, 0.0, 0.0]


def test_the_cap_keeps_the_batch_full_when_no_group_varies(tmp_path, tiny_sft_path):
    trainer = make_trainer(tmp_path, tiny_sft_path, constant, steps=2,
                           dynamic_sampling_max_rounds=2)
    trainer.train()
    assert logged(trainer, "dynamic_sampling/extra_rounds") == [2.0, 2.0]
    # nothing varies, so each round drew a whole batch of fresh prompts: 1 + 2 batches
    assert logged(trainer, "dynamic_sampling/generated_groups") == [3.0, 3.0]
    assert logged(trainer, "dynamic_sampling/zero_spread_generated") == [1.0, 1.0]
    assert logged(trainer, "dynamic_sampling/zero_spread_kept") == [1.0, 1.0]
    for batch in trainer.batches:
        assert batch["completion_ids"].size(0) == 16
        assert (group_spread(batch) == 0).all()


def test_join_pads_each_key_on_its_side(tmp_path, tiny_sft_path):
    trainer = make_trainer(tmp_path, tiny_sft_path, constant, steps=1)
    pad = trainer.processing_class.pad_token_id

    def rows(prompt_width, completion_width, value, n=GENERATIONS * 2):
        return {"prompt_ids": torch.full((n, prompt_width), value),
                "prompt_mask": torch.ones(n, prompt_width, dtype=torch.long),
                "completion_ids": torch.full((n, completion_width), value),
                "completion_mask": torch.ones(n, completion_width, dtype=torch.long),
                "advantages": torch.full((n,), float(value)),
                "num_items_in_batch": torch.tensor(-1)}

    narrow, wide = rows(3, 2, 7), rows(5, 4, 9)
    joined = trainer._join([narrow, wide], [(0, 1), (1, 0)])
    assert joined["prompt_ids"].shape == (8, 5) and joined["completion_ids"].shape == (8, 4)
    assert joined["prompt_ids"][0].tolist() == [pad, pad, 7, 7, 7]       # left
    assert joined["prompt_mask"][0].tolist() == [0, 0, 1, 1, 1]
    assert joined["completion_ids"][0].tolist() == [7, 7, pad, pad]       # right
    assert joined["completion_mask"][0].tolist() == [1, 1, 0, 0]
    assert joined["advantages"].tolist() == [7.0] * 4 + [9.0] * 4
    assert int(joined["num_items_in_batch"]) == 4 * 2 + 4 * 4
    # tool-call rollouts: tool result tokens (tool_mask 0) are left out of the loss normaliser,
    # and padding counts as "not a tool token" the way trl pads it
    narrow["tool_mask"] = torch.tensor([[1, 0]] * 8)
    wide["tool_mask"] = torch.ones(8, 4, dtype=torch.long)
    joined = trainer._join([narrow, wide], [(0, 1), (1, 0)])
    assert joined["tool_mask"][0].tolist() == [1, 0, 1, 1]
    assert int(joined["num_items_in_batch"]) == 4 * 1 + 4 * 4
    with pytest.raises(RuntimeError, match=r"cannot join trl's generation output key\(s\) "
                                           r"\['pixel_values'\]"):
        trainer._join([{**narrow, "pixel_values": torch.zeros(1)}], [(0, 0)])


def compose_grpo(tmp_path, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("grpo", overrides=["logger=none", f"output_dir={tmp_path}", *overrides])


def test_on_by_default_for_text_models_and_off_with_a_warning_for_vision(tmp_path, caplog):
    """The GRPO default trains with it; a vision model trains without it (its batches are not
    joined), with a warning that says so, and the VLM experiment turns it off itself."""
    decided = decide(compose_grpo(tmp_path), "grpo")
    assert decided.trainer_kwargs["dynamic_sampling"] is True
    with caplog.at_level(logging.WARNING, logger="align.run.spec"):
        vlm = decide(compose_grpo(tmp_path, "model=tiny_vlm", "data=shapes"), "grpo")
    assert vlm.trainer_kwargs["dynamic_sampling"] is False
    assert [r.getMessage() for r in caplog.records if "dynamic_sampling" in r.getMessage()] == [
        "trainer.dynamic_sampling: off for model.kind=image_text_to_text (text models only); "
        "set trainer.dynamic_sampling=false to silence this"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="align.run.spec"):
        vlm = decide(compose_grpo(tmp_path, "experiment=grpo_tiny_vlm"), "grpo")
    assert vlm.trainer_kwargs["dynamic_sampling"] is False
    assert not [r for r in caplog.records if "dynamic_sampling" in r.getMessage()]


def test_keys_are_checked_before_anything_loads(tmp_path):
    decided = decide(compose_grpo(tmp_path, "trainer.dynamic_sampling=true"), "grpo")
    assert decided.trainer_kwargs["dynamic_sampling"] is True
    with pytest.raises(ConfigError, match="trainer.dynamic_sampling_max_rounds=0: must be a "
                                          "positive integer"):
        decide(compose_grpo(tmp_path, "trainer.dynamic_sampling_max_rounds=0"), "grpo")
    with pytest.raises(ConfigError, match="trainer.dynamic_sampling='yes'"):
        decide(compose_grpo(tmp_path, "trainer.dynamic_sampling=yes"), "grpo")
    with pytest.raises(ConfigError, match="unknown config key 'trainer.dynamic_sampling'"):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("dpo", overrides=["logger=none", f"output_dir={tmp_path}",
                                            "+trainer.dynamic_sampling=true"])
        decide(cfg, "dpo")


def test_groups_must_be_whole_on_each_process():
    """2 processes x 4 completions with groups of 8: trl accepts it (8 per step), but each
    process holds half a group, and dynamic sampling counts groups per process."""
    args = types.SimpleNamespace(loss_type="dapo", importance_sampling_level="token",
                                 use_vllm=False, per_device_train_batch_size=4,
                                 steps_per_generation=1, num_generations=8, dynamic_sampling=True)
    assert values.check_trainer_combinations(args, "grpo") == [
        "trainer.dynamic_sampling=true needs whole groups on each process: "
        "per_device_train_batch_size x steps_per_generation (4) must be a multiple of "
        "num_generations (8), or set trainer.dynamic_sampling=false"]
    args.steps_per_generation = 2
    assert values.check_trainer_combinations(args, "grpo") == []


@pytest.mark.slow
def test_two_processes_refill_in_step(tmp_path):
    """Both ranks generate the same number of extra rounds (trl gathers rewards across them)
    and end with the same weights."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    proc = subprocess.run(
        [accelerate, "launch", "--config_file", str(REPO / "launch" / "ddp.yaml"),
         "--num_processes", "2", str(REPO / "align" / "grpo.py"), "logger=none",
         "trainer.max_steps=3", "trainer.logging_steps=1", "trainer.save_strategy=no",
         "heldout.max_samples=8", "trainer.per_device_train_batch_size=8",
         "trainer.num_generations=4", "trainer.dynamic_sampling=true",
         "callbacks=[rank_check:WeightDigest]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    folder, = (tmp_path / "outputs" / "grpo").iterdir()
    digests = [(folder / f"weights-rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1], "the ranks ended with different weights"
    assert json.loads((folder / "metrics.json").read_text())["train"]["global_step"] == 3
    history = [json.loads(line) for line in (folder / "log_history.jsonl").read_text().splitlines()]
    kept = [h["dynamic_sampling/zero_spread_kept"] for h in history
            if "dynamic_sampling/zero_spread_kept" in h]
    assert len(kept) == 3, history
