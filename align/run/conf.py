"""The conf/ tree and Hydra: where it is, align's resolvers and open sections, and the run id
every rank of a launch agrees on.

How config keys are checked. Hydra puts the root of the composed config in struct mode, so a
misspelled top-level key fails inside Hydra. The sections (`model`, `peft`, `data`, `trainer`,
`rewards`, `tools`, `logger`, `heldout`, `doctor`) are left open on purpose (see `align_sections`
below): any field of trl's SFTConfig/DPOConfig/GRPOConfig or of peft's adapter configs can then be set
from the command line without a `+`, and align itself checks every key of every section
against its schema (align.run.spec) before anything heavy is loaded, naming the closest valid
keys.

This module imports neither torch nor trl: it runs before them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

#: The open sections of every stage config (see the module docstring).
SECTIONS = ("model", "peft", "data", "trainer", "rewards", "tools", "logger", "heldout",
            "doctor")


def run_id() -> str:
    """An id for this launch that every rank of it agrees on, without talking to the others.

    Order: `ALIGN_RUN_ID` (set it yourself, e.g. to resume into an existing run folder, or on
    multi-node jobs), the SLURM job id (kept by a requeued job, so `resume=true` continues in
    the same folder), then the start time of the launcher process that
    spawned this rank (torchrun/accelerate set LOCAL_RANK; their ranks on one node share that
    parent), and for a plain single process its own start time. Hydra's `${now:}` cannot be
    used: each rank resolves it separately and ranks may land in different folders.
    """
    if os.environ.get("ALIGN_RUN_ID"):
        return os.environ["ALIGN_RUN_ID"]
    if os.environ.get("SLURM_JOB_ID"):
        job = os.environ["SLURM_JOB_ID"]
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"-{task}" if task else "")
    started = _process_start_time(os.getppid()) if "LOCAL_RANK" in os.environ else None
    if started is None:
        started = _process_start_time(os.getpid()) or time.time()
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(started))


def _process_start_time(pid: int) -> float | None:
    """Wall-clock start time of a process, from /proc (Linux); None where unavailable. The boot
    time (`btime`, whole seconds) plus the start in clock ticks: the same number at every read,
    in every process (now minus the uptime moved with the moment of reading, and a start near a
    second's boundary named two run folders: the one the launch checked and the one it made)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def register() -> None:
    """Register align's resolvers and config nodes with OmegaConf/Hydra (idempotent)."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("align_run_id"):
        # use_cache: resolved once per process, so every read of the run dir agrees.
        OmegaConf.register_new_resolver("align_run_id", run_id, use_cache=True)
    sections = OmegaConf.create({name: {} for name in SECTIONS})
    for name in SECTIONS:
        OmegaConf.set_struct(sections[name], False)
    ConfigStore.instance().store(name="align_sections", node=sections)


def experiment_usage(name: str) -> tuple[str, str | None, list[str]]:
    """(stage, launch file or None, the overrides after the script) of the command line that
    heads conf/experiment/<name>.yaml (its second line): how the experiment is run."""
    import re
    import shlex

    path = CONF_DIR / "experiment" / f"{name}.yaml"
    for line in path.read_text().splitlines()[:3]:
        words = shlex.split(line.lstrip("# "))
        script = next((w for w in words if re.fullmatch(r"align/(sft|dpo|kto|rm|grpo)\.py", w)), None)
        if script:
            launch = words[words.index("--config_file") + 1] if "--config_file" in words else None
            overrides = [w for w in words[words.index(script) + 1:] if not w.startswith("-")]
            return script[len("align/"):-len(".py")], launch, overrides
    raise ValueError(f"{path} does not start with the command that runs it")
