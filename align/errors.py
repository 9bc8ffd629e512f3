"""Errors align raises for bad input: each message names what is wrong and how to fix it.

Entry points print these without a traceback (the message is the whole story) and exit with
status 2; everything else is a bug and keeps its traceback.
"""


class AlignError(Exception):
    """Bad input (config, data, environment) reported to the user; no traceback needed."""


class ConfigError(AlignError, ValueError):
    """The composed config is invalid: an unknown key, a bad value or an impossible combination."""


class MissingExtraError(AlignError, ImportError):
    """An optional dependency is needed by the chosen config but is not installed."""

    def __init__(self, feature: str, extra: str, package: str):
        self.extra = extra
        super().__init__(
            f"{feature} needs the `{package}` package, which is not installed. "
            f"Install the `{extra}` extra: pip install -e '.[{extra}]'"
        )
