"""Experiment tracking: Weights & Biases, online when a key and the server work, else offline.

`logger:` config section (schema: LoggerConfig). With `mode: auto` (the default) a run goes
online when WANDB_API_KEY is set or `wandb login` has stored a key, AND the W&B server
(WANDB_BASE_URL, else wandb's own setting or default) answers within PROBE_TIMEOUT_S, AND
`wandb.init` succeeds (the server takes the key); otherwise it logs one warning and runs
offline. It never prompts and never waits long on a dead network: the run folder is printed at
the end with the command that uploads it later (`wandb sync`). `mode: online` (or
WANDB_MODE=online) stops at start with one ConfigError line instead of falling back.
`WANDB_MODE` in the environment wins over `logger.mode`. Runs of one Hydra sweep share a W&B
group. The config sent to W&B is the resolved config with secrets removed. `logger=none` turns
tracking off.
"""

from __future__ import annotations

import logging
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from align.errors import ConfigError
from align.secrets import redact

log = logging.getLogger(__name__)

BACKENDS = ("wandb", "none")
MODES = ("auto", "online", "offline", "disabled")


@dataclass(frozen=True)
class LoggerConfig:
    backend: str = "wandb"
    project: str = "align"
    entity: Optional[str] = None
    #: auto: online if an API key is configured and the server takes it, else offline
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
    """The mode asked for: WANDB_MODE, else `logger.mode`, with `auto` online when a key is
    configured. No network here: whether the server answers is start_tracking's to find out
    (an `auto` run it cannot reach goes offline then)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]  # the user's environment wins over config
    if mode == "auto":
        return "online" if has_wandb_key() else "offline"
    return mode


#: seconds the W&B server has to answer before an `auto` run goes offline
PROBE_TIMEOUT_S = 3.0
#: wandb.init's own limit for an online start (its default, 90 s, is what a server that
#: answers but fails cost); WANDB_INIT_TIMEOUT in the environment wins
INIT_TIMEOUT_S = 30.0


def wandb_base_url() -> str:
    """The W&B server an online run talks to: WANDB_BASE_URL, else the one wandb resolves
    itself (`wandb login --host`, its settings files, its default server)."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"].rstrip("/")
    import wandb

    return str(wandb.setup().settings.base_url).rstrip("/")


def probe_wandb_server(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the server at `url` answers within `timeout` seconds, else what went wrong.
    Any HTTP status below 500 counts as an answer (whether the key is accepted is wandb.init's
    to say). The request runs in a daemon thread, so a slow DNS lookup (which no socket
    timeout covers) cannot hold the run longer than `timeout` either."""
    import http.client
    import threading
    import urllib.error
    import urllib.request

    answer: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
            answer.append(None)
        except urllib.error.HTTPError as exc:
            answer.append(None if exc.code < 500 else f"answered HTTP {exc.code}")
        # URLError (refused, no DNS, timeout), a dropped connection, a malformed URL
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            answer.append(f"cannot be reached ({' '.join(str(reason).split())})")

    thread = threading.Thread(target=ask, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0] if answer else f"did not answer within {timeout:g} s"


def _online_asked_by(cfg: LoggerConfig) -> str | None:
    """What asked for online explicitly (`logger.mode=online`, WANDB_MODE=online); None when
    `auto` chose it because a key is configured."""
    if os.environ.get("WANDB_MODE"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}"
    return None if cfg.mode == "auto" else f"logger.mode={cfg.mode}"


def _go_offline(cfg: LoggerConfig, problem: str) -> None:
    """`auto`: warn once (the run goes offline). Explicit online: raise a one-line ConfigError."""
    asked_by = _online_asked_by(cfg)
    if asked_by:
        offline = "WANDB_MODE=offline" if asked_by.startswith("WANDB_MODE") else \
            "logger.mode=offline"
        raise ConfigError(
            f"{asked_by}: {problem}. Check WANDB_API_KEY (or `wandb login`) and WANDB_BASE_URL, "
            f"or run offline with {offline} (upload later with `wandb sync`)")
    log.warning("W&B: %s; this run is logged offline (the `wandb sync` command to upload it "
                "is printed at the end; logger.mode=offline skips this check)", problem)


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


def _init_online(cfg: LoggerConfig, init: dict) -> Any:
    """The online W&B run, or None (warned) when `auto` cannot have one: the server does not
    answer the probe, or wandb.init fails. An explicit online mode raises ConfigError then."""
    import wandb

    url = wandb_base_url()
    problem = probe_wandb_server(url)
    if problem:
        _go_offline(cfg, f"the W&B server {url} {problem}")
        return None
    settings: dict[str, Any] = {}
    if not os.environ.get("WANDB_INIT_TIMEOUT"):
        settings["init_timeout"] = INIT_TIMEOUT_S
    if os.environ.get("WANDB_BASE_URL"):
        settings["base_url"] = url  # the server probed, even if the variable changed since
        # wandb first read it (wandb keeps the settings of its first use in a process)
    try:
        return wandb.init(mode="online", settings=wandb.Settings(**settings), **init)
    # a rejected key, a server error, a timeout; ValueError: a base URL wandb refuses
    except (wandb.errors.Error, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        _go_offline(cfg, f"the W&B server {url} did not start the run "
                         f"({type(exc).__name__}: {reason})")
        return None


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
    init = {
        "project": cfg.project,
        "entity": cfg.entity,
        "name": cfg.run_name or name,
        "group": cfg.group or group,
        "tags": list(cfg.tags) or None,
        "dir": str(out_dir),
        "config": redact(config),
        "reinit": "finish_previous",
        "id": previous_id,
        "resume": "allow" if previous_id else None,
    }
    run = _init_online(cfg, init) if mode == "online" else None
    if run is None:  # not online, or `auto` could not go online (warned)
        mode = "offline" if mode == "online" else mode
        run = wandb.init(mode=mode, **init)
    if run.id != previous_id:
        write_atomic(id_file, run.id)  # the run a later `resume` continues
    log.info("W&B run %s (%s) in %s", run.name, mode, run.dir)
    return Tracker("wandb", run)
