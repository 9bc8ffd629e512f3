"""Secrets stay out of everything align writes: saved configs, logs, W&B, model cards."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

_SECRET_KEY = re.compile(r"(token|api_key|apikey|secret|password|passwd)", re.IGNORECASE)
_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")
REDACTED = "<redacted>"


def redact(obj: Any) -> Any:
    """A copy of a (plain) config with secrets removed: keys that name a secret, and any value
    equal to a secret found in the environment. Saved configs and logs go through this."""
    secrets = {os.environ[k] for k in _SECRET_ENV if os.environ.get(k)}

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, Mapping):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, key) for v in value]
        if value is not None and _SECRET_KEY.search(key) and value not in ("", False, True):
            return REDACTED
        if isinstance(value, str) and any(s and s in value for s in secrets):
            return REDACTED
        return value

    return walk(obj)
