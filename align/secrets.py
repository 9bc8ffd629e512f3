"""Secrets stay out of everything align writes: saved configs, logs, W&B, model cards.

Two rules, either one removes a value:

- the key names a credential. Keys are split into words (`hub_token`, `hubToken` and
  `hub-token` are all `hub token`) and judged on their last words, never on substrings, so
  `max_new_tokens`, `pad_token`, `tokenizer` and `bos_token_id` stay: a key is a secret when it
  is `token` alone or `<credential> token` (hub, hf, access, auth, api, bearer ...), or ends
  with `secret`, `password`, `passwd`, `passphrase`, `apikey`, `api key`, `private key`,
  `secret key` or `access key`;
- the value is, or contains, a secret found in the environment (WANDB_API_KEY, HF_TOKEN,
  OPENAI_API_KEY, and any other variable named `*_TOKEN`, `*_KEY`, `*_SECRET`, `*_PASSWORD`
  ... with a value of 8 characters or more), whatever its key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
#: a key whose last word is one of these is a secret
_SECRET_LAST_WORDS = frozenset({"secret", "password", "passwd", "passphrase", "apikey"})
#: ... or whose last two words are one of these
_SECRET_PAIRS = frozenset({("api", "key"), ("private", "key"), ("secret", "key"),
                           ("access", "key")})
#: `<word> token` is a credential for these words; other tokens (pad, bos, eos, image ...) are
#: a tokenizer's special tokens
_CREDENTIAL_TOKENS = frozenset({
    "hub", "hf", "huggingface", "access", "auth", "api", "bearer", "refresh", "session", "id",
    "oauth", "github", "gh", "gitlab", "wandb", "openai", "anthropic", "slack", "bot",
    "personal", "secret", "security", "client", "user", "login", "write", "read",
})
_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")
#: other environment variables hold a secret when their name ends with one of these words
#: (GITHUB_TOKEN, ACTIONS_RUNTIME_TOKEN, AWS_SECRET_ACCESS_KEY ...): broader than config keys,
#: as a value only matters here if it turns up in a config
_SECRET_ENV_LAST_WORDS = frozenset({"token", "key", "apikey", "secret", "password", "passwd",
                                    "passphrase", "credentials"})
#: ... and their value is at least this long (shorter ones would match ordinary text)
_MIN_ENV_SECRET = 8


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)  # camelCase -> camel Case
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_secret_key(key: str) -> bool:
    """Whether a config key names a credential (by its last words, never a substring)."""
    words = _words(key)
    if not words:
        return False
    if words == ["token"] or words[-1] in _SECRET_LAST_WORDS:
        return True
    if len(words) >= 2 and tuple(words[-2:]) in _SECRET_PAIRS:
        return True
    return len(words) >= 2 and words[-1] == "token" and words[-2] in _CREDENTIAL_TOKENS


def environment_secrets() -> set[str]:
    """The values of the environment's secret variables (known names and secret-named ones)."""
    known = {os.environ[name] for name in _SECRET_ENV if os.environ.get(name)}
    named = {value for name, value in os.environ.items()
             if len(value) >= _MIN_ENV_SECRET and (_words(name)[-1:] or [""])[0]
             in _SECRET_ENV_LAST_WORDS}
    return known | named


def redact(obj: Any) -> Any:
    """A copy of a (plain) config with secrets removed: values under keys that name a secret,
    and any value that is or contains a secret found in the environment. Saved configs and
    logs go through this."""
    secrets = environment_secrets()

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, Mapping):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, key) for v in value]
        if value is not None and is_secret_key(key) and value not in ("", False, True):
            return REDACTED
        if isinstance(value, str) and any(s in value for s in secrets):
            return REDACTED
        return value

    return walk(obj)
