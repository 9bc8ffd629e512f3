"""Run untrusted, model-generated Python in a sandbox and report what happened.

Model-generated code is hostile: it may read your files or environment secrets, open sockets,
fork-bomb, allocate all memory, loop forever or leave daemons behind. Each execution here gets:

- **bubblewrap** (``bwrap``, Debian/Ubuntu package ``bubblewrap``; the tool Flatpak uses) for
  the isolation itself: new user, PID, network, IPC, UTS and mount namespaces. The sandbox sees
  only ``/usr`` (read-only), the Python installation (read-only), a fresh size-limited tmpfs as its
  working directory (``/sandbox``) and ``/tmp``, and the program (read-only, ``/code``); no home
  directory, no ``/etc``, no network interface but its own loopback, an empty environment. When its
  first process exits, the PID namespace ends and every process left inside is killed.
- **rlimits**, set inside the sandbox before the program runs: CPU seconds, address space,
  processes (counted per sandbox, thanks to the user namespace), file size (which also caps what
  the program can write to its captured stdout/stderr), open files, no core dumps.
- **a wall-clock timeout**: the whole process group is killed (SIGKILL) when it expires.
- **no root**: run as root, the sandbox drops to ``nobody`` (uid 65534) first, because the kernel
  does not enforce the process limit on root.
- **bounded parallelism**: at most one sandbox per CPU core of this process's affinity runs at a
  time (a process-wide semaphore), so rewards scoring hundreds of completions do not oversubscribe
  the host.

Why bubblewrap: it is small, audited, packaged by every distribution, needs no daemon and no root,
and does exactly namespaces + bind mounts; a container runtime (docker, gVisor) would need a
daemon or root, nsjail/firejail are not packaged everywhere, and hand-rolled ``unshare`` + mount
code is what bubblewrap already is.

Without bubblewrap only ``isolation="rlimits"`` is possible: the same rlimits, environment,
scratch directory and process-group kill, but **no filesystem or network isolation** (the program
can read what your user can read). It is never chosen silently: ``isolation="auto"`` logs a warning
when it falls back, and every :class:`ExecResult` says which isolation it ran under.

The sandbox runs the interpreter with ``-I -S`` (isolated mode, no site-packages): programs get
the standard library only.

Install bubblewrap: ``apt-get install bubblewrap`` (Debian/Ubuntu), ``dnf install bubblewrap``.
Inside Docker, unprivileged user namespaces must be allowed (the default seccomp profile blocks
them: run with ``--security-opt seccomp=unconfined`` or a profile that allows ``clone``/``unshare``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

ISOLATIONS = ("bwrap", "rlimits", "auto")
#: uid/gid the sandbox runs as when started by root (the kernel exempts root from RLIMIT_NPROC).
NOBODY = 65534
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap); "
    "in Docker also allow user namespaces (--security-opt seccomp=unconfined). Or accept weaker "
    "isolation with isolation='rlimits' (no filesystem or network isolation)"
)

# Runs inside the sandbox, in the sandboxed interpreter, before the program: it sets the limits the
# program cannot raise again (lowering a hard limit needs CAP_SYS_RESOURCE to undo), then runs it
# as __main__. NPROC is set here and not before bwrap, because inside a fresh user namespace the
# kernel counts processes per namespace; set outside, it would count every process of the uid.
_BOOT = """\
import resource, runpy, sys
cpu, mem, nproc, fsize, nofile, target = sys.argv[1:7]
for kind, value in ((resource.RLIMIT_CPU, int(cpu)), (resource.RLIMIT_AS, int(mem)),
                    (resource.RLIMIT_NPROC, int(nproc)), (resource.RLIMIT_FSIZE, int(fsize)),
                    (resource.RLIMIT_NOFILE, int(nofile)), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(kind, (value, value))
del cpu, mem, nproc, fsize, nofile, kind, value, resource
sys.argv = [target, *sys.argv[7:]]
runpy.run_path(target, run_name="__main__")
"""


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the program's fault): missing tool, setup failure."""


class SandboxUnavailableError(SandboxError):
    """The requested isolation is not available on this machine."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution. Sizes in MiB, times in seconds."""

    timeout_s: float = 10.0  # wall clock, whole process group killed when it expires
    cpu_s: int = 10  # CPU time per process (SIGXCPU, then SIGKILL)
    memory_mb: int = 1024  # address space per process
    max_processes: int = 32  # processes and threads inside the sandbox
    file_size_mb: int = 16  # largest file the program may write (its stdout/stderr included)
    scratch_mb: int = 64  # size of the tmpfs working directory and of /tmp (bwrap only)
    open_files: int = 64
    max_output_bytes: int = 1 << 16  # of stdout and of stderr kept in the result

    def check(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")


@dataclass
class ExecResult:
    """What one sandboxed execution did.

    ``status``: ``ok`` (exit 0), ``error`` (non-zero exit), ``timeout`` (wall clock expired,
    killed), ``killed`` (ended by a signal: CPU limit, file size limit, a crash).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------- isolation probing


def _drop_to_nobody() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _others_can_run(path: Path) -> bool:
    """Can an unrelated uid reach and execute ``path`` (every parent directory o+x)?"""
    try:
        if not path.stat().st_mode & stat.S_IXOTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def sandbox_python() -> tuple[str, str]:
    """(interpreter, installation prefix) the sandbox runs programs with.

    This process's own base interpreter (not the venv wrapper: site-packages are not used), unless
    the sandbox runs as ``nobody`` and cannot reach it (e.g. a pyenv under ``/root``); then the
    system ``python3``.
    """
    exe = Path(os.path.realpath(sys.executable))
    prefix = Path(sys.base_prefix).resolve()
    if not _drop_to_nobody() or _others_can_run(exe):
        return str(exe), str(prefix)
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        path = Path(os.path.realpath(candidate))
        if path.is_file() and _others_can_run(path):
            return str(path), str(path.parent.parent)
    raise SandboxUnavailableError(
        f"the sandbox runs as uid {NOBODY} (this process is root) and cannot execute {exe}; "
        "install a system python3 (/usr/bin/python3) or run as a non-root user"
    )


def _root_entries() -> list[str]:
    """bwrap arguments that recreate /bin, /lib, /lib64, /sbin as on the host (symlinks into /usr
    on merged-/usr systems, read-only binds otherwise); the dynamic loader lives there."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    return args


def _bwrap_command(code_dir: str, limits: Limits, status_fd: int) -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    python, prefix = sandbox_python()
    scratch = str(limits.scratch_mb * 1024 * 1024)
    args = [
        bwrap,
        "--unshare-all",  # user, pid, net, ipc, uts, cgroup namespaces
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into the caller's terminal
        "--cap-drop", "ALL",
        "--clearenv",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", "/sandbox",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        "--ro-bind", "/usr", "/usr",
        *_root_entries(),
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", scratch, "--tmpfs", "/tmp",
        "--size", scratch, "--tmpfs", "/sandbox",
        "--ro-bind", code_dir, "/code",
        "--chdir", "/sandbox",
        "--json-status-fd", str(status_fd),
    ]
    if not prefix.startswith("/usr/") and prefix != "/usr":
        args += ["--ro-bind", prefix, prefix]
    return [*args, python]


@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """``None`` if bubblewrap sandboxes work on this machine, else why not (checked once)."""
    if shutil.which("bwrap") is None:
        return f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}"
    try:
        result = _run("import sys; sys.exit(7)", "", Limits(timeout_s=30), "bwrap")
    except SandboxError as e:
        return str(e)
    if result.returncode != 7:
        return f"bubblewrap did not run a test program (status {result.status}): {result.stderr[-500:]}"
    return None


def resolve_isolation(isolation: str) -> str:
    """``bwrap`` or ``rlimits``: what an execution asked to run under ``isolation`` will use."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    if isolation == "rlimits":
        return "rlimits"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if isolation == "bwrap":
        raise SandboxUnavailableError(problem)
    _warn_fallback(problem)
    return "rlimits"


@functools.lru_cache(maxsize=1)
def _warn_fallback(problem: str) -> None:
    log.warning(
        "sandbox: bubblewrap is unavailable (%s); falling back to isolation='rlimits': resource "
        "limits, empty environment and process-group kill only, NO filesystem or network isolation",
        problem,
    )


# ---------------------------------------------------------------------------- running


@functools.lru_cache(maxsize=1)
def max_parallel() -> int:
    """Sandboxes that may run at once in this process: the CPU cores it may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_SLOTS_LOCK = threading.Lock()
_SLOTS: threading.BoundedSemaphore | None = None


def _slots() -> threading.BoundedSemaphore:
    global _SLOTS
    with _SLOTS_LOCK:
        if _SLOTS is None:
            _SLOTS = threading.BoundedSemaphore(max_parallel())
        return _SLOTS


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _read_capped(path: Path, cap: int) -> str:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    text = data[:cap].decode("utf-8", errors="replace")
    return text + "\n[output truncated]" if len(data) > cap else text


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(
    code: str, stdin: str, limits: Limits, isolation: str, files: dict[str, str] | None = None
) -> ExecResult:
    limits.check()
    drop = _drop_to_nobody()
    with tempfile.TemporaryDirectory(prefix="rewards-sandbox-") as tmp:
        host = Path(tmp)
        code_dir = host / "code"
        code_dir.mkdir()
        (code_dir / "boot.py").write_text(_BOOT)
        for name, content in (files or {}).items():
            if name in ("boot.py", "main.py") or Path(name).name != name:
                raise ValueError(f"sandbox file name {name!r}: a plain file name other than boot.py/main.py")
            (code_dir / name).write_text(content)
        (code_dir / "main.py").write_text(code)
        (host / "stdin").write_text(stdin)
        # The program's files must be readable by the sandbox uid (nobody when we are root).
        for path in (host, code_dir):
            path.chmod(0o755)
        for path in code_dir.iterdir():
            path.chmod(0o644)
        mem = limits.memory_mb * 1024 * 1024
        fsize = limits.file_size_mb * 1024 * 1024
        if isolation == "bwrap":
            # Counted inside the sandbox's own user namespace: the limit is the sandbox's budget.
            nproc = limits.max_processes
            boot, target = "/code/boot.py", "/code/main.py"
            status_r, status_w = os.pipe()
            argv = [*_bwrap_command(str(code_dir), limits, status_w), "-I", "-S"]
            cwd, pass_fds = str(host), (status_w,)
        else:
            # Without a user namespace the kernel counts every process of the uid: allow the ones
            # already running plus the sandbox's budget.
            scratch = host / "scratch"
            scratch.mkdir()
            if drop:
                os.chown(scratch, NOBODY, NOBODY)
            nproc = _processes_of(NOBODY if drop else os.getuid()) + limits.max_processes
            boot, target = str(code_dir / "boot.py"), str(code_dir / "main.py")
            status_r = status_w = -1
            python, _ = sandbox_python()
            argv, cwd, pass_fds = [python, "-I", "-S"], str(scratch), ()
        argv += [boot, str(int(limits.cpu_s)), str(mem), str(nproc), str(fsize),
                 str(limits.open_files), target]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        if isolation != "bwrap":
            env["HOME"] = cwd
        drop_kwargs: dict[str, Any] = (
            {"user": NOBODY, "group": NOBODY, "extra_groups": []} if drop else {}
        )
        started = time.monotonic()
        timed_out = False
        try:
            with open(host / "stdin", "rb") as fin, open(host / "stdout", "wb") as fout, open(
                host / "stderr", "wb"
            ) as ferr:
                try:
                    proc = subprocess.Popen(
                        argv, stdin=fin, stdout=fout, stderr=ferr, cwd=cwd, env=env,
                        start_new_session=True, pass_fds=pass_fds, close_fds=True,
                        **drop_kwargs,
                    )
                except OSError as e:
                    raise SandboxError(f"could not start the sandbox ({argv[0]}): {e}") from e
                finally:
                    if status_w >= 0:
                        os.close(status_w)
                try:
                    returncode = proc.wait(timeout=limits.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill_group(proc.pid)
                    returncode = proc.wait()
                # Anything the program left in its process group (rlimits mode: bwrap's PID
                # namespace already took its processes down) goes too.
                _kill_group(proc.pid)
            duration = time.monotonic() - started
            status_json = ""
            if status_r >= 0:
                with os.fdopen(status_r, "r") as f:
                    status_json = f.read()
                status_r = -1
        finally:
            if status_r >= 0:
                os.close(status_r)
        stderr = _read_capped(host / "stderr", limits.max_output_bytes)
        if isolation == "bwrap" and not timed_out and '"child-pid"' not in status_json:
            raise SandboxError(f"bubblewrap failed to set up the sandbox: {stderr.strip()[-1000:]}")
        if isolation == "bwrap" and '"exit-code"' in status_json:
            # bwrap exits with the program's code, or 128+signal when the program was killed.
            for line in status_json.splitlines():
                if '"exit-code"' in line:
                    returncode = json.loads(line)["exit-code"]
        if timed_out:
            status = "timeout"
        elif returncode == 0:
            status = "ok"
        elif returncode < 0 or (isolation == "bwrap" and returncode > 128):
            status = "killed"
        else:
            status = "error"
        return ExecResult(
            status=status,
            returncode=None if timed_out else returncode,
            stdout=_read_capped(host / "stdout", limits.max_output_bytes),
            stderr=stderr,
            duration_s=duration,
            isolation=isolation,
        )


def run_python(
    code: str,
    stdin: str = "",
    limits: Limits | None = None,
    isolation: str = "bwrap",
    files: dict[str, str] | None = None,
) -> ExecResult:
    """Run ``code`` as a Python program in a sandbox, feeding it ``stdin``; ``files`` (name ->
    text) are placed next to it, read-only (``/code`` under bwrap). Never raises for what
    the program does (see :class:`ExecResult`), only :class:`SandboxError` when the sandbox itself
    cannot run. Blocks while all :func:`max_parallel` slots are busy.

    ``isolation``: ``bwrap`` (required, the default), ``rlimits`` (weaker, see the module
    docstring) or ``auto`` (bwrap if it works here, else rlimits with a warning).
    """
    limits = limits or Limits()
    chosen = resolve_isolation(isolation)
    with _slots():
        return _run(code, stdin, limits, chosen, files)


T = TypeVar("T")
R = TypeVar("R")


def map_parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool of :func:`max_parallel` workers (the sandbox
    semaphore still bounds the executions across every caller in this process)."""
    items = list(items)
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(max_parallel(), len(items))) as pool:
        return list(pool.map(fn, items))


def run_many(
    jobs: Sequence[tuple[str, str]], limits: Limits | None = None, isolation: str = "bwrap"
) -> list[ExecResult]:
    """Run ``(code, stdin)`` pairs in parallel, at most :func:`max_parallel` at a time."""
    return map_parallel(lambda job: run_python(job[0], job[1], limits, isolation), jobs)
