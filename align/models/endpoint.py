"""An OpenAI-compatible endpoint as a generator (a teacher model behind vLLM's server, TGI,
llama.cpp, an inference provider ...), spoken to with httpx.

Which API: `api="auto"` sends chat prompts (message lists) to `POST /chat/completions` and
plain-string prompts to `POST /completions`; `api="chat"` sends both to chat completions (a
string becomes one user message); `api="completions"` sends plain strings only (a message
prompt is then an error naming the row). Each request asks for all `n` samples of one prompt
(`n`, `temperature`, `top_p`, `max_tokens`, `seed`), and the answer must hold exactly `n`
choices, each with `message.content` (chat) or `text` (completions) a string: anything else
is an `EndpointError` naming the prompt, the field and what came back.

Reliability: `preflight` asks `GET /models` with a short timeout before any work is done, so
an unreachable server, a wrong URL, a refused key or an unknown model name fails in seconds,
in one line. Requests run `concurrency` at a time; each has `timeout_s`, and the whole job has
`total_timeout_s` (no request waits past it). 429, 5xx, timeouts and dropped connections are
retried up to `max_retries` times with exponential backoff, waiting what a `Retry-After`
header asks for when there is one, up to `timeout_s` (a rate limiter's `Retry-After: 3600` is
asked again after `timeout_s`, not slept through: rewards.judge.RetryWait, the rule both
OpenAI-style clients share); other 4xx answers fail at once with the server's message. A wait
that would end past `total_timeout_s` is not started: the error names the deadline, the
status the server answered and the `Retry-After` it asked.
The first prompt that fails stops the job: queued prompts are dropped, those in flight end
without another try, and the error is the last thing said. A base URL without the `/v1` that
the server (vLLM's, for one) serves under fails the preflight with the URL to use.

The API key is read from the environment variable the config names (never the config itself)
and sent as `Authorization: Bearer <key>`; it is kept out of every message, repr and log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from align.errors import AlignError
from rewards.judge import RetryWait

log = logging.getLogger(__name__)

APIS = ("auto", "chat", "completions")
#: answers worth another try: rate limits and servers that are busy or restarting
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
#: the longest backoff between two tries, in seconds
MAX_BACKOFF_S = 30.0


class EndpointError(AlignError):
    """The endpoint cannot be used, or answered what is no completion."""


@dataclass(frozen=True)
class Endpoint:
    """Where the teacher is and how to sample from it (checked by align/generate.py)."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    api: str = "auto"
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    concurrency: int = 8
    timeout_s: float = 60.0
    total_timeout_s: float | None = None
    max_retries: int = 3
    preflight_timeout_s: float = 5.0

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def preflight(endpoint: Endpoint) -> list[str]:
    """Ask `GET /models` once, with a short timeout; raise EndpointError when the server does
    not answer, refuses the key or does not serve the model. Returns the models it serves
    (empty when the server does not list them)."""
    import httpx

    url = f"{endpoint.url}/models"
    where = f"generator.base_url={endpoint.base_url}"
    try:
        response = httpx.get(url, headers=endpoint.headers(),
                             timeout=endpoint.preflight_timeout_s)
    except httpx.TimeoutException:
        raise EndpointError(f"{where}: no answer to GET /models within "
                            f"{endpoint.preflight_timeout_s:g} s (generator.preflight_timeout_s); "
                            "is the server up and the URL right?") from None
    except httpx.HTTPError as exc:
        raise EndpointError(f"{where} is unreachable ({_one_line(exc)}); start the server or "
                            "fix the URL (it ends with /v1 for OpenAI-compatible servers)") from None
    if response.status_code in (401, 403):
        raise EndpointError(f"{where} refused the API key (HTTP {response.status_code}): check "
                            "the variable generator.api_key_env names")
    if response.status_code == 404:
        if not endpoint.url.endswith("/v1") and _answers(f"{endpoint.url}/v1/models", endpoint):
            raise EndpointError(f"{where}: GET /models is not found there, but "
                                f"{endpoint.url}/v1/models answers: set "
                                f"generator.base_url={endpoint.url}/v1")
        log.warning("%s has no GET /models; the model name is not checked before sampling", where)
        return []
    if response.status_code >= 400:
        raise EndpointError(f"{where}: GET /models answered HTTP {response.status_code}: "
                            f"{_excerpt(response.text)}")
    try:
        listed = [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise EndpointError(f"{where}: GET /models did not answer an OpenAI model list "
                            f"({{'data': [{{'id': ...}}]}}): {_excerpt(response.text)}; is "
                            "this an OpenAI-compatible server (the URL usually ends with /v1)?"
                            ) from None
    if listed and endpoint.model not in listed:
        raise EndpointError(f"generator.model={endpoint.model!r} is not served at "
                            f"{endpoint.base_url}; it serves: {', '.join(listed[:10])}")
    return listed


def _answers(url: str, endpoint: Endpoint) -> bool:
    """Whether `url` answers as an OpenAI model list would (200, or a refused key)."""
    import httpx

    try:
        status = httpx.get(url, headers=endpoint.headers(),
                           timeout=endpoint.preflight_timeout_s).status_code
    except httpx.HTTPError:
        return False
    return status in (200, 401, 403)


class EndpointSampler:
    """Samples `n` completions per prompt from an endpoint, `concurrency` requests at a time,
    within the job's deadline (counted from construction)."""

    def __init__(self, endpoint: Endpoint, seed: int | None = None):
        import httpx

        self.endpoint = endpoint
        self.seed = seed
        self.deadline = (time.monotonic() + endpoint.total_timeout_s
                         if endpoint.total_timeout_s else None)
        limits = httpx.Limits(max_connections=endpoint.concurrency,
                              max_keepalive_connections=endpoint.concurrency)
        self.client = httpx.Client(headers=endpoint.headers(), limits=limits)
        self.pool = ThreadPoolExecutor(endpoint.concurrency, thread_name_prefix="endpoint")
        self.stop = threading.Event()

    def close(self) -> None:
        """Stop: queued requests are dropped, requests in flight end without another try
        (each within its timeout), then the connections close. Closing them under a request
        in flight would leave its thread blocked on a dead socket until its timeout, and the
        process waiting for that thread at exit."""
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    # ------------------------------------------------------------------ requests
    def _remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _deadline_error(self, index: int, cause: str = "") -> EndpointError:
        """The deadline reached, or (`cause`: why the next try would start past it) about to
        be: the message names what made the prompt wait, not only the deadline."""
        what = (f"prompt {index}: {cause}, past generator.total_timeout_s="
                f"{self.endpoint.total_timeout_s:g} s" if cause else
                f"generator.total_timeout_s={self.endpoint.total_timeout_s:g} s reached while "
                f"prompt {index} was waiting for the endpoint")
        return EndpointError(f"{what}; the prompts finished so far are kept: run again into "
                             "the same run folder to continue")

    def request(self, index: int, prompt: Any) -> list[str]:
        """The `n` completions of one prompt (`index`: its row, for messages and the seed)."""
        import httpx

        ep = self.endpoint
        path, body = self._body(index, prompt)
        url = f"{ep.url}{path}"
        problem = ""
        for attempt in range(ep.max_retries + 1):
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                raise self._deadline_error(index)
            if self.stop.is_set():
                raise EndpointError("stopped")
            timeout = ep.timeout_s if remaining is None else min(ep.timeout_s, remaining)
            wait = RetryWait(min(0.5 * 2 ** attempt, MAX_BACKOFF_S))
            try:
                response = self.client.post(url, json=body, timeout=timeout)
            except httpx.TimeoutException:
                if self._remaining() is not None and self._remaining() <= 0:
                    raise self._deadline_error(index) from None
                problem = f"no answer within generator.timeout_s={ep.timeout_s:g} s"
            except httpx.HTTPError as exc:
                problem = f"connection failed ({_one_line(exc)})"
            else:
                if response.status_code < 400:
                    return self._completions(index, path, response)
                problem = f"HTTP {response.status_code}: {_excerpt(response.text)}"
                if response.status_code not in RETRY_STATUS:
                    raise EndpointError(f"POST {path} for prompt {index} failed with {problem}")
                wait = RetryWait.after(response.headers, wait.seconds, ep.timeout_s,
                                       "generator.timeout_s")
                if wait.asked is not None:
                    problem += f" (Retry-After: {wait.asked:g} s)"
            if self.stop.is_set():  # another prompt failed: no more tries, nothing logged
                raise EndpointError("stopped")
            if attempt == ep.max_retries:
                break
            remaining = self._remaining()
            if remaining is not None and wait.seconds >= remaining:
                raise self._deadline_error(index, f"{problem}; the next try would start "
                                                  f"after {wait.describe()}")
            log.info("prompt %d: %s; trying again in %s (%d/%d)", index, problem,
                     wait.describe(), attempt + 1, ep.max_retries)
            if self.stop.wait(wait.seconds):
                raise EndpointError("stopped")
        raise EndpointError(f"POST {path} for prompt {index} failed {ep.max_retries + 1} times, "
                            f"the last with {problem} (generator.max_retries={ep.max_retries})")

    def _body(self, index: int, prompt: Any) -> tuple[str, dict]:
        ep = self.endpoint
        chat = not isinstance(prompt, str)
        if chat and ep.api == "completions":
            raise EndpointError(f"prompt {index} is a list of chat messages but "
                                "generator.api=completions sends plain text: set "
                                "generator.api=chat (or auto)")
        body: dict[str, Any] = {"model": ep.model, "n": ep.n, "temperature": ep.temperature,
                                "top_p": ep.top_p, "max_tokens": ep.max_tokens}
        if self.seed is not None:
            body["seed"] = self.seed + index
        if chat or ep.api == "chat":
            messages = prompt if chat else [{"role": "user", "content": prompt}]
            return "/chat/completions", {**body, "messages": messages}
        return "/completions", {**body, "prompt": prompt}

    def _completions(self, index: int, path: str, response) -> list[str]:
        where = f"POST {path} for prompt {index}"
        try:
            answer = response.json()
        except (ValueError, json.JSONDecodeError):
            raise EndpointError(f"{where}: the answer is not JSON: "
                                f"{_excerpt(response.text)!r}") from None
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise EndpointError(f"{where}: the answer has no 'choices' list: "
                                f"{_excerpt(json.dumps(answer))}")
        if len(choices) != self.endpoint.n:
            raise EndpointError(f"{where}: field 'choices' holds {len(choices)} completions for "
                                f"generator.n={self.endpoint.n} (does the server support n?)")
        chat = path == "/chat/completions"
        ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        texts = []
        for i, choice in enumerate(ordered):
            text = None
            if isinstance(choice, dict):
                text = ((choice.get("message") or {}).get("content") if chat
                        else choice.get("text"))
                if chat and not isinstance(choice.get("message"), dict):
                    text = None
            if not isinstance(text, str):
                name = f"choices[{i}].message.content" if chat else f"choices[{i}].text"
                raise EndpointError(f"{where}: field '{name}' is not a string: "
                                    f"{_excerpt(json.dumps(choice))}")
            texts.append(text.strip())
        return texts

    # ------------------------------------------------------------------ batches
    def sample(self, prompts: Sequence[Any], indices: Sequence[int],
               on_done: Callable[[int], None] | None = None) -> list[list[str]]:
        """`n` completions for each prompt (`indices`: their rows), concurrently. The first
        failure stops the rest and is raised."""
        futures = {self.pool.submit(self.request, i, p): k
                   for k, (i, p) in enumerate(zip(indices, prompts))}
        results: list[list[str] | None] = [None] * len(prompts)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    self.stop.set()  # the prompts in flight end without another try
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                results[futures[future]] = future.result()
                if on_done is not None:
                    on_done(self.endpoint.n)
        return results  # type: ignore[return-value]


def api_key_from_env(name: str | None) -> str | None:
    """The key in the environment variable `name` (None: no key)."""
    return os.environ.get(name) if name else None
