"""W&B without an API key, or with one and no server to take it: offline, no prompt, no crash,
no long wait; secrets never written."""

import http.server
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from align import sft
from align.run.conf import CONF_DIR, register

register()
REPO = Path(__file__).resolve().parent.parent
SECRET = "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"


def test_wandb_without_key_runs_offline_and_keeps_secrets_out(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sft", overrides=[
            "logger=wandb", "trainer.max_steps=2", "trainer.per_device_train_batch_size=8",
            "trainer.save_strategy=no", "heldout.max_samples=8", f"output_dir={tmp_path}",
            # A secret pasted into a config value must not reach the saved config or W&B.
            f"+model.model_kwargs.token={SECRET}",
        ])
    sft.run(cfg)

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "no W&B run file written"
    out = capsys.readouterr().out
    assert "W&B run saved offline" in out and "wandb sync" in out
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), f"secret leaked into {path}"
    assert "<redacted>" in (tmp_path / "config.yaml").read_text()


def test_a_resumed_launch_continues_the_same_wandb_run(tmp_path, monkeypatch):
    from align.run.tracking import WANDB_ID_FILE, LoggerConfig, start_tracking

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = LoggerConfig(mode="offline")

    def launch(resume):
        tracker = start_tracking(cfg, name="run", group=None, out_dir=tmp_path, config={},
                                 is_main=True, resume=resume)
        run_id = tracker.run.id
        tracker.run.finish()
        return run_id

    first = launch(resume=True)  # the first launch of a requeueable job: nothing to resume
    assert (tmp_path / WANDB_ID_FILE).read_text() == first
    assert launch(resume=True) == first
    fresh = launch(resume=False)  # a fresh start is a new W&B run, which a resume continues
    assert fresh != first
    assert launch(resume=True) == fresh


# ---------------------------------------------------------------- a key, but no usable server
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters: wandb takes its form
BOUND_S = 30  # wandb's own init timeout, which a dead server used to cost, is 90 s


@pytest.fixture(params=[401, 500, "closed"])
def dead_wandb(request, monkeypatch, tmp_path):
    """WANDB_BASE_URL of a loopback server that rejects every request (401), fails (500), or
    a port nothing listens on; a well-formed but invalid key."""
    if request.param == "closed":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = None
    else:
        status = request.param

        class Reject(http.server.BaseHTTPRequestHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"errors": [{"message": "invalid api key"}]}')

            do_GET = do_POST = do_PUT = answer

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reject)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    yield url
    if server is not None:
        server.shutdown()
        server.server_close()


def test_auto_with_a_key_but_no_usable_server_runs_offline_quickly(dead_wandb, tmp_path, caplog,
                                                                   capsys):
    from align.run.tracking import LoggerConfig, start_tracking

    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="align.run.tracking"):
        tracker = start_tracking(LoggerConfig(mode="auto"), name="run", group=None,
                                 out_dir=tmp_path, config={}, is_main=True)
    elapsed = time.perf_counter() - started
    assert tracker.run.settings.mode == "offline"
    assert elapsed < BOUND_S
    warnings = [r.getMessage() for r in caplog.records if r.name == "align.run.tracking"]
    assert len(warnings) == 1 and dead_wandb in warnings[0] and "offline" in warnings[0]
    tracker.finish()
    assert "upload it with: wandb sync" in capsys.readouterr().out
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_explicit_online_without_a_usable_server_stops_with_one_line(dead_wandb, tmp_path,
                                                                     monkeypatch):
    from align.errors import ConfigError
    from align.run.tracking import LoggerConfig, start_tracking

    for cfg, asked_by in ((LoggerConfig(mode="online"), "logger.mode=online"),
                          (LoggerConfig(mode="auto"), "WANDB_MODE=online")):
        if asked_by.startswith("WANDB_MODE"):
            monkeypatch.setenv("WANDB_MODE", "online")
        started = time.perf_counter()
        with pytest.raises(ConfigError) as info:
            start_tracking(cfg, name="run", group=None, out_dir=tmp_path, config={},
                           is_main=True)
        assert time.perf_counter() - started < BOUND_S
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{asked_by}: the W&B server")
        offline = asked_by.split("=")[0] + "=offline"  # the fix for what asked for online
        assert dead_wandb in message and f"run offline with {offline}" in message


def test_wandb_mode_in_the_environment_wins_without_a_probe(dead_wandb, tmp_path, caplog,
                                                          monkeypatch):
    from align.run.tracking import LoggerConfig, start_tracking

    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level(logging.WARNING, logger="align.run.tracking"):
        tracker = start_tracking(LoggerConfig(mode="online"), name="run", group=None,
                                 out_dir=tmp_path, config={}, is_main=True)
    assert tracker.run.settings.mode == "offline"
    assert not [r for r in caplog.records if r.name == "align.run.tracking"]
    tracker.run.finish()


@pytest.mark.slow
@pytest.mark.parametrize("dead_wandb", [401], indirect=True)  # the others: tests above
def test_training_command_with_an_invalid_key_and_a_dead_server_ends_offline(dead_wandb,
                                                                             tmp_path):
    """`python align/sft.py` as a user types it, with a W&B key the server rejects."""
    run = ["trainer.max_steps=2", "trainer.per_device_train_batch_size=8",
           "trainer.save_strategy=no", "heldout.max_samples=8", "hydra.run.dir=run"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "align" / "sft.py"), *run],
                          check=False, capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert f"W&B run saved offline in {offline[0]}" in done.stdout
    assert f"upload it with: wandb sync {offline[0]}" in done.stdout
    log = done.stdout + done.stderr
    assert log.count(f"W&B: the W&B server {dead_wandb}") == 1, log[-3000:]
    print(f"sft, 2 steps, key + dead W&B ({dead_wandb}): {time.perf_counter() - started:.1f} s")

    bad = subprocess.run([sys.executable, str(REPO / "align" / "sft.py"), *run[:-1],
                          "hydra.run.dir=run2", "logger.mode=online"],
                         check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "error: logger.mode=online: the W&B server")
    assert not (tmp_path / "run2").exists(), "a run stopped at its start left its folder"
