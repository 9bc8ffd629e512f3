"""align/generate.py: the model path on the tiny SFT model (files, counts, training on them as
they are, resuming), and the endpoint path against a real loopback OpenAI-compatible server
(success, timeouts, deadlines, 429 + Retry-After, malformed answers, unreachable servers, the
API key), and the template x topics prompts."""

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from align.errors import AlignError, ConfigError
from align.run.conf import CONF_DIR, register

register()
REPO = Path(__file__).resolve().parent.parent
PROMPTS = 24


def compose_generate(out, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("generate", overrides=[f"output_dir={out}", *overrides])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


MODEL = [f"prompts.max_prompts={PROMPTS}", "generator.batch_size=8", "generator.n=4",
         "generator.max_tokens=5"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_sft_path):
    from align.generate import run

    out = tmp_path_factory.mktemp("generate") / "run"
    stats = run(compose_generate(out, *MODEL))
    return out, stats


def test_model_path_writes_four_consistent_files(generated):
    out, stats = generated
    samples = read_jsonl(out / "samples.jsonl")
    sft, pairs = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "pairs.jsonl")
    assert json.loads((out / "stats.json").read_text()) == stats
    assert not (out / "partial").exists() and (out / "config.yaml").is_file()
    assert stats["prompts"] == PROMPTS and stats["samples"] == len(samples) == PROMPTS * 4
    assert [(s["prompt_index"], s["sample_index"]) for s in samples] == [
        (i, j) for i in range(PROMPTS) for j in range(4)]
    # every sample scored by the accuracy reward: 1 exactly when the answer is the solution
    for s in samples:
        assert s["rewards"]["accuracy"] == float(s["completion"] == s["solution"]) == s["reward"]
    correct = {s["prompt_index"] for s in samples if s["reward"] == 1.0}
    assert stats["kept"] == len(sft) == len(correct)  # max_per_prompt=1, threshold 1
    drops = stats["dropped"]["rejection_sampling"]
    assert stats["kept"] + sum(drops.values()) == stats["samples"]
    assert all(r["completion"] == r["solution"] for r in sft)
    # a pair for each prompt with a right and a wrong answer, none for the others
    mixed = {i for i in correct if any(s["reward"] == 0.0 for s in samples
                                       if s["prompt_index"] == i)}
    assert stats["pairs"] == len(pairs) == len(mixed)
    assert stats["pairs"] + sum(stats["dropped"]["pairs"].values()) == PROMPTS
    assert all(p["chosen"] == p["solution"] != p["rejected"] for p in pairs)
    hist = stats["histograms"]
    assert hist["reward"]["n"] == hist["accuracy"]["n"] == PROMPTS * 4
    assert sum(hist["accuracy"]["counts"]) == PROMPTS * 4
    assert hist["accuracy"]["mean"] == pytest.approx(
        sum(s["reward"] for s in samples) / len(samples))
    assert stats["samples_per_s"] > 0
    # the warm-up model gets some right and some wrong: both files have rows
    assert 0 < len(sft) < PROMPTS and pairs


def test_pairs_take_several_mistakes_a_prompt_likeliest_first(tmp_path, tiny_sft_path):
    from collections import Counter

    from align.generate import run

    out = tmp_path / "run"
    stats = run(compose_generate(out, *MODEL, "generator.n=8", "select.pairs_per_prompt=3",
                                 "select.ties=most_drawn"))
    samples, pairs = read_jsonl(out / "samples.jsonl"), read_jsonl(out / "pairs.jsonl")
    assert stats["select"]["pairs_per_prompt"] == 3 and stats["select"]["ties"] == "most_drawn"
    by_prompt: dict = {}
    for pair in pairs:
        by_prompt.setdefault(json.dumps(pair["prompt"]), []).append(pair["rejected"])
    assert stats["pairs"] == len(pairs) and max(map(len, by_prompt.values())) > 1
    for prompt, rejected in by_prompt.items():
        wrong = Counter(s["completion"].strip().lower() for s in samples
                        if json.dumps(s["prompt"]) == prompt and s["reward"] == 0.0
                        and s["completion"].strip())
        # up to 3 distinct mistakes a prompt, the one drawn most often first
        assert len(rejected) == min(3, len(wrong)) == len(set(rejected))
        counts = [wrong[r.strip().lower()] for r in rejected]
        assert counts == sorted(counts, reverse=True) and counts[0] == max(wrong.values())


