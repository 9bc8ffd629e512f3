"""LLM-as-a-judge reward: an OpenAI-compatible chat endpoint grades each completion with a rubric.

    rewards:
      judge:
        fn: llm_judge
        kwargs:
          base_url: http://localhost:8000/v1      # vllm serve MODEL --port 8000, or any /v1 API
          model: Qwen/Qwen2.5-7B-Instruct
          rubric: |
            Grade the answer to the question from 0 to 10. Reply with the number only.
            Question: {prompt}
            Answer: {completion}

The rubric is a ``str.format`` template: ``{prompt}``, ``{completion}`` (their text) and any
dataset column of the example (``{solution}``). The reply's first number, clamped to
``[0, max_score]`` and divided by ``max_score``, is the reward; a reply without a number gives
``None`` (logged). Requests go to ``{base_url}/chat/completions`` with the standard library's HTTP
client, ``concurrency`` at a time, each with ``timeout_s``; connection errors, timeouts, 429 and 5xx
are retried ``max_retries`` times with exponential backoff (``backoff_s``, doubled each time);
then :class:`JudgeUnavailableError` names the URL and how to start a server. Other HTTP errors
(401, 404 ...) raise :class:`JudgeError` at once. The API key, if the endpoint needs one, is read
from the environment variable named by ``api_key_env`` (never put a key in a config file).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import string
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rewards.registry import register
from rewards.text import completion_text

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "You are grading an answer. Rate how correct and helpful it is from 0 to 10 and reply with "
    "the number only.\n\nQuestion:\n{prompt}\n\nAnswer:\n{completion}"
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """The judge endpoint answered with an error that retrying will not fix."""


class JudgeUnavailableError(JudgeError):
    """The judge endpoint could not be reached (or kept failing) after every retry."""


def _fields(rubric: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(rubric) if name}


def _prompt_text(prompt: Any) -> str:
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    return "\n".join(f"{m.get('role', 'user')}: {completion_text([m])}" for m in prompt
                     if isinstance(m, Mapping))


def parse_score(reply: str, max_score: float) -> float | None:
    """The first number of ``reply``, clamped to ``[0, max_score]``, over ``max_score``."""
    match = _NUMBER.search(reply)
    if match is None:
        return None
    return min(max(float(match.group()), 0.0), max_score) / max_score


def chat_completion(
    base_url: str,
    payload: dict[str, Any],
    api_key: str | None = None,
    timeout_s: float = 30.0,
    max_retries: int = 3,
    backoff_s: float = 1.0,
) -> str:
    """POST ``payload`` to ``{base_url}/chat/completions`` and return the first choice's text."""
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = json.dumps(payload).encode()
    last: str = ""
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode(errors="replace")
            if e.code not in _RETRY_STATUS:
                raise JudgeError(f"LLM judge {url} answered HTTP {e.code}: {detail}") from e
            last = f"HTTP {e.code}: {detail}"
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        except json.JSONDecodeError as e:
            raise JudgeError(f"LLM judge {url} answered with something that is not JSON: {e}") from e
        else:
            try:
                return data["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError) as e:
                raise JudgeError(
                    f"LLM judge {url} answered without choices[0].message.content: {str(data)[:300]}"
                ) from e
    raise JudgeUnavailableError(
        f"LLM judge {url} unreachable after {max_retries + 1} attempts (last: {last}). Is the "
        "server running? e.g. `vllm serve MODEL --port 8000` gives base_url http://localhost:8000/v1"
    )


def _check_judge(
    base_url: str | None = None,
    model: str | None = None,
    rubric: str = DEFAULT_RUBRIC,
    max_score: float = 10.0,
    api_key_env: str | None = None,
    timeout_s: float = 30.0,
    max_retries: int = 3,
    backoff_s: float = 1.0,
    concurrency: int = 8,
    temperature: float = 0.0,
    max_tokens: int = 16,
) -> None:
    if not isinstance(base_url, str) or not re.match(r"https?://", base_url):
        raise ValueError(
            f"llm_judge needs kwargs.base_url, an http(s) URL such as http://localhost:8000/v1, got {base_url!r}"
        )
    if not isinstance(model, str) or not model:
        raise ValueError("llm_judge needs kwargs.model, the model name the endpoint serves")
    if not isinstance(rubric, str):
        raise ValueError("rubric must be a template string")
    try:
        _fields(rubric)
    except ValueError as e:
        raise ValueError(f"rubric is not a valid format template: {e}") from e
    if "completion" not in _fields(rubric):
        raise ValueError("rubric must contain {completion}")
    if not isinstance(max_score, (int, float)) or max_score <= 0:
        raise ValueError(f"max_score must be > 0, got {max_score!r}")
    if api_key_env is not None and not isinstance(api_key_env, str):
        raise ValueError("api_key_env is the NAME of an environment variable holding the key")
    for name, value in (("max_retries", max_retries), ("concurrency", concurrency),
                        ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name != "max_retries"):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'max_retries' else 'positive'} int")
    if not timeout_s > 0 or backoff_s < 0:
        raise ValueError("timeout_s must be > 0 and backoff_s >= 0")


@register("llm_judge", check=_check_judge)
def llm_judge(
    completions: Sequence[Any],
    base_url: str,
    model: str,
    rubric: str = DEFAULT_RUBRIC,
    max_score: float = 10.0,
    api_key_env: str | None = None,
    timeout_s: float = 30.0,
    max_retries: int = 3,
    backoff_s: float = 1.0,
    concurrency: int = 8,
    temperature: float = 0.0,
    max_tokens: int = 16,
    prompts: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Judge each completion with ``rubric`` on an OpenAI-compatible endpoint (see the module
    docstring); returns scores in [0, 1]."""
    n = len(completions)
    fields = _fields(rubric)
    columns = {k: v for k, v in kwargs.items() if k in fields}
    missing = fields - set(columns) - {"prompt", "completion"}
    if missing or ("prompt" in fields and prompts is None):
        raise KeyError(
            f"llm_judge rubric uses {sorted(missing or {'prompt'})}, which this batch does not have "
            f"(columns: {sorted(k for k in kwargs if not k.startswith('log_'))})"
        )
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise JudgeError(f"llm_judge: environment variable {api_key_env} (api_key_env) is not set")

    def judge(i: int) -> float | None:
        values = {k: v[i] for k, v in columns.items()}
        values["completion"] = completion_text(completions[i])
        if prompts is not None:
            values["prompt"] = _prompt_text(prompts[i])
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": rubric.format(**values)}],
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        reply = chat_completion(base_url, payload, api_key, timeout_s, max_retries, backoff_s)
        score = parse_score(reply, float(max_score))
        if score is None:
            log.warning("llm_judge: no score in the reply for sample %d: %r", i, reply[:200])
        return score

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, n))) as pool:
        return list(pool.map(judge, range(n)))
