"""How the entry-point scripts hand over to Hydra.

`python align/grpo.py key=value`, `accelerate launch align/grpo.py key=value` and
`python align/grpo.py -m key=a,b` all come through `main`. User errors (config, data, missing
extras) print one message and exit with status 2; bugs keep their traceback.

The Hydra task returns one number, the run's `objective` (a dotted key into metrics.json,
`heldout_after.accuracy` unless set), so that a sweeper plugin can optimise it:

    python align/grpo.py -m hydra/sweeper=optuna_heldout            # needs the `sweep` extra

`run(cfg)` itself keeps returning the whole metrics dict.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from align.errors import AlignError, exit_user_error
from align.run.conf import CONF_DIR, register

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # align/


def main(stage: str, run: Callable) -> None:
    """Compose conf/<stage>.yaml with the command line and call `run(cfg)`."""
    # `python align/<stage>.py` puts align/ itself first on sys.path, where our module names
    # (data, config, models...) would shadow unrelated top-level packages. Drop it.
    if sys.path and os.path.abspath(sys.path[0] or ".") == _PACKAGE_DIR:
        sys.path.pop(0)
    register()
    import hydra

    task = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=stage)(
        _reporting_user_errors(run)
    )
    task()


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
