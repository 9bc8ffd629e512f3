"""Guards and settings a GPU launch depends on, checked at setup with the facts of real cards:
QLoRA with vLLM refused, QLoRA's 4-bit storage under FSDP and ZeRO-3, DDP's search for unused
parameters, and the vLLM and DeepSpeed versions trl 1.16 works with."""

import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from packaging.requirements import Requirement

from align.device import CARDS, Setup, bnb_quant_storage
from align.errors import ConfigError
from align.models.adapters import build_peft_plan
from align.models.config import ModelConfig
from align.run.conf import CONF_DIR, register
from align.run.spec import (
    DEEPSPEED_MIN,
    VLLM_RANGE,
    ddp_find_unused_parameters,
    decide,
    deepspeed_version_problem,
    vllm_version_problem,
)

register()
REPO = Path(__file__).resolve().parent.parent
H100 = CARDS["h100"]
DDP = Setup(gpus=8)


def compose_stage(stage, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[*overrides, "output_dir=/tmp/align-guards-test",
                                         "logger=none"])


# --------------------------------------------------------------------------- QLoRA + vLLM


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_qlora_with_vllm_is_refused_at_the_check(mode):
    """Before vLLM's package check (vLLM need not be installed) or server probe."""
    pytest.importorskip("bitsandbytes", reason="peft=qlora needs the `quant` extra")
    cfg = compose_stage("grpo", "peft=qlora", "trainer.use_vllm=true",
                        f"trainer.vllm_mode={mode}")
    with pytest.raises(ConfigError, match=r"trainer.use_vllm=true with peft=qlora: trl cannot "
                                          r"push a 4-bit base .* use peft=lora"):
        decide(cfg, "grpo", facts=H100)
    # LoRA with vLLM passes the guard (vLLM itself is not needed to plan it)
    decide(compose_stage("grpo", "peft=lora", "trainer.use_vllm=true",
                         f"trainer.vllm_mode={mode}"), "grpo", facts=H100, check_packages=False)


@pytest.mark.slow
def test_qlora_with_vllm_stops_the_command_in_one_line(tmp_path):
    """As a user types it: exit 2, one line, and nothing left behind."""
    pytest.importorskip("bitsandbytes", reason="peft=qlora needs the `quant` extra")
    proc = subprocess.run(
        [sys.executable, str(REPO / "align" / "grpo.py"), "peft=qlora", "trainer.use_vllm=true",
         "logger=none"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "error: invalid config: trainer.use_vllm=true with peft=qlora")
    assert not (tmp_path / "outputs").exists()


# --------------------------------------------------------------------------- QLoRA storage


@pytest.mark.parametrize("setup,storage", [
    (Setup(gpus=8, zero=3), "bfloat16"), (Setup(gpus=8, fsdp=2), "bfloat16"),
    (Setup(gpus=4, nodes=2, zero=3, offload_params=True), "bfloat16"),
    (Setup(gpus=8, zero=2), None), (DDP, None), (Setup(), None),
])
def test_qlora_stores_4bit_weights_in_the_model_dtype_where_weights_are_sharded(setup, storage):
    pytest.importorskip("bitsandbytes", reason="peft=qlora needs the `quant` extra")
    decided = decide(compose_stage("sft", "peft=qlora", "model.dtype=auto"), "sft",
                     facts=H100.with_setup(setup))
    quant = decided.peft.quantization
    assert quant.get("bnb_4bit_quant_storage") == storage
    assert bnb_quant_storage("bfloat16", setup) == storage
    import torch
    from transformers import BitsAndBytesConfig

    built = BitsAndBytesConfig(**quant)  # what the factory passes to from_pretrained
    assert built.bnb_4bit_quant_storage == (getattr(torch, storage) if storage else torch.uint8)


def test_qlora_storage_set_by_hand_must_match_under_sharding():
    pytest.importorskip("bitsandbytes", reason="peft=qlora needs the `quant` extra")
    cfg = compose_stage("sft", "peft=qlora", "model.dtype=auto",
                        "+peft.quantization.bnb_4bit_quant_storage=uint8")
    with pytest.raises(ConfigError, match=r"bnb_4bit_quant_storage=uint8: under FSDP2 .* "
                                          r"model's dtype \(bfloat16\)"):
        decide(cfg, "sft", facts=H100.with_setup(Setup(gpus=8, fsdp=2)))
    # without sharding the user's choice stands
    decided = decide(cfg, "sft", facts=H100.with_setup(DDP))
    assert decided.peft.quantization["bnb_4bit_quant_storage"] == "uint8"


# --------------------------------------------------------------------------- DDP unused parameters


def plan(method, apply_to=None, vision=False):
    section = {"method": method, **({"apply_to": apply_to} if apply_to else {})}
    if method in ("prompt_tuning", "p_tuning"):
        section["num_virtual_tokens"] = 4
    return build_peft_plan(section, vision=vision, task_type="CAUSAL_LM")


TEXT = ModelConfig()
VISION = ModelConfig(kind="image_text_to_text")


@pytest.mark.parametrize("model,method,apply_to,experts,expected", [
    (TEXT, "none", None, False, False),
    (TEXT, "lora", None, False, False),  # transformers: True for every PEFT model
    (TEXT, "qlora", None, False, False),
    (TEXT, "dora", None, False, False),
    (TEXT, "prompt_tuning", None, False, False),
    (TEXT, "p_tuning", None, False, False),
    (TEXT, "none", None, True, True),  # an expert no token was routed to
    (TEXT, "lora", None, True, True),
    (VISION, "none", None, False, True),  # a batch without images
    (dataclasses.replace(VISION, freeze_vision_tower=True, freeze_projector=True), "none", None,
     False, False),
    (VISION, "lora", "language_model", False, False),
    (VISION, "lora", "all", False, True),
])
def test_find_unused_parameters_only_where_a_parameter_can_sit_out(model, method, apply_to,
                                                                   experts, expected):
    peft = plan(method, apply_to, vision=model.is_vision)
    assert ddp_find_unused_parameters(model, peft, experts) is expected


def test_ddp_launch_decides_find_unused_parameters_from_the_model(tmp_path):
    """Set for a DDP launch only (ZeRO and FSDP do not use it), read from the architecture:
    the tiny dense model and a mixture of experts (a config folder, no weights); the config's
    own value wins; an architecture that cannot be read leaves it to transformers."""
    from transformers import MixtralConfig

    def kwargs(setup, *overrides):
        return decide(compose_stage("sft", *overrides), "sft",
                      facts=H100.with_setup(setup)).trainer_kwargs

    assert kwargs(DDP)["ddp_find_unused_parameters"] is False
    assert kwargs(DDP, "peft=lora")["ddp_find_unused_parameters"] is False
    assert "ddp_find_unused_parameters" not in kwargs(Setup())
    assert "ddp_find_unused_parameters" not in kwargs(Setup(gpus=8, zero=2))
    assert kwargs(DDP, "+trainer.ddp_find_unused_parameters=true")[
        "ddp_find_unused_parameters"] is True

    moe = tmp_path / "moe"
    MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                  vocab_size=256).save_pretrained(moe)
    assert kwargs(DDP, f"model.name_or_path={moe}", "model.tokenizer=tiny://base")[
        "ddp_find_unused_parameters"] is True

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    assert "ddp_find_unused_parameters" not in kwargs(
        DDP, f"model.name_or_path={unknown}", "model.tokenizer=tiny://base")


