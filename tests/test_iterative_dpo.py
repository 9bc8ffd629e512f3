"""Iterative on-policy DPO (`align/dpo.py experiment=iterative_dpo`, align/run/rounds.py): two
tiny rounds run as a user runs them, and the `on_policy:` section's checks.

The proof that it beats SFT on the same answers is benchmarks/iterative_dpo.py (minutes), not
here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from align.errors import ConfigError
from align.run.conf import CONF_DIR, register
from align.run.spec import decide

REPO = Path(__file__).resolve().parent.parent
register()

TINY = ["on_policy.rounds=2", "on_policy.prompts_per_round=24", "on_policy.samples_per_prompt=4",
        "on_policy.pairs_per_prompt=2", "on_policy.ties=most_drawn",
        "trainer.max_steps=3", "trainer.per_device_train_batch_size=8", "trainer.logging_steps=1",
        "heldout.max_samples=16", "logger=none", "trainer.save_strategy=no"]


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": "1", "ALIGN_RUN_ID": "two-rounds"}


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("elsewhere")
    proc = subprocess.run(
        [sys.executable, str(REPO / "align" / "dpo.py"), "experiment=iterative_dpo", *TINY],
        capture_output=True, text=True, timeout=600, cwd=cwd, env=env(), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = cwd / "outputs" / "iterative_dpo" / "two-rounds"
    return root, proc.stdout


def weights(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def policy_of_round_1(root, tiny_sft_path):
    """Round 1's trained policy rebuilt from what it saved: its adapter on the warm-up model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_sft_path)
    return PeftModel.from_pretrained(base, root / "round-1" / "final").merge_and_unload()


@pytest.mark.slow  # a subprocess, ~15 s
def test_each_round_is_a_run_folder_with_its_pairs_and_figures(two_rounds):
    root, stdout = two_rounds
    for k in (1, 2):
        folder = root / f"round-{k}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert {"accuracy", "preference_accuracy"} <= set(metrics["heldout_before"])
        assert "accuracy" in metrics["heldout_after"]
        assert metrics["train"]["global_step"] == 3
        sampling = metrics["on_policy"]
        assert sampling["round"] == k and sampling["prompts"] == 24 and sampling["samples"] == 96
        pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        assert len(pairs) == sampling["pairs"]["pairs"] > 0
        # up to 2 pairs a prompt (pairs_per_prompt=2), one chosen against distinct rejected ones
        by_prompt: dict = {}
        for pair in pairs:
            by_prompt.setdefault(json.dumps(pair["prompt"]), []).append(pair)
        assert {len(p) for p in by_prompt.values()} == {1, 2}
        for same in by_prompt.values():
            assert len({json.dumps(p["chosen"]) for p in same}) == 1
            assert len({json.dumps(p["rejected"]) for p in same}) == len(same)
        assert sum(v for key, v in sampling["pairs"].items()
                   if key not in ("prompts", "pairs")) == 24 - len(by_prompt)
        # chosen beat rejected by the reward, which read the prompt's `solution`
        for pair in pairs:
            assert pair["chosen_reward"] > pair["rejected_reward"]
            assert pair["chosen"][0]["content"] == pair["solution"]
        assert (folder / "config.yaml").is_file() and (folder / "final").is_dir()
    prompts = [{json.dumps(json.loads(line)["prompt"]) for line in
                (root / f"round-{k}" / "pairs.jsonl").read_text().splitlines()} for k in (1, 2)]
    assert not prompts[0] & prompts[1], "each round samples fresh prompts"
    table = (root / "compare.md").read_text()
    assert "round-1" in table and "round-2" in table
    rounds = json.loads((root / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert "round 2: held-out accuracy" in stdout


@pytest.mark.slow
def test_round_2_starts_from_round_1s_policy_which_is_its_reference(two_rounds, tiny_sft_path):
    from omegaconf import OmegaConf
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, _ = two_rounds
    start = OmegaConf.load(root / "round-2" / "config.yaml").model.name_or_path
    assert Path(start) == root / "round-1" / "merged"
    # Round 1 trained: its policy differs from the warm-up model; round 2 starts from exactly it.
    trained = policy_of_round_1(root, tiny_sft_path).state_dict()
    warm_up, started = weights(tiny_sft_path), weights(start)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(warm_up[name], trained[name])
    for key, value in trained.items():
        torch.testing.assert_close(started[key], value)
    # DPO's reference in round 2 is its base with the adapter disabled: round 1's policy.
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(start),
                                       root / "round-2" / "final")
    reference = policy_of_round_1(root, tiny_sft_path)
    with torch.no_grad(), policy.disable_adapter():
        torch.testing.assert_close(policy(ids).logits, reference(ids).logits)
    with torch.no_grad():
        assert not torch.allclose(policy(ids).logits, reference(ids).logits)
    # ... and the held-out figures say the same: round 2 begins where round 1 ended.
    m1, m2 = (json.loads((root / f"round-{k}" / "metrics.json").read_text()) for k in (1, 2))
    assert m2["heldout_before"]["accuracy"] == m1["heldout_after"]["accuracy"]
    assert m2["heldout_before"]["preference_margin"] == pytest.approx(
        m1["heldout_after"]["preference_margin"], abs=1e-4)


@pytest.mark.parametrize("override,expected", [
    ("on_policy.rounds=0", "on_policy.rounds=0: must be an integer >= 1"),
    ("on_policy.samples_per_prompt=1", "on_policy.samples_per_prompt=1"),
    ("on_policy.temperature=0", "on_policy.temperature=0.0: must be > 0"),
    ("on_policy.min_margin=-1", "on_policy.min_margin=-1.0: must be >= 0"),
    ("on_policy.pairs_per_prompt=0", "on_policy.pairs_per_prompt=0: must be an integer >= 1"),
    ("on_policy.ties=mode", "on_policy.ties='mode': choose one of first, most_drawn"),
    ("+on_policy.round=2", "Did you mean: rounds"),
    ("on_policy.rounds=three", "on_policy.rounds"),
    ("peft=prompt_tuning", "peft=prompt_tuning cannot be merged"),
])
def test_bad_on_policy_values_fail_at_the_check(override, expected):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("dpo", overrides=["experiment=iterative_dpo", override,
                                        "output_dir=/tmp/align-test-unused"])
    with pytest.raises(ConfigError) as err:
        decide(cfg, "dpo")
    assert expected in str(err.value)


def test_offline_dpo_has_one_round_and_on_policy_needs_rewards():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("dpo", overrides=["on_policy.rounds=3", "output_dir=/tmp/unused"])
    with pytest.raises(ConfigError, match="needs on_policy.enabled=true"):
        decide(cfg, "dpo")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("dpo", overrides=["on_policy.enabled=true", "output_dir=/tmp/unused"])
    with pytest.raises(ConfigError, match="'rewards' section, which is empty"):
        decide(cfg, "dpo")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("kto", overrides=["+on_policy.enabled=true", "output_dir=/tmp/unused"])
    with pytest.raises(ConfigError, match="'on_policy' applies to DPO"):
        decide(cfg, "kto")


def test_cli_bad_value_exits_2_with_one_line_and_no_run_folder(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "align" / "dpo.py"), "experiment=iterative_dpo",
         "on_policy.samples_per_prompt=1", "logger=none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env(), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        ("error: invalid config: on_policy.samples_per_prompt=1: must be an integer >= 2 (the "
         "best and the worst of each prompt's samples make a pair)")]
    assert not (tmp_path / "outputs").exists()
