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
client, ``concurrency`` at a time.

Time is bounded twice, by wall clock: ``timeout_s`` is the deadline of one request (connecting,
sending, and receiving the whole answer: a server that trickles bytes is cut off too), and
``total_timeout_s`` the deadline of one reward call, shared by every request, retry and backoff of
the batch. Connection errors, timeouts, 429 and 5xx and answers that are not JSON are retried
``max_retries`` times with exponential backoff (``backoff_s``, doubled each time; a ``Retry-After``
header takes its place, up to ``timeout_s``: a server asking for an hour is asked again after
``timeout_s``, and a wait past the deadline is not waited); then :class:`JudgeUnavailableError`
names the URL and what the server last answered (its status and the ``Retry-After`` it asked). Once one sample has found the
endpoint unavailable, the others stop trying. That error is a
:class:`~rewards.registry.RewardUnavailableError`: with ``on_error: none``/``zero`` the whole batch
is filled at once instead of retried sample by sample, so a dead endpoint costs at most
``total_timeout_s`` per step. Other HTTP errors (401, 404 ...) raise :class:`JudgeError` at once.
The API key, if the endpoint needs one, is read from the environment variable named by
``api_key_env`` (never put a key in a config file). HTTP(S) proxies from the environment
(``https_proxy`` ...) are used as urllib would.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import logging
import math
import os
import re
import socket
import string
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rewards.registry import RewardUnavailableError, register
from rewards.text import completion_text

log = logging.getLogger(__name__)

DEFAULT_RUBRIC = (
    "You are grading an answer. Rate how correct and helpful it is from 0 to 10 and reply with "
    "the number only.\n\nQuestion:\n{prompt}\n\nAnswer:\n{completion}"
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
#: Largest answer read from the endpoint.
MAX_REPLY_BYTES = 8 << 20


class JudgeError(RuntimeError):
    """The judge endpoint answered with an error that retrying will not fix."""


class JudgeUnavailableError(JudgeError, RewardUnavailableError):
    """The judge endpoint could not be reached (or kept failing) after every retry, or within the
    reward call's ``total_timeout_s``."""


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


class _RequestTimeout(Exception):
    """A request did not complete within its wall-clock deadline."""


class Budget:
    """The time one reward call may spend (``total_timeout_s``), shared by its requests, and the
    news that the endpoint is unavailable (the other samples then stop trying)."""

    def __init__(self, total_timeout_s: float | None) -> None:
        self.total_timeout_s = total_timeout_s
        self.deadline = None if total_timeout_s is None else time.monotonic() + total_timeout_s
        self.unavailable = threading.Event()

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


def _proxy_for(scheme: str, host: str) -> urllib.parse.SplitResult | None:
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, Any, bytes]:
    """One POST, all of it (connect, send, the whole answer) within ``timeout_s`` of wall clock:
    a timer shuts the socket down at the deadline, which ends any read in progress (a socket
    timeout alone bounds each read, not the request). Returns (status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if https else 80)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    headers = dict(headers)
    proxy = _proxy_for(parts.scheme, host)
    connection_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
    if proxy is None:
        conn = connection_class(host, port, timeout=timeout_s)
    else:
        auth = {}
        if proxy.username:
            token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
            auth = {"Proxy-Authorization": f"Basic {token}"}
        if https:
            conn = connection_class(proxy.hostname or "", proxy.port or 80, timeout=timeout_s)
            conn.set_tunnel(host, port, headers=auth)
        else:
            conn = http.client.HTTPConnection(proxy.hostname or "", proxy.port or 80, timeout=timeout_s)
            target = url
            headers.update(auth)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        conn.connect()
        if expired.is_set():
            raise _RequestTimeout()
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(MAX_REPLY_BYTES + 1)
        if expired.is_set():
            raise _RequestTimeout()
        return response.status, response.headers, data
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise _RequestTimeout() from None
        raise
    finally:
        timer.cancel()
        conn.close()


def retry_after(headers: Any) -> float | None:
    """Seconds a ``Retry-After`` header asks a client to wait (a number of seconds or an HTTP
    date); None without one, or with one that is no finite number. ``headers``: any mapping
    with a case-insensitive ``get`` (http.client's, httpx's)."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryWait:
    """How long a client waits before its next try, and why: its own backoff, or what the
    server's ``Retry-After`` asked, cut to ``cap_s``. The cap exists because a server may ask
    for anything (``Retry-After: 3600`` from a rate limiter), and a client with no total
    deadline would sleep that long per retry; both OpenAI-style clients (this module's judge,
    align's endpoint generator) cap it at their request timeout."""

    seconds: float
    #: what the server's Retry-After asked (None: no header, the backoff decides)
    asked: float | None = None
    cap_s: float = math.inf
    #: the config key that sets the cap, for messages
    cap_key: str = ""

    @classmethod
    def after(cls, headers: Any, backoff_s: float, cap_s: float, cap_key: str) -> RetryWait:
        """The wait after an answer with ``headers`` (None: no answer): what its Retry-After
        asks, at most ``cap_s``; else ``backoff_s``."""
        asked = retry_after(headers)
        if asked is None:
            return cls(backoff_s, None, cap_s, cap_key)
        return cls(min(asked, cap_s), asked, cap_s, cap_key)

    def describe(self) -> str:
        """Why the wait is as long as it is, e.g. '1.0 s: Retry-After asked 3600 s, at most
        timeout_s=1 s is waited'."""
        if self.asked is None:
            return f"{self.seconds:.1f} s of backoff"
        if self.asked <= self.cap_s:
            return f"{self.seconds:.1f} s, as Retry-After asked"
        return (f"{self.seconds:.1f} s: Retry-After asked {self.asked:g} s, at most "
                f"{self.cap_key}={self.cap_s:g} s is waited")


