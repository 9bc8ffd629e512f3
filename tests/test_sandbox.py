"""The code sandbox against hostile programs: every escape attempt is contained and scored, and the
host is left as it was (no stray processes, no files written, secrets unseen)."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from rewards.sandbox import Limits, bwrap_problem, max_parallel, run_many, run_python

needs_bwrap = pytest.mark.skipif(
    bwrap_problem() is not None, reason=f"bubblewrap sandbox unavailable: {bwrap_problem()}"
)
QUICK = Limits(timeout_s=5, cpu_s=3, memory_mb=512, max_processes=16)


def processes_with(marker: str) -> list[str]:
    """Host processes whose command line contains ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(f"{pid}: {cmdline}")
    return found


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("TOP-SECRET-CONTENT")
    path.chmod(0o644)
    return path


@needs_bwrap
def test_escape_suite(tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGN_TEST_SECRET", "hunter2")
    outside = tmp_path / "written_by_sandbox.txt"
    marker = f"orphan-{uuid.uuid4().hex}"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted: list = []

    def accept() -> None:
        server.settimeout(8)
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    attempts = {
        "read outside": f"print(open({str(secret_file)!r}).read())",
        "read home": "import os; print(os.listdir(os.path.expanduser('~root')))",
        "write outside": f"open({str(outside)!r}, 'w').write('x')",
        "write system": "open('/usr/pwned', 'w').write('x')",
        "socket to host": f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
        "socket out": "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)",
        "env secrets": "import os; v = os.environ.get('ALIGN_TEST_SECRET'); print(v); assert v",
        "proc environ": "import os; d = open('/proc/1/environ','rb').read(); assert b'hunter2' in d",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "alloc 10 GB": "x = bytearray(10 * 1024 ** 3)",
        "infinite loop": "while True:\n    pass",
        "orphan child": (
            "import os, subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],"
            " start_new_session=True)\nprint('parent exits')"
        ),
    }
    results = dict(zip(attempts, run_many([(code, "") for code in attempts.values()], QUICK)))
    listener.join()
    server.close()

    for name, result in results.items():
        assert result.isolation == "bwrap", name
        if name == "orphan child":
            assert result.status == "ok" and "parent exits" in result.stdout
        else:
            # contained: the attempt failed (and so would score as a failure)
            assert result.status != "ok", (name, result)
    assert "TOP-SECRET" not in results["read outside"].stdout
    assert "FileNotFoundError" in results["read outside"].stderr
    assert "hunter2" not in results["env secrets"].stdout
    assert "Read-only file system" in results["write system"].stderr
    assert not outside.exists() and not Path("/usr/pwned").exists()
    assert not accepted  # nothing reached the host's loopback
    assert results["alloc 10 GB"].status == "error" and "MemoryError" in results["alloc 10 GB"].stderr
    assert results["infinite loop"].status in ("killed", "timeout")
    assert results["fork bomb"].status in ("error", "killed", "timeout")
    # The host is unharmed: the orphan and the fork bomb's processes are gone.
    assert processes_with(marker) == []
    assert processes_with("rewards-sandbox-") == []


def test_rlimits_mode_contains_what_it_can(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without bubblewrap: limits, empty environment, scratch dir and group kill still hold."""
    monkeypatch.setenv("ALIGN_TEST_SECRET", "hunter2")
    marker = f"orphan-{uuid.uuid4().hex}"
    jobs = {
        "env": "import os; print(sorted(os.environ)); print(os.getcwd())",
        "alloc": "x = bytearray(10 * 1024 ** 3)",
        "loop": "while True:\n    pass",
        "orphan": (
            "import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        ),
        "big output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    }
    limits = Limits(timeout_s=4, cpu_s=2, memory_mb=512, file_size_mb=1)
    results = {name: run_python(code, limits=limits, isolation="rlimits") for name, code in jobs.items()}
    assert all(r.isolation == "rlimits" for r in results.values())
    assert "ALIGN_TEST_SECRET" not in results["env"].stdout and "rewards-sandbox-" in results["env"].stdout
    assert "MemoryError" in results["alloc"].stderr
    assert results["loop"].status == "killed"  # the CPU limit, before the wall clock
    # Python ignores SIGXFSZ, so the write past the 1 MiB file size limit fails with EFBIG instead.
    assert results["big output"].status == "error" and "File too large" in results["big output"].stderr
    assert len(results["big output"].stdout) < 70_000
    assert processes_with(marker) == []


@needs_bwrap
def test_parallel_runs_stay_within_the_cores() -> None:
    # Each program reports how many sandboxes were running while it ran, through a shared file
    # that only the test can see: count concurrently running executions via their process list.
    code = "import time; time.sleep(0.3); print('done')"
    n = 3 * max_parallel()
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(len([p for p in processes_with("/code/boot.py") if "bwrap" not in p]))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results = run_many([(code, "")] * n, Limits(timeout_s=20))
    stop.set()
    watcher.join()
    assert [r.stdout.strip() for r in results] == ["done"] * n
    assert 1 <= max(seen) <= max_parallel()


@needs_bwrap
def test_stdin_scratch_and_exit_codes() -> None:
    code = (
        "import os, sys\n"
        "data = sys.stdin.read()\n"
        "open('note.txt', 'w').write(data * 2)\n"
        "print(open('note.txt').read(), os.getcwd())\n"
        "sys.exit(3)"
    )
    result = run_python(code, stdin="ab", limits=QUICK)
    assert (result.status, result.returncode) == ("error", 3)
    assert result.stdout.split() == ["abab", "/sandbox"]
    # a fresh scratch every time
    again = run_python("import os; print(os.listdir('.'))", limits=QUICK)
    assert again.stdout.strip() == "[]"
