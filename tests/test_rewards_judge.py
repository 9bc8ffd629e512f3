"""llm_judge against a real loopback HTTP server that misbehaves: it hangs, trickles its answer a
byte at a time, asks to come back later (429 + Retry-After), or answers with something that is not
JSON. Every case ends within seconds (the per-request wall-clock deadline and the per-call total
deadline), never the hours the old per-read timeout and per-sample retries allowed.

Timing assertions are generous upper bounds ("bounded, not hours"); the one lower bound checks the
server's own clock between two requests (Retry-After was honoured)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from rewards import REGISTRY, BoundReward
from rewards.judge import JudgeUnavailableError

OK_BODY = json.dumps({"choices": [{"message": {"role": "assistant", "content": "7"}}]}).encode()


class Misbehaving(BaseHTTPRequestHandler):
    """``mode`` decides what it does; ``seen`` holds the server's clock at each request."""

    mode: ClassVar[str] = "ok"
    seen: ClassVar[list[float]] = []
    released: ClassVar[threading.Event] = threading.Event()  # set at teardown: the hanging handlers return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        cls.seen.append(time.monotonic())
        if cls.mode == "hang":
            cls.released.wait(120)
            return
        if cls.mode == "trickle":  # a valid answer, one byte every 0.2 s (~12 s in all)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(OK_BODY)}\r\n\r\n".encode()
            for i in range(len(head + OK_BODY)):
                if cls.released.wait(0.2):
                    return
                try:
                    self.wfile.write((head + OK_BODY)[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return
            return
        if cls.mode.startswith("429"):  # "429:<seconds>:<times>" then OK
            _, seconds, times = cls.mode.split(":")
            if len(cls.seen) <= int(times):
                self.send_response(429)
                self.send_header("Retry-After", seconds)
                self.end_headers()
                self.wfile.write(b"slow down")
                return
        body = b"<html>502 from a proxy</html>" if cls.mode == "not json" else OK_BODY
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    Misbehaving.mode, Misbehaving.seen = "ok", []
    Misbehaving.released.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    Misbehaving.released.set()
    httpd.shutdown()
    httpd.server_close()


def judge(url: str, n: int = 1, **kwargs) -> list:
    settings = {"timeout_s": 1, "total_timeout_s": 4, "max_retries": 3, "backoff_s": 0.1} | kwargs
    return REGISTRY["llm_judge"](["answer"] * n, base_url=url, model="m", rubric="{completion}",
                                 **settings)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("hang", r"no complete answer within \d\.\d s"),
        ("trickle", r"no complete answer within \d\.\d s"),  # each read is fast, the request is not
        ("not json", "not JSON"),
        ("429:3600:99", r"HTTP 429: slow down \(Retry-After: 3600 s\)"),  # asked again after timeout_s
    ],
)
def test_a_misbehaving_endpoint_costs_seconds(server: str, mode: str, message: str) -> None:
    Misbehaving.mode = mode
    started = time.monotonic()
    with pytest.raises(JudgeUnavailableError, match=message):
        judge(server, n=6)
    assert time.monotonic() - started < 10  # total_timeout_s=4, plus slack; not hours


def test_the_total_deadline_is_shared_by_every_sample(server: str) -> None:
    # 40 samples at 1 s per attempt and 4 attempts each: ~40 s without a shared deadline.
    Misbehaving.mode = "hang"
    started = time.monotonic()
    with pytest.raises(JudgeUnavailableError):
        judge(server, n=40, concurrency=4, total_timeout_s=3)
    assert time.monotonic() - started < 8


def test_retry_after_is_honoured(server: str) -> None:
    Misbehaving.mode = "429:1:1"
    assert judge(server, backoff_s=0.01) == [0.7]
    first, second = Misbehaving.seen
    assert second - first >= 0.9  # waited as asked, not backoff_s


def test_an_unavailable_judge_fills_the_batch_at_once(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under on_error: none the batch is not retried sample by sample (which multiplied the wait by
    the number of samples): one outage, one total deadline, one warning."""
    Misbehaving.mode = "hang"
    bound = BoundReward("llm_judge", {"base_url": server, "model": "m", "rubric": "{completion}",
                                      "timeout_s": 1,
                                      "total_timeout_s": 3, "max_retries": 2, "backoff_s": 0.1},
                        name="judge", on_error="none")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        scores = bound(completions=["a"] * 16)
    assert scores == [None] * 16
    assert time.monotonic() - started < 8
    assert len(Misbehaving.seen) <= 8 * 3  # at most concurrency x attempts, never 16 x 3 again
    assert sum("unavailable for the whole batch of 16" in r.message for r in caplog.records) == 1
    assert bound.errors == 16


def test_a_healthy_endpoint_still_scores(server: str) -> None:
    assert judge(server, n=3) == [0.7, 0.7, 0.7]


def test_a_retry_after_of_an_hour_is_cut_to_timeout_s(server: str) -> None:
    """A rate limiter asks for an hour twice, then answers: the judge asks again after
    timeout_s each time instead of giving up (or, with no deadline, sleeping an hour)."""
    Misbehaving.mode = "429:3600:2"
    assert judge(server, timeout_s=0.5, total_timeout_s=60, max_retries=3) == [0.7]
    assert len(Misbehaving.seen) == 3


@pytest.mark.parametrize("header", ["inf", "nan", "-5"])
def test_a_retry_after_that_is_no_wait_falls_back_to_the_backoff(server: str, header: str) -> None:
    Misbehaving.mode = f"429:{header}:1"
    assert judge(server, backoff_s=0.01, total_timeout_s=60) == [0.7]
    assert len(Misbehaving.seen) == 2


def test_a_deadline_that_cuts_a_retry_short_names_the_status_and_the_retry_after(server: str) -> None:
    Misbehaving.mode = "429:3600:99"
    with pytest.raises(JudgeUnavailableError) as info:
        judge(server, timeout_s=5, total_timeout_s=2, max_retries=3)
    message = str(info.value)
    assert "HTTP 429: slow down (Retry-After: 3600 s); the next attempt would start past " \
           "total_timeout_s=2 s (it waits 5.0 s: Retry-After asked 3600 s, at most timeout_s=5 s " \
           "is waited)" in message
    assert "Is the server running" not in message and len(Misbehaving.seen) == 1


def test_a_server_that_keeps_asking_to_wait_is_not_called_unreachable(server: str) -> None:
    Misbehaving.mode = "429:0:99"
    with pytest.raises(JudgeUnavailableError, match="kept asking to come back later, 3 attempts"
                       ) as info:
        judge(server, max_retries=2, total_timeout_s=60)
    assert "unreachable" not in str(info.value) and len(Misbehaving.seen) == 3
