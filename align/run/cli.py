"""How the entry-point scripts hand over to Hydra.

`python align/grpo.py key=value`, `accelerate launch align/grpo.py key=value` and
`python align/grpo.py -m key=a,b` all come through `main`. User errors (config, data, missing
extras) print one line and exit with status 2, leaving no run folder; bugs keep their
traceback. That includes what Hydra itself rejects (an override that does not parse, a group
choice or a key that does not exist, `group=null`): the command line is composed once here
first, so those read as one line too rather than Hydra's multi-line report.

The Hydra task returns one number, the run's `objective` (a dotted key into metrics.json,
`heldout_after.accuracy` unless set), so that a sweeper plugin can optimise it:

    python align/grpo.py -m hydra/sweeper=optuna_heldout            # needs the `sweep` extra

`run(cfg)` itself keeps returning the whole metrics dict.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from align.errors import AlignError, ConfigError, exit_user_error
from align.run.conf import CONF_DIR, register

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # align/


#: Stages whose `run` starts with align.run.job.Job.start, which resumes garbage collection.
PAUSE_GC_STAGES = ("sft", "dpo", "kto", "rm", "grpo")
#: the job logs Hydra writes into a run folder, one per command that comes through `main`
JOB_LOGS = frozenset(f"{name}.log" for name in (*PAUSE_GC_STAGES, "eval", "generate"))


def main(stage: str, run: Callable) -> None:
    """Compose conf/<stage>.yaml with the command line and call `run(cfg)`."""
    if stage in PAUSE_GC_STAGES:
        # The imports ahead create ~570,000 objects that live as long as the process; the
        # collector would walk them all, again and again, as they arrive. Job.start freezes them
        # and resumes it (align.run.job.freeze_startup_objects).
        gc.disable()
    # `python align/<stage>.py` puts align/ itself first on sys.path, where our module names
    # (data, config, models...) would shadow unrelated top-level packages. Drop it.
    if sys.path and os.path.abspath(sys.path[0] or ".") == _PACKAGE_DIR:
        sys.path.pop(0)
    register()
    try:
        check_command_line(stage, sys.argv[1:])
    except AlignError as exc:
        exit_user_error(exc)
    if stage in PAUSE_GC_STAGES:
        from align.run.stop import install_process_handlers

        install_process_handlers()
    import hydra

    task = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=stage)(
        _reporting_user_errors(run)
    )
    task()
    _leave_process_group()


def _leave_process_group() -> None:
    """End the distributed process group of a launched job before the interpreter exits. Left to
    the exit, gloo's threads are torn down unjoined now and then: the rank aborts ('terminate
    called without an active exception', exit -6) after a run that finished, and the launcher
    reports the job failed."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_command_line(stage: str, argv: list[str]) -> None:
    """Compose the config the way Hydra will, and raise a one-line ConfigError for what Hydra
    would reject. Multirun sweeps are left to Hydra (each job checks its own config)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # Hydra's own usage error follows, from hydra.main
    if (args.help or args.hydra_help or args.info or args.cfg or args.shell_completion
            or args.config_path or args.experimental_rerun):
        return
    name = args.config_name or stage
    searchpath = [f"file://{os.path.abspath(args.config_dir)}"] if args.config_dir else []
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except Exception as exc:
        raise ConfigError(f"the command line does not parse: {_one_line(exc)}") from None
    groups = _config_groups([CONF_DIR, *([Path(args.config_dir)] if args.config_dir else [])])
    for override in parsed:
        key = override.key_or_group
        if key in groups and not override.is_delete() and not override.is_sweep_override() \
                and (override.value() is None or isinstance(override.value(), dict)):
            raise ConfigError(
                f"{override.input_line}: '{key}' is a config group: choose one of its files "
                f"({', '.join(groups[key])}), or set its keys one by one ({key}.<key>=value)")
    if args.multirun or any(o.is_sweep_override() for o in parsed):
        return
    from hydra import compose, initialize_config_dir

    overrides = [o.input_line for o in parsed]
    if searchpath:
        overrides.append(f"hydra.searchpath=[{','.join(searchpath)}]")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            composed = compose(name, overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        raise ConfigError(_hydra_error(exc, groups, name)) from None
    _note_run_folder(composed)


def _config_groups(roots: list[Path]) -> dict[str, list[str]]:
    """Config groups (folders of YAML files) under the config roots, with their choices."""
    groups: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.yaml")):
            rel = path.relative_to(root)
            if len(rel.parts) > 1:
                groups.setdefault("/".join(rel.parts[:-1]), []).append(path.stem)
    return groups


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


#: Top-level keys that only some commands have, and whose they are: set on another command,
#: `+key=` would only meet a second error, so the first one says where the key belongs.
OTHER_STAGES_KEYS = {
    "rewards": "the rewards GRPO trains on (align/grpo.py) and generate/eval score with; this "
               "command's held-out figures score with heldout.rewards",
    "tools": "the tools a policy calls in GRPO's rollouts (align/grpo.py, eval, generate); "
             "tool-call traces train with SFT as data: `messages` with tool_calls and a `tools` "
             "column",
    "environment": "the multi-turn environment of GRPO's rollouts (align/grpo.py, eval)",
    "on_policy": "DPO's on-policy rounds (align/dpo.py)",
}


def _hydra_error(exc: BaseException, groups: dict[str, list[str]], stage: str = "") -> str:
    """What Hydra rejected, in one line with the fix."""
    from align.run.spec import TOP_LEVEL
    from align.schema import suggest

    text = str(exc)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, choice = missing.groups()
        options = groups.get(group) or list(getattr(exc, "options", None) or [])
        return (f"{group}={choice}: there is no such {group} config; choose one of "
                f"{', '.join(options)}.{suggest(choice, options)}")
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        top = key.split(".")[0]
        if top in OTHER_STAGES_KEYS:
            return (f"'{top}' is not a key of the {stage or 'command'} config: it holds "
                    f"{OTHER_STAGES_KEYS[top]}")
        known = sorted({*TOP_LEVEL, *groups})
        hint = suggest(top, known) if top not in known else ""
        return (f"unknown config key '{key}'.{hint} To add a key that is not in the config, "
                f"write +{key}=<value>")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "the command line cannot be composed: " + " ".join(lines[:3])


#: what the Hydra task returns when the config names no `objective`
DEFAULT_OBJECTIVE = "heldout_after.accuracy"


def _reporting_user_errors(run: Callable) -> Callable:
    from align.run.resume import FinishedRun
    from align.run.stop import Stopped

    @functools.wraps(run)
    def wrapper(cfg):
        try:
            return _objective(cfg, run(cfg))
        except AlignError as exc:
            _remove_what_hydra_made()
            exit_user_error(exc)
        except FinishedRun as done:
            print(done, flush=True)
            return _objective(cfg, done.metrics)
        except (Stopped, KeyboardInterrupt) as exc:
            # A signal: one line, and the run folder as it is (a relaunch resumes from it).
            stopped = exc if isinstance(exc, Stopped) else Stopped(2, "stopped by SIGINT")
            sys.stderr.write(f"error: {stopped}\n")  # one write: the ranks share a stderr
            sys.stderr.flush()
            raise SystemExit(stopped.exit_status) from None
        finally:
            gc.enable()  # had the run stopped before Job.start resumed it

    return wrapper


def _objective(cfg, metrics):
    """The float a sweeper optimises. Without an `objective` key the default metric is
    returned when the run has it (and None otherwise); a named one must exist, except a held-out
    figure of a run that measured nothing held out (a finished run never ends in an error)."""
    from align.run.job import is_main_process, objective_value

    key = cfg.get("objective") if "objective" in cfg else None
    if not isinstance(metrics, dict) or not is_main_process():
        return metrics if not isinstance(metrics, dict) else None  # held-out data is the main's
    if key is None:
        section, _, name = DEFAULT_OBJECTIVE.partition(".")
        if name not in (metrics.get(section) or {}):
            return None
        key = DEFAULT_OBJECTIVE
    if str(key).startswith("heldout_") and str(key).split(".")[0] not in metrics:
        return None  # nothing held out was measured, as the run said at its start (Job.begin)
    return objective_value(metrics, str(key))


@dataclasses.dataclass(frozen=True)
class _FolderBefore:
    """What stood at the run folder's path before Hydra made it: whether the folder existed,
    its entries, and the ancestors that did not exist (which Hydra's mkdir creates)."""

    folder: Path
    existed: bool
    entries: frozenset
    new_ancestors: tuple


#: the run folder as it was before this process's Hydra job started (a single run)
_before: _FolderBefore | None = None
#: when this module was imported, early in an entry point's start: a folder changed after it
#: was changed by a launch (this one's Hydra job comes later; another launch's may not)
_IMPORTED = time.time()


def _note_run_folder(composed) -> None:
    """Record what is at the run folder's path now, before Hydra creates anything there, so
    that a run stopped by bad input removes what Hydra made and nothing else. The folder's path
    resolves as Hydra will resolve it: align's run id is fixed for the process. Launches running
    at once share parents (outputs/<name>/), and two started in the same second share the run
    folder: a folder that holds only what launches make counts as made by one (see
    `_made_by_launches`), so that the last launch to stop removes it, not as the user's."""
    global _before
    try:
        folder = Path(os.path.abspath(str(composed.hydra.run.dir)))  # as Hydra makes it
    except Exception:  # an interpolation only Hydra's runtime resolves
        return
    # Launches share at most the two folders above a run folder (outputs/<name>/); the folder
    # the command runs in, and those above it, are the user's whatever they hold.
    cwd = Path.cwd().resolve()

    def users(path: Path, level: int) -> bool:
        return path.exists() and (level > 2 or path.resolve() in (cwd, *cwd.parents)
                                  or not _made_by_launches(path))

    new = []
    for level, parent in enumerate((folder, *folder.parents)):
        if users(parent, level):
            break
        new.append(parent)
    existed = folder.is_dir() and users(folder, 0)
    _before = _FolderBefore(folder, existed,
                            frozenset(p.name for p in folder.iterdir()) if existed
                            else frozenset(), tuple(new[1:]))


def _made_by_launches(path: Path, depth: int = 3) -> bool:
    """A folder made by align launches, as far as can be told: one that appeared since this
    process started and is empty, or one that holds nothing but Hydra's `.hydra/`, align's job
    logs (`sft.log` ...), empty folders (another launch's run folder being made or removed) and
    such folders. Only an ancestor that is empty when this launch stops is ever removed on these
    grounds, so a user's file (`slurm-42.log` beside a run) is never at stake."""
    try:
        entries = list(path.iterdir())
        if not entries:
            return path.stat().st_ctime >= _IMPORTED
        return depth > 0 and all(
            (e.name == ".hydra" and e.is_dir()) or (e.name in JOB_LOGS and e.is_file())
            or (e.is_dir() and (not any(e.iterdir()) or _made_by_launches(e, depth - 1)))
            for e in entries)
    except OSError:
        return True  # gone meanwhile: another launch removed it


def _remove_what_hydra_made() -> None:
    """A run stopped by bad input leaves nothing behind that it made: Hydra's `.hydra/` and job
    log, the run folder and the parents Hydra created for it, when they hold nothing else.
    A folder or file that existed before the launch is never removed; when the launch could
    not record what existed (a run folder that only Hydra's runtime can resolve, a sweep's job)
    only a folder holding exactly Hydra's own files is removed, and no parent."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
        folder = Path(os.path.abspath(hc.runtime.output_dir))
        hydra_files = {str(hc.output_subdir), f"{hc.job.name}.log"}
    except (ValueError, AttributeError):
        return
    if not folder.is_dir():
        return
    before = _before if _before is not None and _before.folder == folder else None
    existing = before.entries if before else frozenset()
    made = {p.name for p in folder.iterdir()} - existing
    if not made <= hydra_files:
        return  # the run wrote something of its own: the error leaves it for the user to see
    if before is None and made != {p.name for p in folder.iterdir()}:
        return
    for name in made:  # another launch sharing the folder may remove them first
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    try:
        if (before is None or not before.existed) and not any(folder.iterdir()):
            folder.rmdir()
            for parent in (before.new_ancestors if before else ()):
                if parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
    except OSError:
        pass  # a launch sharing the folder removed it, or wrote into it, meanwhile
