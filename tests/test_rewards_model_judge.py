"""reward_model on a tiny sequence classifier built here; llm_judge against a real HTTP server on
loopback (started by the test, in a thread)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rewards import REGISTRY, build_rewards
from rewards.judge import JudgeError, JudgeUnavailableError


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory: pytest.TempPathFactory, tiny_base_path) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_path)
    config = AutoConfig.from_pretrained(tiny_base_path, num_labels=1)
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_config(config)
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_reward_model_batched_equals_unbatched(tiny_rm: str) -> None:
    texts = ["42", "no idea at all, sorry", "7", "the answer is 1234567"]
    prompts = ["1+41=", "what is it?", "3+4=", "big number?"]
    fn = REGISTRY["reward_model"]
    one = fn(texts, model=tiny_rm, prompts=prompts, batch_size=1)
    many = fn(texts, model=tiny_rm, prompts=prompts, batch_size=4)
    assert many == pytest.approx(one, abs=1e-5)
    assert len(set(round(s, 4) for s in one)) == 4  # it really scores: different inputs differ
    chat = fn([[{"role": "assistant", "content": t}] for t in texts], model=tiny_rm,
              prompts=[[{"role": "user", "content": p}] for p in prompts], batch_size=3)
    assert len(chat) == 4 and all(isinstance(s, float) for s in chat)


def test_reward_model_through_the_registry(tiny_rm: str) -> None:
    (rm,), _ = build_rewards({"rm": {"fn": "reward_model", "kwargs": {"model": tiny_rm}}})
    direct = REGISTRY["reward_model"](["a"], model=tiny_rm, prompts=["q"])
    assert rm(completions=["a"], prompts=["q"]) == pytest.approx(direct)


class Judge(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible /v1/chat/completions: replies with the number of 'good' in the
    prompt, fails the first `failures` requests with 503, records what it received."""

    failures = 0
    received: list = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.path, self.headers.get("Authorization"), body))
        if type(self).failures > 0:
            type(self).failures -= 1
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        if body["model"] == "missing":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": "model not found"}')
            return
        content = body["messages"][0]["content"]
        reply = "no score" if "unsure" in content else f"Score: {content.count('good') * 2}/10"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def judge_url():
    Judge.failures, Judge.received = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


RUBRIC = "Q: {prompt}\nA: {completion}\nGold: {solution}"


def test_llm_judge_scores(judge_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    (judge,), _ = build_rewards({"judge": {"fn": "llm_judge", "kwargs": {
        "base_url": judge_url, "model": "m", "rubric": RUBRIC, "api_key_env": "JUDGE_KEY"}}})
    completions = ["good", "good good good", [{"role": "assistant", "content": "bad"}], "unsure"]
    scores = judge(completions=completions, prompts=["q"] * 4, solution=["s"] * 4)
    assert scores == [0.2, 0.6, 0.0, None]
    path, auth, body = Judge.received[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["messages"][0]["content"] in {f"Q: q\nA: {c}\nGold: s" for c in ("good", "good good good", "bad", "unsure")}


def test_llm_judge_retries_then_succeeds(judge_url: str) -> None:
    Judge.failures = 2
    scores = REGISTRY["llm_judge"](["good"], base_url=judge_url, model="m", backoff_s=0.01,
                                   max_retries=2, prompts=["q"])
    assert scores == [0.2] and len(Judge.received) == 3


def test_llm_judge_errors(judge_url: str) -> None:
    Judge.failures = 10
    # a server that answers "busy" is up: it is not called unreachable
    with pytest.raises(JudgeUnavailableError,
                       match=r"kept asking to come back later, 2 attempts \(last: HTTP 503"):
        REGISTRY["llm_judge"](["x"], base_url=judge_url, model="m", backoff_s=0.01, max_retries=1,
                              prompts=["q"])
    Judge.failures = 0
    with pytest.raises(JudgeError, match="HTTP 404.*model not found"):
        REGISTRY["llm_judge"](["x"], base_url=judge_url, model="missing", prompts=["q"])
    with pytest.raises(JudgeError, match="NOT_SET_ANYWHERE"):
        REGISTRY["llm_judge"](["x"], base_url=judge_url, model="m", api_key_env="NOT_SET_ANYWHERE",
                              prompts=["q"])


def test_llm_judge_unreachable_names_the_url() -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeUnavailableError, match=rf"{url}/chat/completions unreachable .*vllm serve"):
        REGISTRY["llm_judge"](["x"], base_url=url, model="m", max_retries=1, backoff_s=0.01,
                              timeout_s=2, prompts=["q"])
