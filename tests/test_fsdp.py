"""FSDP2 as users launch it, on CPU: `accelerate launch --config_file launch/fsdp2.yaml
--num_processes 2 align/<stage>.py`, two processes over gloo (torch's fully_shard runs on CPU).

Each run proves from inside (ShardProbe, a callback every rank runs) that the weights really
were sharded (DTensors, each rank holding its part), that `final/` holds a model that loads and
gives the trained model's outputs, and that held-out figures were recorded. And the guard: a
launch that asks for FSDP or DeepSpeed and would silently get plain DDP or lone processes stops
at the config check with one line (exit 2).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerCallback

from align.device import CARDS, CPU
from align.run.spec import Launch, launch_problem
from align.trainers.fsdp import shards_on_cpu

REPO = Path(__file__).resolve().parent.parent
#: token ids the trained model and the saved one are both run on
PROBE_IDS = [1, 5, 9, 17, 33, 65, 129, 200, 7, 3]
QUICK = ["logger=none", "trainer.max_steps=2", "heldout.max_samples=4"]


class ShardProbe(TrainerCallback):
    """Run by every rank at the end of training (plugged in through `callbacks`): writes what
    this rank holds of each parameter (probe-rank<r>.json) and, from the main process, the
    trained model's logits on PROBE_IDS (trained-logits.json). The forward runs on every rank:
    under FSDP it gathers the shards from all of them."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch
        from torch.distributed.tensor import DTensor

        params = {}
        for name, p in model.named_parameters():
            local = p.to_local() if isinstance(p, DTensor) else p
            params[name] = {"dtensor": isinstance(p, DTensor), "shape": list(p.shape),
                            "local": list(local.shape), "trainable": p.requires_grad}
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"probe-rank{args.process_index}.json").write_text(json.dumps(
            {"class": type(model).__name__, "params": params}))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([PROBE_IDS])).logits
        model.train(was_training)
        if args.process_index == 0:
            (out / "trained-logits.json").write_text(json.dumps(logits[0].tolist()))


def launch(config: str, stage: str, args: list[str], cwd: Path, env: dict | None = None):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    cmd = [accelerate, "launch", "--config_file", str(REPO / "launch" / config),
           "--num_processes", "2", str(REPO / "align" / f"{stage}.py"), *args]
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": str(REPO / "tests"), **(env or {})})


def run_folder(cwd: Path, stage: str, proc) -> Path:
    assert proc.returncode == 0, (f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n"
                                  f"{proc.stderr[-6000:]}")
    folders = [p for p in (cwd / "outputs" / stage).iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def assert_sharded(folder: Path) -> None:
    """Both ranks held DTensors, each a part of every weight that splits."""
    probes = [json.loads((folder / f"probe-rank{r}.json").read_text()) for r in (0, 1)]
    for probe in probes:
        assert probe["class"].startswith("FSDP"), probe["class"]  # fully_shard's class swap
        assert all(p["dtensor"] for p in probe["params"].values())
    split = 0
    for name, whole in probes[0]["params"].items():
        rows = [probe["params"][name]["local"][0] for probe in probes]
        assert sum(rows) == whole["shape"][0], (name, rows, whole["shape"])
        split += all(r < whole["shape"][0] for r in rows)
    assert split >= len(probes[0]["params"]) // 2, "most weights should be split over the ranks"


def saved_logits(folder: Path, adapter: bool):
    import torch
    from transformers import AutoModelForCausalLM

    final = folder / "final"
    if adapter:
        from peft import AutoPeftModelForCausalLM

        assert (final / "adapter_model.safetensors").exists()
        model = AutoPeftModelForCausalLM.from_pretrained(final)
    else:
        assert (final / "model.safetensors").exists()
        model = AutoModelForCausalLM.from_pretrained(final)
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([PROBE_IDS])).logits[0]


