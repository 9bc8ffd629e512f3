"""Experiment files: each one names the published recipe it follows, composes with its stage, and
one that trains an adapter does not inherit a full-fine-tuning learning rate.

Why the rate rule: an adapter (LoRA and the rest) wants about 10x the learning rate of full
fine-tuning; at the full-fine-tuning rate it barely moves. trl's own recipes pair the two:
"LoRA Without Regret" (https://huggingface.co/docs/trl/lora_without_regret) GRPO 1e-5 vs 1e-6,
trl/scripts/sft.py 2e-4 vs 2e-5, trl/scripts/dpo.py 5e-6 vs 5e-7.
"""

import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from align.run.conf import CONF_DIR, experiment_usage, register

STAGES = ("sft", "dpo", "kto", "rm", "grpo")
EXPERIMENT_DIR = CONF_DIR / "experiment"
EXPERIMENTS = sorted(path.stem for path in EXPERIMENT_DIR.glob("*.yaml"))
#: How much larger than the full-fine-tuning rate an adapter's rate is (see the module docstring).
ADAPTER_RATE_FACTOR = 10

register()


def header(name: str) -> list[str]:
    """The comment lines an experiment file starts with."""
    lines = (EXPERIMENT_DIR / f"{name}.yaml").read_text().splitlines()
    end = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return lines[:end]


def usage(name: str) -> tuple[str, list[str]]:
    """The stage and the overrides of the command on the file's second line."""
    stage, _, overrides = experiment_usage(name)
    return stage, [word for word in overrides if "=" in word]


def compose_stage(stage: str, overrides=()):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[*overrides, "output_dir=/tmp/align-test-unused"],
                       return_hydra_config=True)


def trainer_rate_is_full_ft(choice: str) -> bool:
    """Whether conf/trainer/<choice>.yaml holds a full-fine-tuning learning rate.

    - `<stage>_gpu`: the real-model starting points, all full-fine-tuning rates: dpo_gpu's 5e-7
      and sft_gpu's 2e-5 are trl's full-training rates (trl/scripts/dpo.py, trl/scripts/sft.py),
      grpo_gpu's 1e-6 is GRPOConfig's default and the full-FT column of "LoRA Without Regret".
    - `<stage>`: tuned for the tiny model with the stage's default adapter (conf/<stage>.yaml):
      full fine-tuning for sft and grpo (peft: none), LoRA for dpo, kto and rm.
    Any other trainer file has to be classified here before an experiment can use it.
    """
    stage, _, gpu = choice.partition("_")
    assert stage in STAGES and gpu in ("", "gpu"), (
        f"conf/trainer/{choice}.yaml: say in tests/test_experiments.py whether its learning "
        "rate is a full-fine-tuning one")
    if gpu:
        return True
    return compose_stage(stage).peft.method == "none"


def test_every_experiment_file_is_found():
    assert EXPERIMENTS
    # Experiments are flat: a file in a subfolder would be skipped here.
    assert len(EXPERIMENTS) == len(list(EXPERIMENT_DIR.rglob("*.yaml")))


def test_every_trainer_file_is_classified():
    for path in sorted((CONF_DIR / "trainer").glob("*.yaml")):
        trainer_rate_is_full_ft(path.stem)
    assert trainer_rate_is_full_ft("grpo_gpu") and trainer_rate_is_full_ft("grpo")
    assert not trainer_rate_is_full_ft("dpo")  # conf/dpo.yaml trains a LoRA by default
    assert not trainer_rate_is_full_ft("kto")  # so does conf/kto.yaml
    assert not trainer_rate_is_full_ft("rm")  # and conf/rm.yaml


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_names_its_recipe(name):
    """First the package line, then the command that runs it, then the published recipe it
    follows (or the project's embedded task) and what differs from it, with the reasons."""
    lines = header(name)
    assert lines[0] == "# @package _global_"
    stage, overrides = usage(name)
    assert stage in STAGES and f"experiment={name}" in overrides, (
        f"{name}: line 2 must be the command that runs it")
    recipe = [i for i, line in enumerate(lines) if line.startswith("# Recipe:")]
    assert len(recipe) == 1, f"conf/experiment/{name}.yaml: add one '# Recipe: <source>' line"
    block = [lines[recipe[0]]]
    block += [line for line in lines[recipe[0] + 1:] if line.startswith("#   ")][:4]
    cited = " ".join(block)
    assert re.search(r"https://\S+|\w/[\w./-]+\.(py|yaml|md)\b|embedded task", cited), (
        f"{name}: the recipe line names no source (a URL, a repo path, or the embedded task)")
    assert any(line.startswith("# Differs") for line in lines), (
        f"{name}: say what differs from the recipe and why ('# Differs: ...')")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_adapter_experiment_has_an_adapter_learning_rate(name):
    stage, overrides = usage(name)  # composed as its own command line runs it
    cfg = compose_stage(stage, overrides)
    if cfg.peft.method == "none":
        pytest.skip("full fine-tuning: the trainer file's rate is meant for it")
    choice = cfg.hydra.runtime.choices.trainer
    if not trainer_rate_is_full_ft(choice):
        return
    file_rate = float(OmegaConf.load(CONF_DIR / "trainer" / f"{choice}.yaml").learning_rate)
    rate = float(cfg.trainer.learning_rate)
    own = OmegaConf.load(EXPERIMENT_DIR / f"{name}.yaml")
    sets_rate = OmegaConf.select(own, "trainer.learning_rate") is not None
    assert sets_rate or rate >= ADAPTER_RATE_FACTOR * file_rate, (
        f"conf/experiment/{name}.yaml trains an adapter (peft={cfg.peft.method}) but takes "
        f"learning_rate {rate:g} from conf/trainer/{choice}.yaml, a full-fine-tuning rate: set "
        f"trainer.learning_rate there (adapters want ~{ADAPTER_RATE_FACTOR}x, "
        f"{ADAPTER_RATE_FACTOR * file_rate:g})")
    assert rate > file_rate, (
        f"conf/experiment/{name}.yaml: learning_rate {rate:g} with peft={cfg.peft.method} is no "
        f"larger than the full-fine-tuning {file_rate:g} of conf/trainer/{choice}.yaml")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_measures_held_out_data(name):
    """No shipped experiment turns held-out measurement off, and each has held-out data to
    measure: an eval split, file or fraction. Where nothing checkable is scored by a reward
    (heldout.rewards: null: data without answers), SFT's held-out loss, DPO's preference
    figures and a reward model's pairwise accuracy are what it measures; GRPO has nothing else,
    so it must score a reward."""
    stage, overrides = usage(name)
    cfg = compose_stage(stage, overrides)
    assert cfg.heldout.enabled, f"conf/experiment/{name}.yaml turns held-out measurement off"
    data = cfg.data
    assert data.get("eval_path") or data.get("eval_split") or data.get("eval_fraction") or \
        str(data.get("path")).startswith("synthetic:"), (
        f"conf/experiment/{name}.yaml: no held-out data (set data.eval_split, data.eval_path or "
        "data.eval_fraction)")
    if cfg.heldout.get("rewards", {}) is None:
        assert stage in ("sft", "dpo", "rm"), f"{name}: a GRPO run needs a held-out reward"
