"""The run spec and the device decisions, run on CPU with the facts of real cards.

A decision that depends on the hardware (dtype, attention kernel, gradient checkpointing,
mixed precision, held-out measurement under ZeRO-3) is a function of DeviceFacts; here every
stage is parsed as it would run on a 24, 80 and 141 GB card (and a T4, which has no bfloat16),
so the GPU branches run in CI. Llama-2-7B's shape comes from a config file (no weights).
"""

import dataclasses

import pytest
from hydra import compose, initialize_config_dir

from align.device import CARDS, CPU, DeviceFacts, Setup, auto_checkpointing
from align.errors import ConfigError
from align.run.conf import CONF_DIR, register
from align.run.memory_estimate import model_shape, plan_job
from align.run.spec import TrainerValues, decide, job_shape, parse_spec, trl_config_class

register()
STAGES = ("sft", "dpo", "kto", "rm", "grpo")
BIG_CARDS = ("rtx4090", "a100-80gb", "h200")  # 24, 80 and 141 GB


def compose_stage(stage, overrides=(), out="/tmp/align-spec-test"):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[*overrides, f"output_dir={out}", "logger=none"])


def seven_b_job(stage, seven_b, *more):
    """A 7B job whose memory depends on the card: full fine-tuning except DPO (LoRA, so the
    reference is the adapter turned off), long sequences, auto checkpointing."""
    return compose_stage(stage, [f"model.name_or_path={seven_b}", "model.dtype=auto",
                                 "model.attn_implementation=auto",
                                 "model.gradient_checkpointing=auto", "trainer.max_steps=10",
                                 "trainer.per_device_train_batch_size=8",
                                 *(["trainer.max_length=2048"] if stage != "grpo" else
                                   ["trainer.max_completion_length=1024",
                                    "trainer.num_generations=8"]), *more])


@pytest.mark.parametrize("card", BIG_CARDS)
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_decides_for_each_card(stage, card, seven_b):
    """The decisions for a 7B job on each card: bf16, flash-attn where installed, and
    checkpointing exactly where the planner says the job would not fit in 80% of the card."""
    facts = CARDS[card]
    decided = decide(seven_b_job(stage, seven_b), stage, facts=facts)
    assert decided.model.dtype == "bfloat16"
    assert decided.model.attn_implementation == "flash_attention_2"  # the card's facts say so
    kwargs = decided.trainer_kwargs
    assert "use_cpu" not in kwargs and "bf16" not in kwargs  # trl's default: bf16 mixed precision

    # The planner, asked independently, for the same job without checkpointing:
    values = TrainerValues(decided.trainer_set, trl_config_class(stage))
    job = dataclasses.replace(job_shape(stage, decided.model_asked, decided.peft, values,
                                        facts.setup), checkpointing=False)
    without = plan_job(job, model_shape(str(seven_b)), facts.setup).total
    expected = auto_checkpointing(without, facts.memory_bytes)
    assert decided.model.gradient_checkpointing is expected
    assert kwargs["activation_checkpointing"] is expected
    assert decided.model_asked.gradient_checkpointing == "auto"  # as configured, for the planner


def test_the_cards_give_different_answers(seven_b):
    """Checkpointing goes on for a 7B SFT on 24 GB and stays off on 141 GB: the decision
    really depends on the facts."""
    small = decide(seven_b_job("sft", seven_b), "sft", facts=CARDS["rtx4090"])
    large = decide(seven_b_job("sft", seven_b, "peft=lora"), "sft", facts=CARDS["h200"])
    assert small.model.gradient_checkpointing is True
    assert large.model.gradient_checkpointing is False


@pytest.mark.parametrize("stage", STAGES)
def test_a_card_without_bfloat16_parses_whole_on_cpu(stage, seven_b):
    """A T4 (compute capability 7.5): float32, sdpa (flash-attn 2 needs Ampere), trl's bf16
    turned off. Its trl config builds here, so the whole GPU path of parse_spec runs."""
    spec = parse_spec(seven_b_job(stage, seven_b), stage, facts=CARDS["t4"])
    assert (spec.model.dtype, spec.model.attn_implementation) == ("float32", "sdpa")
    assert spec.trainer.bf16 is False and spec.trainer.use_cpu is False
    assert spec.model.gradient_checkpointing is True  # 16 GB: a 7B job needs it
    assert spec.trainer.activation_checkpointing is True
    assert spec.trainer.activation_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize("stage", STAGES)