def assert_final_is_trained(folder: Path, adapter: bool) -> None:
    import torch

    trained = torch.tensor(json.loads((folder / "trained-logits.json").read_text()))
    torch.testing.assert_close(saved_logits(folder, adapter), trained, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- the decisions


def test_fsdp_on_a_cpu_group_is_sharded_by_align():
    assert shards_on_cpu(True, "MULTI_CPU")
    assert not shards_on_cpu(True, "MULTI_GPU")  # accelerate shards on a GPU itself
    assert not shards_on_cpu(False, "MULTI_CPU")  # plain DDP asked for


@pytest.mark.parametrize("card", ["h100", "h200", "a100-80gb", "t4"])
def test_launches_that_get_what_they_ask_are_accepted_on_cards(card):
    facts = CARDS[card]
    for launch in (Launch(fsdp=True, processes=8, group="MULTI_GPU"),
                   Launch(fsdp=True, processes=8, group="FSDP"),  # accelerate's state, built
                   Launch(deepspeed=True, processes=8, group="DEEPSPEED"),
                   Launch(processes=8, group="MULTI_GPU"),
                   Launch(processes=1, group="NO")):
        assert launch.asked == launch.outcome
        assert launch_problem(launch, facts, use_cpu=False) is None


def test_launches_that_get_what_they_ask_are_accepted_on_cpu():
    for launch in (Launch(fsdp=True, processes=2, group="MULTI_CPU"),  # align shards
                   Launch(deepspeed=True, processes=2, group="MULTI_CPU"),
                   Launch(processes=2, group="MULTI_CPU")):
        assert launch_problem(launch, CPU, use_cpu=True) is None


@pytest.mark.parametrize("launch,facts,use_cpu,says", [
    (Launch(fsdp=True, processes=2, group="NO"), CPU, False,
     ("asks for FSDP (distributed_type: FSDP in the accelerate config), but each of its 2 "
      "processes would train alone: trainer.use_cpu=false")),
    (Launch(processes=2, group="NO"), CPU, False, "remove trainer.use_cpu=false"),
    (Launch(deepspeed=True, processes=2, group="MULTI_CPU", accelerate_cpu=True), CPU, True,
     ("asks for DeepSpeed (distributed_type: DEEPSPEED in the accelerate config), but it "
      "would train with DDP: ACCELERATE_USE_CPU")),
    (Launch(deepspeed=True, processes=8, group="MULTI_GPU", accelerate_cpu=True), CARDS["h100"],
     False, "would train with DDP: ACCELERATE_USE_CPU is set"),
    (Launch(fsdp=True, processes=8, group="NO"), CARDS["h200"], False,
     "accelerate set up no process group"),
    (Launch(fsdp=True, processes=1, group="NO"), CPU, False, "as one plain process"),
])
def test_launches_that_would_silently_get_something_else_are_refused(launch, facts, use_cpu,
                                                                     says):
    problem = launch_problem(launch, facts, use_cpu)
    assert problem is not None and says in problem, problem
    assert "\n" not in problem


def test_launch_read_from_the_process(tmp_path):
    """What a launch asked is read from the environment `accelerate launch` exports; the group
    from trl's config once built (here: no launch, no group)."""
    from trl import SFTConfig

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    env = {"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "True"}
    launch = Launch.of_process(args, env)
    assert launch == Launch(fsdp=True, processes=2, group="NO", accelerate_cpu=True)
    assert Launch.of_process(args, {}) == Launch()


# --------------------------------------------------------------------------- real launches


def assert_ranks_exit_2(proc) -> None:
    """A rank stopped by bad input exits 2 (the launcher itself reports a failed child as 1)."""
    assert proc.returncode != 0 and "(exitcode: 2)" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("(exitcode: 2)")[0], proc.stderr[-3000:]


@pytest.mark.slow
def test_guard_fsdp_launch_that_would_train_as_lone_processes(tmp_path):
    """trainer.use_cpu=false on a machine without a GPU: accelerate sets up no process group,
    and each of the two processes would train alone (world size 1), FSDP dropped."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("use_cpu=false is a GPU run on a machine with CUDA")
    proc = launch("fsdp2.yaml", "sft", [*QUICK, "trainer.use_cpu=false"], tmp_path)
    assert_ranks_exit_2(proc)
    lines = [line for line in proc.stderr.splitlines() if "the launch asks for FSDP" in line]
    assert lines and "remove trainer.use_cpu=false" in lines[0], proc.stderr[-3000:]
    assert not (tmp_path / "outputs" / "sft").exists() or not any(
        (tmp_path / "outputs" / "sft").iterdir())


@pytest.mark.slow
def test_guard_deepspeed_launch_that_would_train_with_ddp(tmp_path):
    """ACCELERATE_USE_CPU in the environment: accelerate builds no DeepSpeed engine and the
    trainer would wrap the model in DDP."""
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra")
    proc = launch("zero2.yaml", "sft", QUICK, tmp_path, env={"ACCELERATE_USE_CPU": "true"})
    assert_ranks_exit_2(proc)
    assert "the launch asks for DeepSpeed" in proc.stderr and "unset it" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage,args,adapter", [
    ("sft", ["peft=none", "trainer.per_device_train_batch_size=8"], False),
    ("sft", ["peft=lora", "trainer.per_device_train_batch_size=8"], True),
    ("dpo", ["peft=none", "trainer.per_device_train_batch_size=4"], False),  # a reference copy
    ("dpo", ["peft=lora", "trainer.per_device_train_batch_size=4"], True),
    ("grpo", ["trainer.per_device_train_batch_size=8", "trainer.num_generations=4"], False),
], ids=["sft-full", "sft-lora", "dpo-full", "dpo-lora", "grpo-full"])
def test_fsdp2_trains_shards_measures_and_saves(stage, args, adapter, tmp_path):
    proc = launch("fsdp2.yaml", stage, [*QUICK, *args, "trainer.save_strategy=no",
                                        "callbacks=[test_fsdp:ShardProbe]"], tmp_path)
    folder = run_folder(tmp_path, stage, proc)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2 and metrics["world_size"] == 2
    assert "DistributedDataParallel" not in proc.stderr  # no DDP under the FSDP launch
    assert_sharded(folder)
    assert_final_is_trained(folder, adapter)
    assert metrics.get("heldout_before") and metrics.get("heldout_after"), metrics


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_resumes(tmp_path):
    """Checkpoints stay sharded (every rank writes its part); resume=true continues from them."""
    first = launch("fsdp2.yaml", "sft", [*QUICK, "peft=none", "heldout.enabled=false",
                                         "trainer.per_device_train_batch_size=8",
                                         "trainer.save_strategy=steps", "trainer.save_steps=2"],
                   tmp_path, env={"ALIGN_RUN_ID": "requeued"})
    folder = run_folder(tmp_path, "sft", first)
    checkpoint = folder / "checkpoint-2"
    assert any(p.name.startswith("pytorch_model_fsdp") for p in checkpoint.iterdir()), \
        sorted(p.name for p in checkpoint.iterdir())
    again = launch("fsdp2.yaml", "sft", ["logger=none", "peft=none", "heldout.enabled=false",
                                         "trainer.per_device_train_batch_size=8",
                                         "trainer.max_steps=3", "trainer.save_strategy=no",
                                         "resume=true", "callbacks=[test_fsdp:ShardProbe]"],
                   tmp_path, env={"ALIGN_RUN_ID": "requeued"})
    assert again.returncode == 0, again.stderr[-6000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 3
    assert metrics["train"]["resumed_from"] == "checkpoint-2"
    assert_final_is_trained(folder, adapter=False)
