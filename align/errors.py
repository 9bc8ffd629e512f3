"""Errors align raises for bad input: each message names what is wrong and how to fix it.

Entry points report these with `report_user_error` / `exit_user_error`: one line `error: ...`
on stderr, no traceback (the message is the whole story), exit status 2. Everything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

#: exit status of a command stopped by bad input
USER_ERROR_STATUS = 2


class AlignError(Exception):
    """Bad input (config, data, environment) reported to the user; no traceback needed."""


class ConfigError(AlignError, ValueError):
    """The composed config is invalid: an unknown key, a bad value or an impossible combination."""


class RolloutError(AlignError, RuntimeError):
    """An environment's ``__init__``/``reset``/``get_reward`` raised during a rollout, or a reward
    (an environment's included) broke its contract under ``on_error: raise`` (a non-finite score,
    a non-number). Reported as one line naming the environment and method, or the reward and the
    sample: the run cannot go on, and the fix is in the user's code, not in align."""


class MissingExtraError(AlignError, ImportError):
    """An optional dependency is needed by the chosen config but is not installed."""

    def __init__(self, feature: str, extra: str, package: str):
        self.extra = extra
        super().__init__(
            f"{feature} needs the `{package}` package, which is not installed. "
            f"Install the `{extra}` extra: pip install -e '.[{extra}]'"
        )


def report_user_error(exc: BaseException) -> int:
    """Print `error: <message>` on stderr; return the exit status (2) for a command's main()."""
    print(f"error: {exc}", file=sys.stderr, flush=True)
    return USER_ERROR_STATUS


def exit_user_error(exc: BaseException) -> NoReturn:
    """Print `error: <message>` on stderr and exit with status 2."""
    raise SystemExit(report_user_error(exc)) from None
