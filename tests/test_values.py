"""The value checks of trl's and peft's sections, pinned to the installed libraries.

align checks values against the type hints of trl's/peft's own config classes (cached as plain
data) and knows which loss types the trainers' loss code accepts. These tests keep both in step
with the installed trl and peft: when trl adds or renames a loss, a test here fails.
"""

import dataclasses
import inspect
import re

import pytest
import trl

from align.fields import PEFT_CONFIGS, TRL_CONFIGS, dataclass_schema
from align.run.values import F_DIVERGENCE_LOSSES, LOSS_TYPES, check_peft, check_trainer, matches


def _source(module) -> str:
    return inspect.getsource(module)


def test_loss_types_are_the_ones_trl_s_loss_code_dispatches_on():
    from trl.trainer import dpo_trainer, grpo_trainer, kto_trainer, sft_trainer

    dpo = set(re.findall(r'elif loss_type == "(\w+)"|if loss_type == "(\w+)"', _source(dpo_trainer)))
    dpo = {a or b for a, b in dpo}
    grpo_src = _source(grpo_trainer)
    grpo = set(re.findall(r'self\.loss_type == "(\w+)"', grpo_src))
    for group in re.findall(r'self\.loss_type in \[([^\]]+)\]', grpo_src):
        grpo |= set(re.findall(r'"(\w+)"', group))
    sft = set(re.findall(r'"(\w+)"', re.search(r'args\.loss_type not in \(([^)]+)\)',
                                              _source(sft_trainer)).group(1)))
    assert set(LOSS_TYPES["dpo"]) == dpo
    assert set(LOSS_TYPES["grpo"]) == grpo
    assert set(LOSS_TYPES["sft"]) == sft
    kto = set(re.findall(r'self\.loss_type == "(\w+)"', _source(kto_trainer)))
    assert set(LOSS_TYPES["kto"]) == kto
    div = re.search(r"f_divergence_loss_types = \{([^}]+)\}", _source(dpo_trainer)).group(1)
    assert set(F_DIVERGENCE_LOSSES) == set(re.findall(r'"(\w+)"', div))


@pytest.mark.parametrize("stage", ["sft", "dpo", "kto", "grpo"])
def test_every_known_loss_passes_and_a_wrong_one_is_named(stage):
    module, name = TRL_CONFIGS[stage]
    fields = dataclass_schema(module, name)
    for loss in LOSS_TYPES[stage]:
        assert check_trainer({"loss_type": loss}, stage, fields, name) == []
    [error] = check_trainer({"loss_type": "nope"}, stage, fields, name)
    assert "trainer.loss_type='nope'" in error and LOSS_TYPES[stage][0] in error


def test_the_cached_schema_matches_the_classes():
    for module, name in [*TRL_CONFIGS.values(), *((m, n) for n, m in PEFT_CONFIGS.items())]:
        cls = getattr(__import__(module, fromlist=[name]), name)
        assert list(dataclass_schema(module, name)) == [f.name for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("field,value,ok", [
    ("learning_rate", 1e-4, True), ("learning_rate", 3, True), ("learning_rate", "abc", False),
    ("learning_rate", True, False), ("max_steps", 10, True), ("max_steps", 2.5, False),
    ("max_steps", 10.0, True), ("bf16", True, True), ("bf16", "yes", False),
    ("lr_scheduler_type", "cosine", True), ("lr_scheduler_type", "cosin", False),
    ("optim", "adamw_torch", True), ("optim", "adam_fast", False),
    ("report_to", ["wandb"], True), ("loss_type", "dapo", True), ("loss_type", 3, False),
    ("max_completion_length", None, True), ("temperature", None, False),
])
def test_values_against_grpo_config_types(field, value, ok):
    fields = dataclass_schema(*TRL_CONFIGS["grpo"])
    schema = fields[field]["schema"]
    if value is None:
        ok_here = not check_trainer({field: value}, "grpo", fields, "GRPOConfig")
        assert ok_here == ok
        return
    assert matches(value, schema) == ok


def test_a_list_field_takes_one_value_as_trl_does():
    module, name = TRL_CONFIGS["dpo"]
    fields = dataclass_schema(module, name)
    assert check_trainer({"loss_type": "sigmoid"}, "dpo", fields, name) == []
    assert check_trainer({"loss_type": ["sigmoid", "sft"]}, "dpo", fields, name) == []
    [error] = check_trainer({"loss_type": ["sigmoid", 3]}, "dpo", fields, name)
    assert "expected a list of" in error


def test_peft_values_with_peft_s_own_patterns():
    fields = dataclass_schema(PEFT_CONFIGS["LoraConfig"], "LoraConfig")
    assert check_peft({"init_lora_weights": "pissa_niter_8", "r": 16}, fields, "LoraConfig") == []
    assert check_peft({"init_lora_weights": True}, fields, "LoraConfig") == []
    [error] = check_peft({"init_lora_weights": "magic"}, fields, "LoraConfig")
    assert "peft.init_lora_weights='magic'" in error
    assert check_peft({"target_modules": "all-linear"}, fields, "LoraConfig") == []
    assert check_peft({"target_modules": ["q_proj", "v_proj"]}, fields, "LoraConfig") == []


def test_trl_accepts_what_align_lets_through():
    """The values align accepts build trl's config (its own __post_init__ checks pass)."""
    for loss in LOSS_TYPES["dpo"]:
        trl.DPOConfig(output_dir="/tmp/x", loss_type=[loss], use_cpu=True, bf16=False,
                      label_smoothing=0.1 if loss in ("exo_pair", "robust") else 0.0)
