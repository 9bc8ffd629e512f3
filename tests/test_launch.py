"""The entry points as users start them: real subprocesses (slow: marked, still run in CI)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICK = ["logger=none", "trainer.max_steps=2", "trainer.save_strategy=no", "heldout.max_samples=8"]
pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc


def test_multirun_sweep_completes_two_runs(tmp_path):
    sweep = tmp_path / "sweep"
    run([sys.executable, str(REPO / "align" / "sft.py"), "-m", "trainer.learning_rate=1e-3,2e-3",
         *QUICK, "trainer.per_device_train_batch_size=8", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == ["0", "1"]
    rates = []
    for folder in runs:
        assert json.loads((folder / "metrics.json").read_text())["train"]["global_step"] == 2
        assert (folder / "final" / "model.safetensors").exists()
        rates.append(float((folder / "config.yaml").read_text().split("learning_rate: ")[1].split()[0]))
    assert rates == [1e-3, 2e-3]


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_accelerate_two_processes_share_one_run_folder(stage, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    extra = {"grpo": ["trainer.per_device_train_batch_size=8", "trainer.num_generations=4"],
             "dpo": ["trainer.per_device_train_batch_size=4"],
             "sft": ["trainer.per_device_train_batch_size=8"]}[stage]
    proc = run([accelerate, "launch", "--config_file", str(REPO / "launch" / "ddp.yaml"),
                "--num_processes", "2", str(REPO / "align" / f"{stage}.py"), *QUICK, *extra,
                "callbacks=[rank_check:WeightDigest]"],
               cwd=tmp_path, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")})
    folders = [p for p in (tmp_path / "outputs" / stage).iterdir() if p.is_dir()]
    assert len(folders) == 1, f"ranks wrote to several folders: {folders}\n{proc.stderr[-2000:]}"
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2
    assert metrics["world_size"] == 2
    assert (folders[0] / "final").is_dir()
    assert (folders[0] / "config.yaml").exists()
    digests = [(folders[0] / f"weights-rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1], "the ranks ended with different weights"


@pytest.mark.parametrize("config,stage", [("zero2.yaml", "sft"), ("zero3_offload.yaml", "dpo")])
def test_deepspeed_on_cpu_two_processes(config, stage, tmp_path):
    """DeepSpeed ZeRO-2, and ZeRO-3 with optimizer and parameter offload, through accelerate.
    The first ZeRO-3 offload run compiles DeepSpeed's CPU Adam (cached in
    ~/.cache/torch_extensions)."""
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    extra = {"sft": ["trainer.per_device_train_batch_size=8", "peft=none"],
             "dpo": ["trainer.per_device_train_batch_size=4", "peft=none"]}[stage]
    run([accelerate, "launch", "--config_file", str(REPO / "launch" / config),
         "--num_processes", "2", str(REPO / "align" / f"{stage}.py"), *QUICK, *extra],
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=900)
    folders = [p for p in (tmp_path / "outputs" / stage).iterdir() if p.is_dir()]
    assert len(folders) == 1
    metrics = json.loads((folders[0] / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2 and metrics["world_size"] == 2
    # The saved model is whole (ZeRO-3 gathers the shards when saving) and loads.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folders[0] / "final")
    assert all(p.numel() > 0 for p in model.parameters())
