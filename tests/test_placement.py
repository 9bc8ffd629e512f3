"""Placement (align.device.placement): where the model lives before training and which ranks
generate, for every launch file x the facts of real cards and of the CPU x QLoRA; the check every
generation path makes; the real paths on CPU; and 2-process launches that measure held-out data
with every rank generating its share."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from align.device import (
    CARDS,
    CPU,
    LOAD_BITSANDBYTES,
    LOAD_CPU,
    LOAD_DEEPSPEED,
    LOAD_DEVICE_MAP,
    LOAD_FSDP,
    Placement,
    PlacementError,
    check_placement,
    placement,
)
from align.run.conf import CONF_DIR, register
from align.run.memory_estimate import read_launch

register()
REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILES = sorted(p.name for p in (REPO / "launch").glob("*.yaml"))

#: launch file -> (load on a card, ranks that generate, lockstep, "before" when training begins).
#: On CPU the load is LOAD_CPU where a card's is LOAD_DEVICE_MAP; QLoRA on a card:
#: LOAD_BITSANDBYTES where the weights are not sharded.
EXPECTED = {
    "single_gpu.yaml": (LOAD_DEVICE_MAP, "main", False, False),
    "ddp.yaml": (LOAD_DEVICE_MAP, "all", False, False),
    "zero1.yaml": (LOAD_DEVICE_MAP, "all", False, False),
    "zero2.yaml": (LOAD_DEVICE_MAP, "all", False, False),
    "zero3.yaml": (LOAD_DEEPSPEED, "all", True, True),
    "zero3_offload.yaml": (LOAD_DEEPSPEED, "all", True, True),
    "fsdp2.yaml": (LOAD_FSDP, "all", True, True),
}


def test_every_launch_file_has_its_expectations():
    assert LAUNCH_FILES == sorted(EXPECTED), "a launch file without expectations (or gone)"


@pytest.mark.parametrize("quantized", [False, True], ids=["full", "qlora"])
@pytest.mark.parametrize("card", [*CARDS, "cpu"])
@pytest.mark.parametrize("launch", sorted(EXPECTED))
def test_placement_of_every_launch_on_every_card(launch, card, quantized):
    setup = read_launch(REPO / "launch" / launch, None)
    facts = (CPU if card == "cpu" else CARDS[card]).with_setup(setup)
    load, ranks, synced, later = EXPECTED[launch]
    if card == "cpu" and load == LOAD_DEVICE_MAP:
        load = LOAD_CPU
    elif quantized and load == LOAD_DEVICE_MAP:
        load = LOAD_BITSANDBYTES
    for rank in (0, 3):
        place = placement(facts, quantized, local_rank=rank)
        device = "cpu" if card == "cpu" else f"cuda:{rank}"
        assert place == Placement(device=device, load=load, ranks=ranks, synced=synced,
                                  before_at_train_begin=later, params_on=device)
        # align loads it onto the rank's card itself, or leaves it to ZeRO-3 / FSDP / the CPU
        assert place.device_map == ({"": device} if load in (LOAD_DEVICE_MAP, LOAD_BITSANDBYTES)
                                    else None)
    assert place.scores_on_every_rank is synced


def test_one_process_of_a_sharded_launch_is_not_in_lockstep():
    setup = read_launch(REPO / "launch" / "fsdp2.yaml", 1)
    place = placement(CARDS["h100"].with_setup(setup))
    assert (place.ranks, place.synced, place.load) == ("main", False, LOAD_FSDP)


def test_fsdp_parameter_offload_keeps_the_parameters_on_the_cpu(tmp_path, monkeypatch):
    """`fsdp_offload_params: true` keeps every shard in host memory between its computations: the
    check expects the parameters there while generation still runs on the rank's card. Read from
    the launch file (planning) and from what accelerate exports (the run)."""
    text = (REPO / "launch" / "fsdp2.yaml").read_text()
    assert "fsdp_offload_params: false" in text
    offload = tmp_path / "fsdp2_offload.yaml"
    offload.write_text(text.replace("fsdp_offload_params: false", "fsdp_offload_params: true"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    from align.device import setup_from_env

    assert read_launch(offload, 2).offload_params and setup_from_env().offload_params
    for setup in (read_launch(offload, 2), setup_from_env()):
        place = placement(CARDS["h100"].with_setup(setup), local_rank=1)
        assert (place.device, place.params_on) == ("cuda:1", "cpu")
    plain = placement(CARDS["h100"].with_setup(read_launch(REPO / "launch" / "fsdp2.yaml", 2)))
    assert (plain.device, plain.params_on) == ("cuda:0", "cuda:0")


def test_check_accepts_offloaded_fsdp_parameters_on_the_cpu(tiny):
    setup = read_launch(REPO / "launch" / "fsdp2.yaml", 2)
    offloaded = CARDS["h100"].with_setup(dataclasses.replace(setup, offload_params=True))
    check_placement(tiny[0], placement(offloaded), "held-out measurement")
    with pytest.raises(PlacementError, match="is on cpu.*is cuda:0"):
        check_placement(tiny[0], placement(CARDS["h100"].with_setup(setup)), "held-out measurement")


# ----------------------------------------------------------------------------- the check


@pytest.fixture(scope="module")
def tiny(tiny_base_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_base_path),
            AutoTokenizer.from_pretrained(tiny_base_path))


def test_check_names_both_devices(tiny_base_path, tiny):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_base_path))
    with pytest.raises(PlacementError, match=r"is on meta, but the placement decided for this "
                                             r"rank is cpu"):
        check_placement(meta, placement(CPU), "held-out measurement")
    with pytest.raises(PlacementError, match=r"held-out.*is on cpu.*is cuda:1 \(load: device_map\)"):
        check_placement(tiny[0], placement(CARDS["h100"], local_rank=1), "held-out measurement")
    check_placement(tiny[0], placement(CPU), "held-out measurement")


def test_load_model_puts_the_model_where_the_placement_says(tiny_base_path):
    from align.models.config import ModelConfig
    from align.models.factory import load_model

    cfg = ModelConfig(name_or_path=str(tiny_base_path), dtype="float32",
                      attn_implementation="sdpa")
    on_cpu = load_model(cfg)  # this process's placement: CPU here
    assert {p.device.type for p in on_cpu.parameters()} == {"cpu"}
    # as on a card: align hands transformers the rank's device as the device map
    mapped = Placement(device="cpu", load=LOAD_DEVICE_MAP, ranks="main", synced=False,
                       before_at_train_begin=False)
    assert {p.device.type for p in load_model(cfg, place=mapped).parameters()} == {"cpu"}
    # a model that does not land where the decision says is an error at load, naming both
    elsewhere = Placement(device="meta", load=LOAD_CPU, ranks="main", synced=False,
                          before_at_train_begin=False)
    with pytest.raises(PlacementError, match=r"loading .*is on cpu, but the placement decided "
                                             r"for this rank is meta \(load: cpu\)"):
        load_model(cfg, place=elsewhere)


def compose_run(stage, out, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=["logger=none", "heldout.max_samples=4",
                                          f"output_dir={out}", *overrides])


def test_heldout_measurement_refuses_a_model_elsewhere(tmp_path, tiny_base_path):
    """The held-out paths check the model against the placement before generating: a model the
    decision does not put here is an error naming both devices, not a silent run elsewhere."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from align.data import load_stage_data
    from align.models import build_model
    from align.run.job import Job

    job = Job.start(compose_run("grpo", tmp_path), "grpo")
    data = load_stage_data(job.spec.data, "grpo")
    model, tokenizer, _ = build_model(job.spec.model, job.spec.peft)
    assert {p.device.type for p in model.parameters()} == {job.placement.device} == {"cpu"}
    figures = job.measure("before", model, tokenizer, data.heldout)
    assert figures["samples"] == 4
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_base_path))
    with pytest.raises(PlacementError, match="held-out measurement after training: .* on meta"):
        job.measure("after", meta, tokenizer, data.heldout)


