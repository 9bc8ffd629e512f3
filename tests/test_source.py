"""Where a model comes from, checked in seconds: a missing folder, an uncached hub id while
offline, a gated or unknown model and a hub that does not answer each give one line. The hub is
a real HTTP server on loopback (HF_ENDPOINT) answering as the Hugging Face Hub does."""

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from align.errors import ConfigError
from align.models import source

REPO = Path(__file__).resolve().parent.parent


class Hub(http.server.BaseHTTPRequestHandler):
    """Answers like the hub: X-Error-Code says why a file cannot be had."""

    answers = {}  # repo -> (status, error code) or "hang"

    def do_HEAD(self):
        repo = "/".join(self.path.strip("/").split("/")[:2])
        answer = self.answers.get(repo, (404, "RepoNotFound"))
        if answer == "hang":
            time.sleep(30)
            return
        status, code = answer
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


@pytest.fixture
def online(monkeypatch):
    """The hub reachable, also where the user exported HF_HUB_OFFLINE=1: huggingface_hub read it
    when it was first imported (test_secrets imports it first), so its constant goes too."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(monkeypatch, online):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield Hub.answers
    Hub.answers.clear()
    server.shutdown()


@pytest.mark.parametrize("answer,message", [
    ((403, "GatedRepo"), "is a gated model: accept its licence"),
    ((401, "GatedRepo"), "is a gated model"),
    ((404, "RepoNotFound"), "no such model on the Hugging Face Hub"),
    ((404, "RevisionNotFound"), "has no such branch, tag or commit"),
    ((404, "EntryNotFound"), "has no config.json, so it is not a transformers model"),
    ((500, None), "answered HTTP 500"),
])
def test_what_the_hub_says_is_one_line(hub, answer, message):
    hub["org/model"] = answer
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        source.resolve_source("org/model", revision="main")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("model.name_or_path=org/model") or "revision" in str(err.value)
    assert time.monotonic() - started < 10


def test_a_hub_that_does_not_answer_fails_at_the_deadline(hub, monkeypatch):
    hub["org/slow"] = "hang"
    monkeypatch.setattr(source, "HUB_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="did not answer within 1 s"):
        source.resolve_source("org/slow")
    assert time.monotonic() - started < 10


def test_a_closed_port_fails_at_once(monkeypatch, online):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="did not answer"):
        source.resolve_source("org/model")


def test_local_folders_and_tiny_models(tmp_path, tiny_base_path, monkeypatch):
    assert source.resolve_source(str(tiny_base_path)) == str(tiny_base_path)
    assert source.resolve_source("tiny://base") == str(tiny_base_path)
    with pytest.raises(ConfigError, match="tiny://nope: unknown tiny model variant"):
        source.resolve_source("tiny://nope")
    # A run's checks build nothing: the name is checked, the model built when it is loaded.
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cold-cache"))
    assert source.resolve_source("tiny://sft", build=False) == "tiny://sft"
    with pytest.raises(ConfigError, match="tiny://nope: unknown tiny model variant"):
        source.resolve_source("tiny://nope", build=False)
    assert not (tmp_path / "cold-cache").exists()
    monkeypatch.delenv("ALIGN_CACHE")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no config.json"):
        source.resolve_source(str(tmp_path / "empty"))
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(ConfigError, match="a file, not a model folder"):
        source.resolve_source(str(tmp_path / "file.bin"))
    monkeypatch.chdir(tmp_path)
    for missing in ("./nope", "../nope", "/no/such/model", "a/b/c"):
        with pytest.raises(ConfigError, match="no such folder"):
            source.resolve_source(missing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        source.resolve_source("org/model")


def test_offline_as_huggingface_hub_read_it_at_import(hub, monkeypatch):
    """HF_HUB_OFFLINE unset after huggingface_hub read it (a notebook that unsets it): the hub
    library still refuses every request, so align says the hub is off, not that it did not
    answer."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub["org/model"] = (403, "GatedRepo")
    with pytest.raises(ConfigError, match="the hub is off"):
        source.resolve_source("org/model")


