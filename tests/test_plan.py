"""The memory planner: exact parameter counts without weights, DeepSpeed's accounting, advice."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from align.device import Setup
from align.run.memory_estimate import model_shape, zero_model_states

REPO = Path(__file__).resolve().parent.parent


def test_parameter_count_matches_the_real_model(tiny_base_path):
    shape = model_shape(str(tiny_base_path))
    model = AutoModelForCausalLM.from_pretrained(tiny_base_path)
    assert shape.total == sum({id(p): p.numel() for p in model.parameters()}.values())
    assert shape.layers == model.config.num_hidden_layers


def test_seven_b_count_without_loading_weights(seven_b):
    shape = model_shape(str(seven_b))
    assert shape.total == 6_738_415_616  # Llama-2-7B's published parameter count
    assert shape.largest_layer == 32000 * 4096  # the embedding (or the untied output head)


@pytest.mark.parametrize("stage,gpus,nodes,offload_opt,offload_params", [
    (2, 1, 1, False, False), (2, 8, 1, False, False), (2, 8, 2, True, False),
    (3, 1, 1, False, False), (3, 8, 1, False, False), (3, 8, 2, True, False),
    (3, 8, 1, True, True),
])
def test_model_states_agree_with_deepspeed_estimators(stage, gpus, nodes, offload_opt, offload_params):
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
    )

    total, largest = 6_738_415_616, 131_072_000
    setup = Setup(gpus=gpus, nodes=nodes, zero=stage, offload_optimizer=offload_opt,
                  offload_params=offload_params)
    gpu, cpu = zero_model_states(total, largest, setup)
    if stage == 2:
        ds_cpu, ds_gpu = estimate_zero2_model_states_mem_needs(
            total, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=offload_opt)
    else:
        ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=offload_opt,
            cpu_offload_params=offload_params)
    assert gpu == pytest.approx(ds_gpu, rel=1e-6)
    assert cpu == pytest.approx(ds_cpu, rel=1e-6)


@pytest.mark.parametrize("gpus,offload", [(1, False), (4, False), (8, False), (8, True)])
def test_zero1_keeps_every_gradient_zero2_shards_them(gpus, offload):
    """ZeRO-1 partitions the optimizer states only: each GPU holds all 16-bit gradients, so it
    needs ZeRO-2's model states plus the gradients ZeRO-2 shards away (none on one GPU)."""
    total, largest = 6_738_415_616, 131_072_000
    one = zero_model_states(total, largest, Setup(gpus=gpus, zero=1, offload_optimizer=offload))
    two = zero_model_states(total, largest, Setup(gpus=gpus, zero=2, offload_optimizer=offload))
    sharded_away = 2 * total if offload else 2 * total - int(2 * total / gpus)
    assert one[0] == two[0] + sharded_away
    assert one[1] == two[1]  # host memory: the same offloaded optimizer states
    if gpus == 1 and not offload:
        assert one == two