@pytest.mark.slow
def test_the_files_train_as_they_are(generated, tmp_path):
    out, _ = generated
    common = ["trainer.max_steps=2", "trainer.per_device_train_batch_size=4", "logger=none",
              "trainer.save_strategy=no", "heldout.enabled=false"]
    for script, name in (("sft", "sft.jsonl"), ("dpo", "pairs.jsonl")):
        done = subprocess.run(
            [sys.executable, str(REPO / "align" / f"{script}.py"), "data=local",
             f"data.path={out / name}", *common, f"hydra.run.dir={script}"],
            check=False, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((tmp_path / script / "metrics.json").read_text())
        assert metrics["train"]["global_step"] == 2


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(generated, tmp_path):
    import shutil

    out, _ = generated
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    done = subprocess.run(
        [accelerate, "launch", "--config_file", str(REPO / "launch" / "ddp.yaml"),
         "--num_processes", "2", str(REPO / "align" / "generate.py"), *MODEL,
         "hydra.run.dir=run"],
        check=False, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("samples.jsonl", "sft.jsonl", "pairs.jsonl"):
        assert (tmp_path / "run" / name).read_text() == (out / name).read_text(), name
    assert json.loads((tmp_path / "run" / "stats.json").read_text())["samples_drawn"] == 96


def test_a_killed_model_run_resumes_to_the_same_files(generated, tmp_path, tiny_sft_path):
    """A launch killed after its first batch (its shard: batch 0 and half a line of batch 1)
    continues with the other prompts only, and writes what the uninterrupted run wrote."""
    from align.generate import run

    out, _ = generated
    samples = (out / "samples.jsonl").read_text().splitlines()
    folder = tmp_path / "run"
    (folder / "partial").mkdir(parents=True)
    (folder / "config.yaml").write_text((out / "config.yaml").read_text())
    first_batch = samples[:8 * 4]
    (folder / "partial" / "rank-0.jsonl").write_text(
        "\n".join(first_batch) + "\n" + samples[8 * 4][:20])
    again = run(compose_generate(folder, *MODEL))
    assert again["resumed_prompts"] == 8 and again["samples_drawn"] == (PROMPTS - 8) * 4
    for name in ("samples.jsonl", "sft.jsonl", "pairs.jsonl"):
        assert (folder / name).read_text() == (out / name).read_text(), name
    # other sampling settings in the same folder would mix two data sets: refused
    with pytest.raises(ConfigError, match="generator.temperature"):
        run(compose_generate(folder, *MODEL, "generator.temperature=0.5"))


# ------------------------------------------------------------------ the loopback teacher


class Teacher:
    """A real OpenAI-compatible HTTP server on a loopback port. `mode` decides the answers:
    ok (the right sum, or `wrong` every other sample), hang, 429 (the first `fail` requests,
    with Retry-After), badjson, shape, fail_after (HTTP 400 once `fail` requests were served),
    fail_first (HTTP 400 for the first request, 503 after a second for the others)."""

    def __init__(self):
        self.mode, self.fail, self.requests, self.auth, self.times = "ok", 0, [], [], []
        self.retry_after = "1"  # the Retry-After of mode 429's answers
        self.release = threading.Event()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body, headers=()):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                teacher.auth.append(self.headers.get("Authorization"))
                if self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": [{"id": "teacher"}]})
                else:
                    self.reply(404, {"error": "no such path"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                teacher.auth.append(self.headers.get("Authorization"))
                teacher.requests.append(body)
                teacher.times.append(time.monotonic())
                count = len(teacher.requests)
                mode = teacher.mode
                if mode == "hang":
                    teacher.release.wait(30)
                    return
                if mode == "429" and count <= teacher.fail:
                    return self.reply(429, {"error": "slow down"},
                                      [("Retry-After", teacher.retry_after)])
                if mode == "fail_after" and count > teacher.fail:
                    return self.reply(400, {"error": {"message": "quota exhausted"}})
                if mode == "fail_first":
                    if count == 1:
                        return self.reply(400, {"error": {"message": "prompt too long"}})
                    time.sleep(1)
                    return self.reply(503, {"error": {"message": "overloaded"}})
                if mode == "badjson":
                    return self.reply(200, b"{not json")
                if mode == "shape":
                    return self.reply(200, {"choices": [{"index": 0, "message": {"text": "1"}}]
                                            * body["n"]})
                text = (body["messages"][-1]["content"] if "messages" in body
                        else body["prompt"])
                a, b = re.search(r"(\d+)\+(\d+)", text).groups()
                answers = [str(int(a) + int(b) + (i % 2)) for i in range(body["n"])]
                key = "message" if "messages" in body else "text"
                self.reply(200, {"choices": [
                    {"index": i, key: {"role": "assistant", "content": t} if key == "message"
                     else t} for i, t in enumerate(answers)]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def teacher(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback-secret-123456")
    server = Teacher()
    yield server
    server.close()


def endpoint_overrides(teacher, *more):
    return ["generator.backend=endpoint", f"generator.base_url={teacher.url}",
            "generator.model=teacher", "generator.n=4", "generator.batch_size=4",
            "prompts.max_prompts=12", "generator.concurrency=4", *more]


def test_endpoint_samples_scores_and_keeps_the_key_out_of_every_file(teacher, tmp_path):
    from align.generate import run

    stats = run(compose_generate(tmp_path, *endpoint_overrides(teacher)))
    # two right and two wrong answers per prompt: one kept row and one pair per prompt
    assert (stats["samples"], stats["kept"], stats["pairs"]) == (48, 12, 12)
    assert stats["dropped"]["rejection_sampling"]["below_threshold"] == 24
    assert len(teacher.requests) == 12 and all(r["n"] == 4 for r in teacher.requests)
    assert all("messages" in r for r in teacher.requests)  # chat prompts -> chat completions
    assert set(teacher.auth) == {"Bearer sk-loopback-secret-123456"}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert "sk-loopback-secret" not in path.read_text(), path
    assert "OPENAI_API_KEY" in (tmp_path / "config.yaml").read_text()  # the name, not the key


def test_plain_prompts_go_to_completions_and_templates_fill_topics(teacher, tmp_path):
    from align.generate import run

    (tmp_path / "tmpl.txt").write_text("What is {topic}? Answer with a number.")
    template = [f"prompts.template={tmp_path / 'tmpl.txt'}", "prompts.topics=[1+2,30+4]",
                "prompts.chat=false"]
    # the accuracy reward reads a solution column, which template rows do not have: a named
    # error with the fix, unless the reward's on_error says how to score what it cannot
    with pytest.raises(AlignError, match=r"accuracy\(\) missing .* 'solution'.* on_error"):
        run(compose_generate(tmp_path / "a", *endpoint_overrides(teacher, *template)))
    teacher.requests = []
    run(compose_generate(tmp_path / "a", *endpoint_overrides(
        teacher, *template, "rewards.accuracy.on_error=none")))
    # one request a prompt (n samples each); concurrent requests arrive in any order
    assert sorted(r["prompt"] for r in teacher.requests) == [
        "What is 1+2? Answer with a number.", "What is 30+4? Answer with a number."]
    rows = read_jsonl(tmp_path / "a" / "samples.jsonl")
    assert {r["topic"] for r in rows} == {"1+2", "30+4"}
    assert all(r["reward"] is None for r in rows)
    with pytest.raises(ConfigError, match="no {topic} placeholder"):
        (tmp_path / "bad.txt").write_text("no placeholder here")
        run(compose_generate(tmp_path / "b", *endpoint_overrides(
            teacher, f"prompts.template={tmp_path / 'bad.txt'}", "prompts.topics=[a]")))


def test_a_hanging_endpoint_hits_the_request_timeout_and_the_deadline(teacher, tmp_path):
    from align.generate import run

    teacher.mode = "hang"
    started = time.monotonic()
    with pytest.raises(AlignError, match="no answer within generator.timeout_s=1"):
        run(compose_generate(tmp_path / "a", *endpoint_overrides(
            teacher, "generator.timeout_s=1", "generator.max_retries=1")))
    assert time.monotonic() - started < 8
    started = time.monotonic()
    with pytest.raises(AlignError, match="total_timeout_s=1.5 s reached"):
        run(compose_generate(tmp_path / "b", *endpoint_overrides(
            teacher, "generator.timeout_s=30", "generator.total_timeout_s=1.5")))
    assert time.monotonic() - started < 6


def test_429_with_retry_after_is_honoured_then_succeeds(teacher, tmp_path):
    from align.generate import run

    teacher.mode, teacher.fail = "429", 2
    stats = run(compose_generate(tmp_path, *endpoint_overrides(
        teacher, "generator.concurrency=1", "prompts.max_prompts=2")))
    assert stats["samples"] == 8 and len(teacher.requests) == 4
    assert teacher.times[1] - teacher.times[0] >= 0.95  # waited what Retry-After asked
    assert teacher.times[2] - teacher.times[1] >= 0.95


def test_a_retry_after_of_an_hour_is_cut_to_the_request_timeout(teacher, tmp_path):
    """A rate limiter answers every request `429, Retry-After: 3600`. With no total deadline
    (the default) each wait is cut to generator.timeout_s, and the run ends after
    generator.max_retries naming the status and the wait the server asked for."""
    teacher.mode, teacher.fail, teacher.retry_after = "429", 10**6, "3600"
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "align" / "generate.py"), *endpoint_overrides(
            teacher, "generator.timeout_s=1", "generator.max_retries=2", "generator.concurrency=1",
            "generator.batch_size=1", "prompts.max_prompts=1"), "hydra.run.dir=run"],
        check=False, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "failed 3 times, the last with HTTP 429" in last, done.stderr[-2000:]
    assert "(Retry-After: 3600 s)" in last and "Traceback" not in done.stderr
    assert len(teacher.requests) == 3


def test_a_deadline_that_cuts_a_retry_short_names_the_status_and_the_retry_after(teacher,
                                                                                 tmp_path):
    """The next try would start past generator.total_timeout_s: the error says why the prompt
    had to wait (HTTP 429, the Retry-After asked, the cap), not only that time ran out."""
    from align.generate import run

    teacher.mode, teacher.fail, teacher.retry_after = "429", 10**6, "3600"
    with pytest.raises(AlignError) as info:
        run(compose_generate(tmp_path, *endpoint_overrides(
            teacher, "generator.timeout_s=20", "generator.total_timeout_s=10",
            "generator.concurrency=1", "generator.batch_size=1", "prompts.max_prompts=1")))
    message = str(info.value)
    assert message.startswith("prompt 0: HTTP 429: ") and "(Retry-After: 3600 s)" in message
    assert "Retry-After asked 3600 s, at most generator.timeout_s=20 s is waited" in message
    assert "past generator.total_timeout_s=10 s" in message
    assert len(teacher.requests) == 1


def test_a_resumed_endpoint_run_may_reach_the_model_another_way(teacher, tmp_path, monkeypatch):
    """The same model served at another address, with another key variable, other timeouts,
    retries and concurrency: how the sampler is reached, not what it samples. Resuming takes
    them; a setting that changes the samples is still refused."""
    from align.generate import run

    teacher.mode, teacher.fail = "fail_after", 8
    with pytest.raises(AlignError, match="quota exhausted"):
        run(compose_generate(tmp_path, *endpoint_overrides(teacher, "generator.concurrency=1")))
    moved = Teacher()
    monkeypatch.setenv("TEACHER_KEY", "sk-moved-secret-654321")
    try:
        stats = run(compose_generate(tmp_path, *[
            o.replace(teacher.url, moved.url) for o in endpoint_overrides(
                teacher, "generator.api_key_env=TEACHER_KEY", "generator.timeout_s=30",
                "generator.total_timeout_s=600", "generator.max_retries=5",
                "generator.concurrency=2", "generator.preflight_timeout_s=9", "resume=true")]))
    finally:
        moved.close()
    assert stats["resumed_prompts"] == 8 and len(moved.requests) == 4
    assert set(moved.auth) == {"Bearer sk-moved-secret-654321"}
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert sorted({s["prompt_index"] for s in samples}) == list(range(12)) and len(samples) == 48
    with pytest.raises(ConfigError, match=r"other settings \(generator.temperature\)"):
        run(compose_generate(tmp_path, *endpoint_overrides(
            teacher, "generator.temperature=0.5", "resume=true")))


@pytest.mark.parametrize("mode,message", [
    ("badjson", "the answer is not JSON"),
    ("shape", r"field 'choices\[0\].message.content' is not a string"),
])
def test_malformed_answers_are_named_errors(teacher, tmp_path, mode, message):
    from align.generate import run

    teacher.mode = mode
    with pytest.raises(AlignError, match=message):
        run(compose_generate(tmp_path, *endpoint_overrides(teacher)))


def test_a_stopped_endpoint_run_resumes_without_duplicates(teacher, tmp_path):
    """Stopped by the server after two batches; the rerun asks only for the other prompts."""
    from align.generate import run

    teacher.mode, teacher.fail = "fail_after", 8
    with pytest.raises(AlignError, match="quota exhausted"):
        run(compose_generate(tmp_path, *endpoint_overrides(teacher, "generator.concurrency=1")))
    assert len(read_jsonl(tmp_path / "partial" / "rank-0.jsonl")) == 8 * 4
    first = [r["messages"][-1]["content"] for r in teacher.requests[:8]]
    teacher.mode, teacher.requests = "ok", []
    stats = run(compose_generate(tmp_path, *endpoint_overrides(teacher, "resume=true")))
    # (a request of the stopped launch may still arrive after it stopped: count prompts)
    again = {r["messages"][-1]["content"] for r in teacher.requests}
    assert len(again) == 4 and not again & set(first)
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert stats["resumed_prompts"] == 8 and len(samples) == 48
    assert sorted({s["prompt_index"] for s in samples}) == list(range(12))


def test_unreachable_endpoint_fails_in_seconds_in_one_line(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(REPO / "align" / "generate.py"), "generator.backend=endpoint",
         f"generator.base_url=http://127.0.0.1:{port}/v1", "generator.model=teacher",
         "generator.api_key_env=null", "hydra.run.dir=run"],
        check=False, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: generator.base_url=") and "unreachable" in lines[-1]
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()
    assert time.monotonic() - started < 30  # python start-up included; the check itself is instant


def test_a_failed_prompt_stops_the_others_without_another_try(teacher, tmp_path, caplog):
    """One prompt fails at once while three are in flight: the run ends when those have
    answered, without another try and without cutting their connections (a closed socket
    under a request in flight leaves its thread blocked, and the process waits for it)."""
    from align.generate import run

    caplog.set_level(logging.INFO, logger="align.models.endpoint")
    teacher.mode = "fail_first"
    started = time.monotonic()
    with pytest.raises(AlignError, match=r"prompt \d+ failed with HTTP 400: .*prompt too long"):
        run(compose_generate(tmp_path, *endpoint_overrides(
            teacher, "generator.concurrency=4", "generator.batch_size=12")))
    assert time.monotonic() - started >= 1  # the others' answers were waited for
    time.sleep(1.5)  # anything still running would have logged by now
    endpoint_log = [r.getMessage() for r in caplog.records if r.name == "align.models.endpoint"]
    assert not [m for m in endpoint_log if "trying again" in m], endpoint_log
    asked = [r["messages"][-1]["content"] for r in teacher.requests]
    assert 4 <= len(asked) <= 5 and len(set(asked)) == len(asked)  # no prompt asked twice


def test_a_base_url_without_v1_names_the_url_the_server_answers_at(teacher, tmp_path):
    """vLLM's server (like most) serves under /v1: a base URL without it fails the preflight
    with the URL to use, before anything is sampled."""
    from align.generate import prepare
    from align.models.endpoint import Endpoint, preflight

    root = teacher.url.removesuffix("/v1")
    overrides = [o for o in endpoint_overrides(teacher) if not o.startswith("generator.base_url")]
    with pytest.raises(AlignError, match=re.escape(
            f"{root}/v1/models answers: set generator.base_url={root}/v1")):
        prepare(compose_generate(tmp_path, *overrides, f"generator.base_url={root}"))
    assert teacher.requests == [] and not (tmp_path / "config.yaml").exists()
    # a server with no model list anywhere is still asked for samples (with a warning)
    assert preflight(Endpoint(base_url=f"{root}/elsewhere", model="teacher")) == []


@pytest.mark.parametrize("overrides,message", [
    (["generator.backend=endpoint"], "generator.base_url=None"),
    (["generator.n=0"], "generator.n=0: must be >= 1"),
    (["+generator.temprature=1"], "generator.temprature"),
    (["select.near_duplicate=2"], "select.near_duplicate=2"),
    (["select.pairs_per_prompt=0"], "select.pairs_per_prompt=0: must be an integer >= 1"),
    (["select.ties=last"], "select.ties='last': choose one of first, most_drawn"),
    (["prompts.topics=[a]"], "prompts.template is not"),
    (["prompts.template=missing.txt", "prompts.topics=[a]"], "no such file"),
    (["generator.backend=endpoint", "generator.base_url=http://x/v1", "generator.model=m",
      "generator.api_key_env=ALIGN_NO_SUCH_KEY_VAR"], "ALIGN_NO_SUCH_KEY_VAR"),
])
def test_bad_config_fails_before_anything_loads(tmp_path, overrides, message):
    from align.generate import prepare

    with pytest.raises(AlignError, match=re.escape(message)):
        prepare(compose_generate(tmp_path, *overrides))
    assert not tmp_path.joinpath("config.yaml").exists()