def test_a_gated_model_from_the_command_line(hub, tmp_path):
    """As a user meets it: one line, exit 2, nothing left behind, in seconds."""
    hub["meta-llama/Llama-3.2-1B-Instruct"] = (403, "GatedRepo")
    script = os.path.relpath(REPO / "align" / "sft.py", tmp_path)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, script, "model=llama-3.2-1b-instruct", "logger=none"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "meta-llama/Llama-3.2-1B-Instruct is a gated model" in lines[0]
    assert "HF_TOKEN" in lines[0]
    assert time.monotonic() - started < 60
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- planning offline


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_the_planner_sizes_a_known_hub_model_offline_training_does_not(empty_cache, monkeypatch):
    """Offline and not cached: the planner stands on the published architecture align ships and
    says so in one line; resolving the model to load it (a run) still fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "Qwen/Qwen2.5-1.5B-Instruct"
    folder, note = source.resolve_architecture(name)
    assert folder == str(source.ARCHITECTURES / "Qwen--Qwen2.5-1.5B-Instruct")
    assert "\n" not in note and note.startswith(f"{name}: not in the local Hugging Face cache")
    assert "Qwen--Qwen2.5-1.5B-Instruct/config.json" in note and "training needs" in note
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        source.resolve_source(name)
    # A hub id align ships nothing for, or another revision than main: the same error as before.
    with pytest.raises(ConfigError, match="its config.json alone is enough to plan"):
        source.resolve_architecture("Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        source.resolve_architecture(name, revision="v1")
    assert source.resolve_architecture(name, revision="main")[0] == folder


def test_the_planner_falls_back_only_when_the_hub_cannot_give_the_config(hub, empty_cache):
    """A gated model without access or a hub that errs: plan on the shipped architecture. A hub
    that says the model does not exist: a wrong name, which a shipped folder must not hide."""
    llama = "meta-llama/Llama-3.2-1B-Instruct"
    hub[llama] = (403, "GatedRepo")
    folder, note = source.resolve_architecture(llama)
    assert folder.endswith("meta-llama--Llama-3.2-1B-Instruct") and "gated" in note
    with pytest.raises(ConfigError, match="is a gated model"):
        source.resolve_source(llama)
    hub[llama] = (503, None)
    assert "answered HTTP 503" in source.resolve_architecture(llama)[1]
    hub[llama] = (404, "RepoNotFound")
    with pytest.raises(ConfigError, match="no such model on the Hugging Face Hub"):
        source.resolve_architecture(llama)


def test_every_hub_model_the_configs_name_has_its_architecture_shipped():
    import yaml

    names = [yaml.safe_load(f.read_text())["name_or_path"]
             for f in sorted((REPO / "conf" / "model").glob("*.yaml"))]
    hub_ids = [n for n in names if not n.startswith("tiny://")]
    assert len(hub_ids) == 3, hub_ids
    for name in hub_ids:
        folder = source.shipped_architecture(name)
        assert folder is not None, f"{name}: add its config.json to align/models/architectures/"
        assert folder.name in (source.ARCHITECTURES / "README.md").read_text()


def test_the_tiny_architecture_is_read_without_building_it(tmp_path, monkeypatch, tiny_base_path):
    """Module-name checks (peft.target_modules) on the tiny model must not build it: on a fresh
    machine that is a minute of SFT warm-up and its progress bars before a one-line error."""
    from transformers import AutoConfig

    from align.models.source import meta_model
    from align.models.tiny import architecture_config

    built = AutoConfig.from_pretrained(tiny_base_path).to_dict()
    shape = architecture_config().to_dict()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "tie_word_embeddings", "model_type"):
        assert shape[key] == built[key], key
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cold"))
    model = meta_model("tiny://sft")
    assert sum(p.numel() for p in model.parameters()) == 563_328
    assert not (tmp_path / "cold").exists()
