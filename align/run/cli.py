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

import functools
import gc
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from align.errors import AlignError, ConfigError, exit_user_error
from align.run.conf import CONF_DIR, register

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # align/


#: Stages whose `run` starts with align.run.job.Job.start, which resumes garbage collection.
PAUSE_GC_STAGES = ("sft", "dpo", "kto", "rm", "grpo")


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
            compose(name, overrides=overrides)
    except Exception as exc:
        raise ConfigError(_hydra_error(exc, groups)) from None


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


def _hydra_error(exc: BaseException, groups: dict[str, list[str]]) -> str:
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
        known = sorted({*TOP_LEVEL, *groups})
        hint = suggest(top, known) if top not in known else ""
        return (f"unknown config key '{key}'.{hint} To add a key that is not in the config, "
                f"write +{key}=<value>")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "the command line cannot be composed: " + " ".join(lines[:3])


#: what the Hydra task returns when the config names no `objective`
DEFAULT_OBJECTIVE = "heldout_after.accuracy"


def _reporting_user_errors(run: Callable) -> Callable:
    @functools.wraps(run)
    def wrapper(cfg):
        try:
            return _objective(cfg, run(cfg))
        except AlignError as exc:
            _remove_empty_run_folder()
            exit_user_error(exc)
        finally:
            gc.enable()  # had the run stopped before Job.start resumed it

    return wrapper


def _objective(cfg, metrics):
    """The float a sweeper optimises. Without an `objective` key the default metric is
    returned when the run has it (and None otherwise); a named one must exist."""
    from align.run.job import is_main_process, objective_value

    key = cfg.get("objective") if "objective" in cfg else None
    if not isinstance(metrics, dict) or not is_main_process():
        return metrics if not isinstance(metrics, dict) else None  # held-out data is the main's
    if key is None:
        section, _, name = DEFAULT_OBJECTIVE.partition(".")
        if name not in (metrics.get(section) or {}):
            return None
        key = DEFAULT_OBJECTIVE
    return objective_value(metrics, str(key))


def _remove_empty_run_folder() -> None:
    """A run stopped by bad input leaves no folder behind: remove Hydra's run folder when it
    holds nothing but Hydra's own files (.hydra/ and the job log)."""
    import shutil
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    try:
        folder = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return
    if folder.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):  # outputs/<name>/ when now empty
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