def plan(*args, cwd):
    proc = subprocess.run([sys.executable, str(REPO / "align" / "plan.py"), *args],
                          capture_output=True, text=True, timeout=180, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_cli_says_what_fits_and_what_to_change(seven_b, tmp_path):
    model = f"model.name_or_path={seven_b}"
    full = plan("--stage", "dpo", model, "peft=none", "model.dtype=bfloat16", "--card", "24,80",
                cwd=tmp_path)
    assert "reference model" in full
    assert "24 GB card" in full and "does NOT fit" in full
    assert "peft=lora" in full and "zero3" in full

    lora = plan("--stage", "dpo", model, "peft=lora", "model.dtype=bfloat16",
                "model.gradient_checkpointing=true", "trainer.per_device_train_batch_size=1",
                "--card", "24", cwd=tmp_path)
    assert "reference model:" in lora and "no copy" in lora
    assert "  reference model " not in lora
    assert "-> fits" in lora

    sharded = plan("--stage", "sft", model, "peft=none", "model.dtype=bfloat16",
                   "model.gradient_checkpointing=true", "trainer.per_device_train_batch_size=1",
                   "--launch", str(REPO / "launch" / "zero3.yaml"), "--gpus", "8",
                   "--card", "80", cwd=tmp_path)
    assert "ZeRO-3" in sharded and "-> fits" in sharded


def test_cli_rejects_a_typo_like_the_job(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "align" / "plan.py"), "trainer.lerning_rate=1"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 2
    assert "learning_rate" in proc.stderr


def test_trl_fused_head_constants_match_the_installed_trl():
    from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from align.run.memory_estimate import TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK

    assert (TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK) == (TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE)


# The planner against a real trl step on the tiny model, measured by PyTorch's profiler
# (tests/memory_probe.py): model states exactly, activations and the step's peak within bounds.
@pytest.mark.parametrize("stage,peft,checkpointing", [
    ("sft", "none", False), ("sft", "none", True), ("dpo", "lora", False), ("grpo", "lora", False),
])
def test_planner_against_the_measured_peak_of_a_tiny_run(stage, peft, checkpointing, tmp_path):
    from hydra import compose, initialize_config_dir

    from align import dpo, grpo, sft
    from align.run.conf import CONF_DIR, register
    from align.run.memory_estimate import plan_job
    from align.run.spec import TrainerValues, job_shape, parse_spec

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(stage, overrides=[
            f"peft={peft}", "model.dtype=float32", f"model.gradient_checkpointing={checkpointing}",
            "trainer.max_steps=2", "trainer.save_strategy=no", "heldout.enabled=false",
            "logger=none", f"output_dir={tmp_path}", "callbacks=[memory_probe:MemoryProbe]"])
    {"sft": sft.run, "dpo": dpo.run, "grpo": grpo.run}[stage](cfg)
    probe = json.loads((tmp_path / "memory_probe.json").read_text())
    measured = probe["peak"]

    # Plan for the micro-batch the step really ran (sequences are padded to the longest).
    seqs, length = probe["batch"]
    spec = parse_spec(cfg, stage)
    job = job_shape(stage, spec.model, spec.peft, TrainerValues(spec.trainer_set,
                                                                type(spec.trainer)), Setup())
    completion = job.max_completion_length if stage == "grpo" else 0
    job = replace(job, batch_size=seqs // 2 if stage == "dpo" else seqs, max_length=length,
                  generation_batch=seqs)
    plan = plan_job(job, model_shape(spec.model.name_or_path), Setup(),
                    prompt_len=length - completion)
    parts = plan.parts

    if peft == "none":
        assert measured["GRADIENT"] == pytest.approx(parts["gradients"], rel=1e-3)
        assert measured["OPTIMIZER_STATE"] == pytest.approx(parts["optimizer states"], rel=1e-3)
    else:  # AdamW keeps two fp32 moments per adapter weight: half of weights+grads+moments
        assert measured["OPTIMIZER_STATE"] == pytest.approx(
            parts["adapter weights+grads+optimizer"] / 2, rel=1e-3)
    if not checkpointing:  # the profiler files recomputed activations under other categories
        ratio = measured["ACTIVATION"] / parts["activations"]
        assert 0.8 < ratio < 1.6, (ratio, measured, parts)
    ratio = probe["peak_total"] / plan.total
    assert 0.75 < ratio < 1.35, (ratio, probe, parts)


def test_auto_checkpointing_turns_on_only_where_the_job_would_not_fit(seven_b, tmp_path):
    job = [f"model.name_or_path={seven_b}", "peft=lora", "model.dtype=bfloat16",
           "trainer.max_length=2048", "trainer.per_device_train_batch_size=8"]
    out = plan("--stage", "sft", *job, "--card", "24,141", cwd=tmp_path)  # auto: the default
    small, large = [line for line in out.splitlines() if "GB card" in line]
    assert "fits (gradient checkpointing on)" in small  # ~97 GiB of activations without it
    assert "fits" in large and "checkpointing on" not in large

    off = plan("--stage", "sft", *job, "model.gradient_checkpointing=false", "--card", "24",
               cwd=tmp_path)
    assert "does NOT fit" in off and "model.gradient_checkpointing=true" in off


def test_gradient_checkpointing_takes_true_false_or_auto(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "align" / "plan.py"),
                           "model.gradient_checkpointing=sometimes"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 2
    assert "true, false or auto" in proc.stderr


def test_cli_with_an_uncached_hub_id_offline_says_a_config_folder_works(tmp_path):
    """Planning a hub model with no hub: one line, in seconds, naming the local-folder way."""
    import os

    script = os.path.relpath(REPO / "align" / "plan.py", tmp_path)
    proc = subprocess.run([sys.executable, script, "model.name_or_path=Qwen/Qwen2.5-7B-Instruct"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert "Qwen/Qwen2.5-7B-Instruct: not in the local Hugging Face cache" in lines[0]
    assert "its config.json alone is enough to plan" in lines[0]
