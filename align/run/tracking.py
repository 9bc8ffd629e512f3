"""Experiment tracking: Weights & Biases, online when a key is configured, offline otherwise.

`logger:` config section (schema: LoggerConfig). With `mode: auto` a run goes online when
WANDB_API_KEY is set or `wandb login` has stored a key, and offline otherwise: it never
prompts and never needs the network; the run folder is printed at the end with the command
that uploads it later. Runs of one Hydra sweep share a W&B group. The config sent to W&B is
the resolved config with secrets removed. `logger=none` turns tracking off.
"""

from __future__ import annotations

import logging
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from align.secrets import redact

log = logging.getLogger(__name__)

BACKENDS = ("wandb", "none")
MODES = ("auto", "online", "offline", "disabled")


@dataclass(frozen=True)
class LoggerConfig:
    backend: str = "wandb"
    project: str = "align"
    entity: Optional[str] = None
    #: auto: online if an API key is configured, else offline
    mode: str = "auto"
    #: default: the sweep's id for Hydra multiruns, so a sweep's runs are grouped
    group: Optional[str] = None
    #: default: <name> plus the command-line overrides
    run_name: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    #: GRPO: log sampled completions as a W&B table
    log_completions: bool = True


def check_logger_config(cfg: LoggerConfig) -> list[str]:
    errors = []
    if cfg.backend not in BACKENDS:
        errors.append(f"logger.backend={cfg.backend!r}: choose one of {', '.join(BACKENDS)}")
    if cfg.mode not in MODES:
        errors.append(f"logger.mode={cfg.mode!r}: choose one of {', '.join(MODES)}")
    return errors


def has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        hosts = netrc.netrc(path).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def resolve_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]  # the user's environment wins over config
    if mode == "auto":
        return "online" if has_wandb_key() else "offline"
    return mode


@dataclass
class Tracker:
    """The active tracking backend for one run (only the main process has one)."""

    backend: str
    run: Any = None

    @property
    def report_to(self) -> list[str]:
        return ["wandb"] if self.run is not None else []

    def finish(self) -> None:
        if self.run is None:
            return
        mode = self.run.settings.mode
        folder = Path(self.run.dir).parent
        url = getattr(self.run, "url", None)
        self.run.finish()
        if mode == "offline":
            print(f"W&B run saved offline in {folder}\n  upload it with: wandb sync {folder}")
        elif url:
            print(f"W&B run: {url}")


WANDB_ID_FILE = "wandb_run_id"


def start_tracking(cfg: LoggerConfig, *, name: str, group: str | None, out_dir: Path,
                   config: dict, is_main: bool, resume: bool = False) -> Tracker:
    """Start a W&B run on the main process; other ranks track nothing. The run's id is kept
    in the run folder, so a resumed launch (`resume=...`) continues the same W&B run."""
    if cfg.backend == "none" or not is_main:
        return Tracker("none")
    mode = resolve_mode(cfg.mode)
    if mode == "disabled":
        return Tracker("none")
    import wandb

    from align.files import write_atomic

    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = out_dir / WANDB_ID_FILE
    previous_id = id_file.read_text().strip() if resume and id_file.exists() else None
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        name=cfg.run_name or name,
        group=cfg.group or group,
        tags=list(cfg.tags) or None,
        dir=str(out_dir),
        mode=mode,
        config=redact(config),
        reinit="finish_previous",
        id=previous_id,
        resume="allow" if previous_id else None,
    )
    if run.id != previous_id:
        write_atomic(id_file, run.id)  # the run a later `resume` continues
    log.info("W&B run %s (%s) in %s", run.name, mode, run.dir)
    return Tracker("wandb", run)