@pytest.mark.slow
def test_two_process_ddp_sft_searches_no_unused_parameters(tmp_path):
    """`accelerate launch --config_file launch/ddp.yaml --num_processes 2 align/sft.py` with LoRA
    (for which transformers would search): trains to the end, and torch's DDP no longer warns
    that find_unused_parameters found nothing (a wasted graph walk each step)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    proc = subprocess.run(
        [accelerate, "launch", "--config_file", str(REPO / "launch" / "ddp.yaml"),
         "--num_processes", "2", str(REPO / "align" / "sft.py"), "logger=none", "peft=lora",
         "trainer.max_steps=2", "trainer.save_strategy=no", "heldout.enabled=false",
         "trainer.per_device_train_batch_size=8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    folders = [p for p in (tmp_path / "outputs" / "sft").iterdir() if p.is_dir()]
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2 and metrics["world_size"] == 2
    log = proc.stdout + proc.stderr
    assert "find_unused_parameters=True" not in log, log[-3000:]


# --------------------------------------------------------------------------- versions


def trl_pin(package):
    """trl's own requirement on `package` (its extra of that name)."""
    for text in importlib.metadata.requires("trl") or []:
        req = Requirement(text)
        if req.name == package and req.marker and req.marker.evaluate({"extra": package}):
            return req.specifier
    pytest.fail(f"trl declares no {package} extra")


def align_pin(extra):
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    return Requirement(extras[extra][0]).specifier


@pytest.mark.parametrize("version", ["0.21.2", "0.31.1", "0.32.0", "0.31.1+cpu"])
def test_vllm_releases_outside_trls_range_fail_at_patch_level(version):
    assert f"trl 1.16 supports vLLM {VLLM_RANGE[0]} to {VLLM_RANGE[1]}" in \
        vllm_version_problem(version)


def test_deepspeed_below_what_trl_needs_fails():
    assert "needs DeepSpeed >= 0.18.6" in deepspeed_version_problem("0.17.6")
    assert deepspeed_version_problem("0.18.6") is None
    assert deepspeed_version_problem("0.19.8") is None


@pytest.mark.parametrize("version", ["0.21.2", "0.22.0", "0.25.1", "0.31.0", "0.31.0+cu129",
                                     "0.31.0+cpu", "0.31.1", "0.32.0"])
def test_vllm_pins_agree_with_trl(version):
    """The `vllm` extra, align's setup check and trl's own extra accept the same releases."""
    trl_accepts = trl_pin("vllm").contains(version)
    assert align_pin("vllm").contains(version) == trl_accepts
    assert (vllm_version_problem(version) is None) == trl_accepts


@pytest.mark.parametrize("version", ["0.17.6", "0.18.5", "0.18.6", "0.19.8"])
def test_deepspeed_pins_agree_with_trl(version):
    trl_accepts = trl_pin("deepspeed").contains(version)
    assert align_pin("deepspeed").contains(version) == trl_accepts
    assert (deepspeed_version_problem(version) is None) == trl_accepts
    assert DEEPSPEED_MIN in str(trl_pin("deepspeed"))


def test_gpu_constraints_agree_with_the_pins():
    """launch/constraints-gpu.txt: one vLLM release that trl supports, the torch it pins, and
    a transformers inside vLLM's range and above trl's floor."""
    pins = {}
    for line in (REPO / "launch" / "constraints-gpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name] = req.specifier
    vllm = next(iter(pins["vllm"])).version
    assert vllm_version_problem(vllm) is None and trl_pin("vllm").contains(vllm)
    assert {"torch", "transformers", "trl"} <= set(pins)
    trl_transformers = [Requirement(r) for r in importlib.metadata.requires("trl")
                        if r.startswith("transformers") and "extra" not in r][0]
    transformers = next(iter(pins["transformers"])).version
    assert trl_transformers.specifier.contains(transformers)