def test_sharing_across_ranks_in_one_process_is_the_whole_work():
    from align.measure.generation import share_across_ranks

    assert share_across_ranks(list(range(5)), lambda xs: [x * 2 for x in xs]) == [0, 2, 4, 6, 8]
    assert share_across_ranks([], lambda xs: xs) == []


# ----------------------------------------------------------------------------- launches


def launch(config, stage, cwd, *overrides, processes=2, timeout=900, name=None,
           metrics="metrics.json"):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    proc = subprocess.run(
        [accelerate, "launch", "--config_file", str(REPO / "launch" / config),
         "--num_processes", str(processes), str(REPO / "align" / f"{stage}.py"),
         "logger=none", "trainer.max_steps=2", "trainer.save_strategy=no", *overrides],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    folders = [p for p in (Path(cwd) / "outputs" / (name or stage)).iterdir() if p.is_dir()]
    assert len(folders) == 1
    return proc, folders[0], json.loads((folders[0] / metrics).read_text())


@pytest.mark.slow
def test_ddp_ranks_share_the_heldout_prompts(tmp_path):
    """2 processes over gloo (launch/ddp.yaml): each rank generates half of the held-out prompts
    before, during and after training; the main process scores all of them."""
    proc, _, metrics = launch("ddp.yaml", "grpo", tmp_path, "heldout.max_samples=6",
                              "heldout.eval_steps=1", "trainer.per_device_train_batch_size=8",
                              "trainer.num_generations=4")
    assert metrics["world_size"] == 2
    for when in ("heldout_before", "heldout_after"):
        assert metrics[when]["samples"] == 6
    assert [p["step"] for p in metrics["heldout_during"]] == [1, 2]
    output = proc.stdout + proc.stderr  # Hydra's log handler writes to stdout
    shares = [line for line in output.splitlines() if "generates its share" in line]
    # before, at steps 1 and 2, after: on both ranks
    assert sum("rank 1 of 2: 3 of 6" in line for line in shares) == 4, output[-4000:]
    assert sum("rank 0 of 2: 3 of 6" in line for line in shares) == 4


def test_sharded_weights_measure_before_when_training_begins(tmp_path):
    """Where the weights are sharded (here FSDP's facts for one process), "before" cannot run
    when the model is built: it waits for training to begin, then runs with the model the trainer
    prepared, held-out figures and SFT's loss alike."""
    from trl import SFTTrainer

    from align.data import load_stage_data
    from align.device import Setup
    from align.models import build_model
    from align.run.job import Job

    cfg = compose_run("sft", tmp_path, "trainer.max_steps=1", "trainer.save_strategy=no",
                      "trainer.per_device_train_batch_size=4", "heldout.max_samples=4",
                      "data.max_eval_samples=4")
    job = Job.start(cfg, "sft", facts=CPU.with_setup(Setup(gpus=1, fsdp=2)))
    assert job.placement.before_at_train_begin
    data = load_stage_data(job.spec.data, "sft")
    job.begin(data)
    model, tokenizer, peft_config = build_model(job.spec.model, job.spec.peft)
    assert job.measure("before", model, tokenizer, data.heldout) is None
    trainer = SFTTrainer(model=model, args=job.args, train_dataset=data.train,
                         eval_dataset=job.trl_eval_dataset(data), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=job.callbacks(tokenizer, data.heldout))
    assert job.measure_loss("before", trainer, data.eval) is None
    assert len(job.pending) == 2 and "heldout_before" not in job.metrics
    job.train(trainer)
    before = job.metrics["heldout_before"]
    assert before["samples"] == 4 and before["loss/n"] == 4 and not job.pending


def test_on_policy_rounds_are_refused_on_sharded_weights(tmp_path):
    from align.device import Setup
    from align.errors import ConfigError
    from align.run.job import Job
    from align.run.rounds import run_rounds

    cfg = compose_run("dpo", tmp_path / "run", "experiment=iterative_dpo")
    job = Job.start(cfg, "dpo", facts=CPU.with_setup(Setup(gpus=2, zero=3)))
    with pytest.raises(ConfigError, match="on_policy.enabled=true samples from the policy before "
                                          ".*launch with launch/ddp.yaml"):
        run_rounds(job)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_zero3_measures_heldout_in_lockstep(tmp_path):
    """ZeRO-3 (with offload: what runs on CPU) partitions every weight: both ranks generate their
    share in lockstep, "before" once training has begun, and the main process records both."""
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra")
    proc, _, metrics = launch("zero3_offload.yaml", "sft", tmp_path, "peft=none",
                              "heldout.max_samples=4", "trainer.per_device_train_batch_size=8")
    assert metrics["world_size"] == 2
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    assert before["samples"] == after["samples"] == 4 and "loss" in before and "loss" in after
    output = proc.stdout + proc.stderr
    assert sum("rank 1 of 2: 2 of 4" in line for line in output.splitlines()) == 2, output[-4000:]


@pytest.mark.slow
def test_ddp_on_policy_rounds_share_the_sampling(tmp_path):
    """Iterative DPO under 2 processes (launch/ddp.yaml): each rank samples half of every round's
    prompts, the main process pairs them, and both ranks train each round on the same pairs and
    start the next round from the same merged weights."""
    proc, folder, metrics = launch(
        "ddp.yaml", "dpo", tmp_path, "experiment=iterative_dpo", "on_policy.rounds=2",
        "on_policy.prompts_per_round=8", "on_policy.samples_per_prompt=4",
        "trainer.per_device_train_batch_size=4", "heldout.max_samples=4",
        name="iterative_dpo", metrics="rounds.json")
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["pairs"] > 0 for r in metrics["rounds"])
    for k in (1, 2):
        round_metrics = json.loads((folder / f"round-{k}" / "metrics.json").read_text())
        assert round_metrics["world_size"] == 2 and round_metrics["on_policy"]["samples"] == 32
    output = proc.stdout + proc.stderr
    # each round's sampling and its held-out "before" and "after": on both ranks
    assert sum("rank 1 of 2: 16 of 32" in line for line in output.splitlines()) == 2, output[-4000:]


@pytest.mark.slow
def test_fsdp2_measures_tool_rollouts_in_lockstep(tmp_path):
    """Multi-turn held-out generation with a tool on FSDP2's sharded weights (2 processes): each
    rank runs its share of the rollouts, and goes on generating in lockstep while any rank's
    rollouts go on, however many tool rounds its own take."""
    proc, _, metrics = launch(
        "fsdp2.yaml", "grpo", tmp_path, "experiment=tiny_tools", "heldout.max_samples=8",
        "trainer.per_device_train_batch_size=8", "trainer.num_generations=4",
        "trainer.dynamic_sampling=false", name="tiny_tools")
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    assert before["samples"] == after["samples"] == 8
    assert before["tool_call_rate"] >= 0.5 and "tool_failure_rate" in after
    output = proc.stdout + proc.stderr
    assert sum("rank 1 of 2: 4 of 8" in line for line in output.splitlines()) == 2, output[-4000:]