def test_cpu_facts(stage, tiny_sft_path):
    spec = parse_spec(compose_stage(stage, ["model.dtype=auto", "model.attn_implementation=auto"]),
                      stage, facts=CPU)
    assert (spec.model.dtype, spec.model.attn_implementation) == ("float32", "sdpa")
    assert spec.model.gradient_checkpointing is False and spec.trainer.use_cpu is True
    assert spec.trainer.bf16 is False


def test_an_explicit_choice_wins_and_impossible_ones_fail(seven_b):
    facts = CARDS["h200"]
    forced = decide(seven_b_job("sft", seven_b, "model.gradient_checkpointing=false",
                                "model.dtype=float32", "model.attn_implementation=sdpa"),
                    "sft", facts=facts)
    assert forced.model.gradient_checkpointing is False
    assert (forced.model.dtype, forced.model.attn_implementation) == ("float32", "sdpa")
    with pytest.raises(ConfigError, match="trainer.bf16=true needs a CUDA GPU that computes"):
        decide(seven_b_job("sft", seven_b, "trainer.bf16=true"), "sft", facts=CARDS["t4"])
    with pytest.raises(ConfigError, match="flash_attention_2 needs an Ampere"):
        decide(seven_b_job("sft", seven_b, "model.attn_implementation=flash_attention_2"), "sft",
               facts=dataclasses.replace(CARDS["t4"], flash_attn=True))
    with pytest.raises(ConfigError, match="peft=loftq: .*CUDA device"):
        decide(compose_stage("sft", ["peft=loftq"]), "sft", facts=CPU)
    decide(compose_stage("sft", ["peft=loftq"]), "sft", facts=facts)  # fine on a GPU


def test_sharded_weights_measure_heldout(seven_b):
    """ZeRO-3 and FSDP measure held-out data with every rank in lockstep (align.device.placement),
    multi-turn generation with tools included; it was turned off under ZeRO-3."""
    for setup in (Setup(gpus=8, zero=3), Setup(gpus=8, fsdp=2)):
        facts = CARDS["a100-80gb"].with_setup(setup)
        assert decide(seven_b_job("sft", seven_b), "sft", facts=facts).heldout.enabled
        tools = seven_b_job("grpo", seven_b, "tools=calculator")
        assert decide(tools, "grpo", facts=facts).heldout.enabled


def test_the_spec_is_immutable(tiny_sft_path):
    spec = parse_spec(compose_stage("grpo"), "grpo")
    for obj, field in ((spec, "stage"), (spec.model, "dtype"), (spec.data, "path"),
                       (spec.heldout, "enabled"), (spec.logger, "backend"), (spec.peft, "method")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)
    with pytest.raises(TypeError):
        spec.config["seed"] = 1  # the resolved config is a read-only view
    assert spec.rewards and spec.trainer.reward_weights == [1.0]
    # tiny://sft90 is checked, not built: the factory builds it (once) when it loads it
    assert spec.model.name_or_path == "tiny://sft90"


def test_detect_reads_this_machine():
    facts = DeviceFacts.detect()
    import torch

    assert facts.cuda == torch.cuda.is_available()
    assert facts.setup == Setup()  # not under a launcher


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_heldout_rewards_empty_takes_the_training_rewards_null_takes_none(stage):
    """heldout.rewards: its own specs; empty: the training rewards (GRPO's); null: none at all
    (data without answers: SFT's loss and DPO's preference figures only)."""
    own = decide(compose_stage(stage), stage, facts=CPU)
    assert [f.__name__ for f in own.heldout_rewards] == ["accuracy"]
    none = decide(compose_stage(stage, ["heldout.rewards=null"]), stage, facts=CPU)
    assert none.heldout_rewards == () and none.heldout.rewards is None
