"""Reward models, the fifth stage: trl's RewardTrainer on the tiny model (CPU, no mocks), the
held-out pairwise accuracy, and the saved run as GRPO's `reward_model` reward."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from align import rm
from align.errors import ConfigError
from align.run.conf import CONF_DIR, register

register()
REPO = Path(__file__).resolve().parent.parent
FAST = ["trainer.max_steps=4", "trainer.logging_steps=1", "trainer.warmup_steps=0",
        "trainer.save_strategy=no", "trainer.per_device_train_batch_size=8", "logger=none",
        "heldout.max_samples=32"]


def compose_stage(stage, out, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[*FAST, f"output_dir={out}", *overrides])


def command(tmp_path, *overrides):
    """`python align/rm.py ...` as a user types it: from another directory, the script by its
    relative path (this checkout first on the path, as `pip install -e .` would put it)."""
    script = os.path.relpath(REPO / "align" / "rm.py", tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.run([sys.executable, script, *overrides], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env, check=False)


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory):
    """A reward model trained on the synthetic pairs (LoRA + score head), and its held-out pairs.
    Long enough for a clearly positive held-out margin (chosen minus rejected score); its pairwise
    accuracy on these near-miss pairs moves only a few points (docs/results.md, Reward models in the loop), by an
    amount that differs between CPUs."""
    from align.data import load_stage_data

    out = tmp_path_factory.mktemp("rm") / "run"
    cfg = compose_stage("rm", out, "trainer.max_steps=300", "trainer.logging_steps=50",
                        "trainer.per_device_train_batch_size=32", "heldout.max_samples=200")
    metrics = rm.run(cfg)
    pairs = load_stage_data(cfg.data, "rm").eval
    return out, metrics, pairs


def test_the_command_writes_pairwise_accuracy_before_and_after(tmp_path):
    run = tmp_path / "run"
    proc = command(tmp_path, *FAST, f"output_dir={run}",
                   "callbacks=[param_check:ParamChangeCallback]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out pairwise_accuracy:" in proc.stdout and "on 32 pairs" in proc.stdout

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 4 and math.isfinite(metrics["train"]["final_loss"])
    for when in ("heldout_before", "heldout_after"):
        figures = metrics[when]
        assert figures["reward_pairs"] == 32 and 0 <= figures["pairwise_accuracy"] <= 1
        assert "accuracy" not in figures  # an RM does not generate: no task accuracy
    assert metrics["heldout_after"]["reward_margin"] != metrics["heldout_before"]["reward_margin"]
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    assert any("accuracy" in h and "margin" in h for h in history)  # RewardTrainer's own keys

    # LoRA: every adapter weight and the whole score head moved; the base did not.
    report = json.loads((run / "param_changes.json").read_text())
    assert report["trainable"] and report["trainable_unchanged"] == []
    assert report["frozen_changed"] == []
    assert all("lora_" in name or ".score." in name for name in report["trainable"])
    assert any(".score." in name for name in report["trainable"])
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]


def test_full_fine_tuning_moves_every_weight(tmp_path):
    metrics = rm.run(compose_stage("rm", tmp_path, "peft=none", "heldout.enabled=false",
                                   "callbacks=[param_check:ParamChangeCallback]"))
    report = json.loads((tmp_path / "param_changes.json").read_text())
    assert len(report["trainable"]) == report["total"] and report["trainable_unchanged"] == []
    assert metrics["train"]["global_step"] == 4
    assert (tmp_path / "final" / "config.json").is_file()


def test_the_reward_scores_what_the_trainer_trained_on(trained_rm):
    """The `reward_model` reward renders prompt + completion into the very ids RewardTrainer
    trained on (chat template here; prompt + completion + eos for plain text), and through it
    the trained RM scores held-out chosen answers above rejected ones, from the run folder or
    its final/ (an adapter with its score head)."""
    from transformers import AutoTokenizer

    from rewards import REGISTRY
    from rewards.model import reward_input_ids

    out, metrics, pairs = trained_rm
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    assert after["pairwise_accuracy"] > before["pairwise_accuracy"]
    assert abs(before["reward_margin"]) < 0.05 and after["reward_margin"] > 0.15
    after = after["pairwise_accuracy"]

    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    rows = [pairs[i] for i in range(4)]
    plain = [{"prompt": "1+2=", "chosen": "3", "rejected": "4"}]
    for data in (rows, plain):
        ours = [reward_input_ids(tokenizer, r["prompt"], r["chosen"]) for r in data]
        assert ours == _trl_ids(tokenizer, data)

    fn = REGISTRY["reward_model"]
    prompts = [r["prompt"] for r in pairs]
    for folder in (out, out / "final"):
        chosen = fn([r["chosen"] for r in pairs], model=str(folder), prompts=prompts)
        rejected = fn([r["rejected"] for r in pairs], model=str(folder), prompts=prompts)
        wins = sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)
        assert wins == pytest.approx(after, abs=0.01)  # what the run measured, by the reward


def _trl_ids(tokenizer, rows):
    """The chosen ids trl's RewardTrainer tokenises for training (its own _prepare_dataset)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig("/tmp/align-rm-unused", report_to=[], use_cpu=True, bf16=False)
    prepared = RewardTrainer._prepare_dataset(None, Dataset.from_list(rows), tokenizer, args,
                                              "train")
    return [list(x) for x in prepared["chosen_ids"]]


def test_the_run_folder_is_a_grpo_reward(trained_rm, tmp_path):
    """A few GRPO steps with the trained RM as the only reward, set by Hydra overrides."""
    from align import grpo

    out, _, _ = trained_rm
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("grpo", overrides=[
            "rewards=reward_model", f"rewards.rm.kwargs.model={out}", "logger=none",
            f"output_dir={tmp_path}", "trainer.max_steps=2", "trainer.logging_steps=1",
            "trainer.per_device_train_batch_size=16", "trainer.num_generations=4",
            "trainer.save_strategy=no", "heldout.max_samples=16",
            "heldout.rewards={accuracy: {fn: accuracy, kwargs: {literal: true}}}"])
    metrics = grpo.run(cfg)
    history = [json.loads(line) for line in (tmp_path / "log_history.jsonl").read_text().splitlines()]
    logged = [h["rewards/rm/std"] for h in history if "rewards/rm/std" in h]
    assert logged and max(logged) > 0  # the RM scores the samples of a group differently
    assert metrics["heldout_after"]["accuracy/n"] == 16


@pytest.mark.parametrize("override,expected", [
    ("trainer.learnig_rate=1e-3", "Did you mean: learning_rate"),
    ("trainer.center_rewards_coefficient=-1", "trainer.center_rewards_coefficient=-1: must be"),
    ("model=tiny_vlm", "the rm stage trains text reward models"),
])
def test_a_bad_key_or_value_exits_2_with_one_line_and_no_run(override, expected, tmp_path):
    proc = command(tmp_path, override, "logger=none")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == [], "a run folder was left"


def test_a_pair_without_rejected_is_named_by_file_and_row(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                    '{"prompt": "2+2=", "chosen": "4"}\n')
    proc = command(tmp_path, "data=local", f"data.path={data}", "logger=none")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "pairs.jsonl: row 1 (line 2): field 'rejected'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"], "a run folder was left"


def test_other_stages_refuse_a_sequence_classifier(tmp_path):
    with pytest.raises(ConfigError, match="model.kind=sequence_classification is for reward"):
        from align.run.job import Job

        Job.start(compose_stage("dpo", tmp_path, "model.kind=sequence_classification"), "dpo")