def chat_completion(
    base_url: str,
    payload: dict[str, Any],
    api_key: str | None = None,
    timeout_s: float = 30.0,
    max_retries: int = 3,
    backoff_s: float = 1.0,
    budget: Budget | None = None,
) -> str:
    """POST ``payload`` to ``{base_url}/chat/completions`` and return the first choice's text.
    ``timeout_s`` bounds each request by wall clock, ``budget`` (default: unbounded) all of them
    together, waits included."""
    budget = budget or Budget(None)
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = json.dumps(payload).encode()
    last, attempts, wait = "", 0, RetryWait(0.0)
    busy = False  # the last try was answered, with a status that asks to come back later
    for attempt in range(max_retries + 1):
        if attempt:
            if wait.seconds >= budget.left():
                last += (f"; the next attempt would start past "
                         f"total_timeout_s={budget.total_timeout_s:g} s (it waits "
                         f"{wait.describe()})")
                break
            if budget.unavailable.wait(wait.seconds):
                last += "; another sample found the endpoint unavailable"
                break
        if budget.left() <= 0:
            last = last or "no time left in total_timeout_s"
            break
        if budget.unavailable.is_set():
            last = last or "another sample found the endpoint unavailable"
            break
        attempts += 1
        wait, busy = RetryWait(backoff_s * 2**attempt), False
        request_timeout = min(timeout_s, budget.left())
        try:
            status, reply_headers, data = _post(url, body, headers, request_timeout)
        except _RequestTimeout:
            last = f"no complete answer within {request_timeout:.1f} s"
            continue
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
            continue
        if status in _RETRY_STATUS:
            wait, busy = RetryWait.after(reply_headers, wait.seconds, timeout_s, "timeout_s"), True
            last = f"HTTP {status}: {data[:500].decode(errors='replace')}"
            if wait.asked is not None:
                last += f" (Retry-After: {wait.asked:g} s)"
            continue
        if status >= 400:
            raise JudgeError(f"LLM judge {url} answered HTTP {status}: {data[:500].decode(errors='replace')}")
        if len(data) > MAX_REPLY_BYTES:
            last = f"an answer larger than {MAX_REPLY_BYTES} bytes"
            continue
        try:
            reply = json.loads(data)
        except (ValueError, RecursionError) as e:  # a proxy's error page, a truncated answer
            last = f"an answer that is not JSON ({e}): {data[:200].decode(errors='replace')}"
            continue
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise JudgeError(
                f"LLM judge {url} answered without choices[0].message.content: {str(reply)[:300]}"
            ) from e
    budget.unavailable.set()
    if busy:  # the server is up: saying "unreachable" would send the user after the wrong cause
        raise JudgeUnavailableError(
            f"LLM judge {url} kept asking to come back later, {attempts} attempts (last: {last}). "
            "The server is up but rate-limited or overloaded: lower concurrency, or raise "
            "total_timeout_s / max_retries"
        )
    raise JudgeUnavailableError(
        f"LLM judge {url} unreachable after {attempts} attempts (last: {last}). Is the "
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
    total_timeout_s: float = 300.0,
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
    # nan passes a range check (it compares false) and inf removes a deadline: every number
    # here must be a finite one
    for name, value in (("max_score", max_score), ("timeout_s", timeout_s),
                        ("total_timeout_s", total_timeout_s), ("backoff_s", backoff_s),
                        ("temperature", temperature)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if max_score <= 0:
        raise ValueError(f"max_score must be > 0, got {max_score!r}")
    if api_key_env is not None and not isinstance(api_key_env, str):
        raise ValueError("api_key_env is the NAME of an environment variable holding the key")
    for name, value in (("max_retries", max_retries), ("concurrency", concurrency),
                        ("max_tokens", max_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name != "max_retries"):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'max_retries' else 'positive'} int")
    if not timeout_s > 0 or backoff_s < 0 or not total_timeout_s > 0 or temperature < 0:
        raise ValueError("timeout_s and total_timeout_s must be > 0, backoff_s and temperature >= 0")


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
    total_timeout_s: float = 300.0,
    prompts: Sequence[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Judge each completion with ``rubric`` on an OpenAI-compatible endpoint (see the module
    docstring); returns scores in [0, 1]. ``timeout_s`` bounds one request, ``total_timeout_s``
    the whole call (every sample, retry and wait)."""
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
    budget = Budget(total_timeout_s)

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
        reply = chat_completion(base_url, payload, api_key, timeout_s, max_retries, backoff_s, budget)
        score = parse_score(reply, float(max_score))
        if score is None:
            log.warning("llm_judge: no score in the reply for sample %d: %r", i, reply[:200])
        return score

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, n))) as pool:
        return list(pool.map(judge, range(n)))
