"""benchmarks/experiment_smoke.py, the GPU smoke, on a CPU: its plan (cases, limits, the total
under the budget), and its real mechanics (each case in its own process group, killed past its
limit and the next one going on, held-out figures read from the run, memory read through NVML's
interfaces where a card has them)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = "benchmarks/experiment_smoke.py"


def smoke(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 900):
    script = SMOKE if cwd == REPO else str(REPO / SMOKE)  # as typed from the repository or not
    return subprocess.run([sys.executable, script, *args], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)


def plan_rows(stdout: str) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| case ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


@pytest.mark.parametrize("gpus", [1, 2])
def test_the_plan_admits_cases_whose_limits_fit_the_budget_and_runs_nothing(tmp_path, gpus):
    out, work = tmp_path / "smoke", tmp_path / "work"
    proc = smoke("--plan", "--gpus", str(gpus), "--out", str(out), "--work", str(work))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not out.exists() and not work.exists()  # nothing built, nothing run
    rows = plan_rows(proc.stdout)
    experiments = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    two = "qwen_gsm8k_grpo-2proc"
    assert set(rows) == experiments | ({two} if gpus == 2 else set())
    admitted = [r for r in rows.values() if r[-1] == "yes"]
    # the arithmetic line adds up the admitted limits and the build's, within the budget
    total = re.search(r"total of limits: model build (\d+) s \+ ([\d +]+) = (\d+) s", proc.stdout)
    build, limits, whole = int(total.group(1)), total.group(2).split(" + "), int(total.group(3))
    assert [int(x) for x in limits] == [int(r[9]) for r in admitted]
    assert whole == build + sum(int(r[9]) for r in admitted) <= 450 < 480
    for r in rows.values():  # limit = 1.5 x expected, rounded up to 5 s
        assert int(r[9]) % 5 == 0 and int(r[9]) >= 1.5 * float(r[8]) - 0.5
    # the real-model experiments come first; GRPO completions are capped at 256 tokens
    assert {"qwen_gsm8k_grpo", "llama_ultrafeedback_dpo", "qwen_sft_chat"} <= {
        r[0] for r in admitted}
    assert rows["qwen_gsm8k_grpo"][5] == "4 x 256 tokens"
    assert rows["qwen_gsm8k_grpo"][6] == "8 x 64 tokens"  # held-out on, small
    if gpus == 2:
        assert rows[two][1:3] == ["grpo, launch/zero2.yaml", "2"] and rows[two][-1] == "yes"


def test_the_smoke_names_an_unknown_experiment_and_a_bad_limit(tmp_path):
    proc = smoke("--only", "qwen_gsm8k", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "qwen_gsm8k: no such experiment" in proc.stderr
    proc = smoke("--plan", "--limit", "qwen_sft_chat=soon", timeout=120)
    assert proc.returncode == 2 and "--limit qwen_sft_chat=soon: expected NAME=SECONDS" in \
        proc.stderr


def test_cpu_smoke_kills_a_case_past_its_limit_and_measures_the_next(tmp_path):
    """Two cases from another folder: the first killed past a 4 s limit with its whole process
    group, the second run to the end with held-out figures before and after, a saved final/, the
    planner's figure, and NVML's used memory read through a stand-in nvidia-smi (two cards)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 2048\necho 1024\n")
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "smoke"
    proc = smoke("--cpu-smoke", "--only", "grpo_tiny_lora,qwen_sft_chat", "--limit",
                 "grpo_tiny_lora=4", "--out", "smoke", "--work", "work", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    killed, ok = json.loads((out / "experiment_smoke.json").read_text())
    assert killed["name"] == "grpo_tiny_lora"
    assert killed["status"] == "killed past its 4 s limit"
    with pytest.raises(ProcessLookupError):  # nothing of its process group is left
        os.killpg(killed["pgid"], 0)
    assert ok["name"] == "qwen_sft_chat" and ok["status"] == "ok", ok["status"]
    assert ok["steps"] == 2 and ok["stands_in"] == ["random weights", "synthetic data"]
    before, after = ok["heldout_before"]["loss"], ok["heldout_after"]["loss"]
    assert before > 0 and after > 0 and ok["heldout_before"]["loss/n"] == 8
    assert ok["final_saved"] and ok["planned_gib"] > 0 and ok["s_per_1000_samples"] > 0
    # no CUDA here: torch's counters are not available and said so; NVML is read per card
    assert ok["allocated_run_gib"] is None and ok["reserved_training_gib"] is None
    assert ok["nvml_peak_gib"] == [2.0, 1.0] == ok["nvml_idle_gib"]
    table = (out / "experiment_smoke.md").read_text()
    assert "(nvidia-smi)" in table and "| killed past its 4 s limit |" in table
    assert "| loss 5." in table and "| saved |" in table and "| n/a / n/a |" in table
    assert re.search(r"\| \d+ / 600 \|", table)  # its seconds beside its limit


@pytest.mark.slow
def test_cpu_smoke_runs_the_deepspeed_cases_on_one_and_two_processes(tmp_path):
    """The GRPO experiment as its first line launches it (launch/zero2.yaml), on 1 process and,
    as on a machine with 2 GPUs, on 2: completions capped, held-out accuracy before and after
    measured (each rank its share of the prompts), a final/ saved."""
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra is not installed")
    out = tmp_path / "smoke"
    proc = smoke("--cpu-smoke", "--gpus", "2", "--only", "qwen_gsm8k_grpo", "--out", str(out),
                 "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    one, two = json.loads((out / "experiment_smoke.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    for r in (one, two):
        assert r["status"] == "ok", (r["name"], r["status"])
        assert r["completions"] == "4 x 8 tokens"
        assert set(r["heldout_before"]) >= {"accuracy"} and set(r["heldout_after"]) >= {"accuracy"}
        assert r["final_saved"] and r["planned_gib"] > 0
    assert two["planned_gib"] <= one["planned_gib"]  # ZeRO-2 shards optimizer states over 2


def test_a_case_whose_launcher_is_not_installed_is_skipped_and_nothing_is_built(tmp_path,
                                                                                monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import experiment_smoke

    monkeypatch.setattr(experiment_smoke, "find_spec",
                        lambda name: None if name == "deepspeed" else object())
    experiment_smoke.main(["--cpu-smoke", "--only", "llama_ultrafeedback_dpo", "--out",
                           str(tmp_path), "--work", str(tmp_path / "work")])
    (result,) = json.loads((tmp_path / "experiment_smoke.json").read_text())
    assert result["status"] == "skipped: deepspeed not installed"
    assert not (tmp_path / "work" / "models").exists()


def test_nvml_is_read_through_pynvml_else_nvidia_smi_else_said_unavailable(tmp_path,
                                                                            monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import experiment_smoke

    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    read, source = experiment_smoke.nvml_reader()
    assert read is None and source.startswith("not available")
    # a driver library as pynvml presents it: two cards
    (tmp_path / "fake_nvml").mkdir()
    (tmp_path / "fake_nvml" / "pynvml.py").write_text(
        "from types import SimpleNamespace\n"
        "def nvmlInit(): pass\n"
        "def nvmlDeviceGetCount(): return 2\n"
        "def nvmlDeviceGetHandleByIndex(i): return i\n"
        "def nvmlDeviceGetMemoryInfo(h): return SimpleNamespace(used=(h + 1) * 2**30)\n")
    monkeypatch.delitem(sys.modules, "pynvml")
    monkeypatch.syspath_prepend(str(tmp_path / "fake_nvml"))
    read, source = experiment_smoke.nvml_reader()
    assert source == "pynvml" and read() == [2**30, 2**31]
    with experiment_smoke.MemorySampler(read, every=0.01) as sampler:
        pass
    assert sampler.peak == [2**30, 2**31]
