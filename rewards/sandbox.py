"""Run untrusted, model-generated Python in a sandbox and report what happened.

Model-generated code is hostile: it may read your files or environment secrets, open sockets,
fork-bomb, allocate all memory, fill a tmpfs, loop forever or leave daemons behind. Each execution
gets:

- **bubblewrap** (``bwrap``, Debian/Ubuntu package ``bubblewrap``; the tool Flatpak uses) for
  the isolation itself: new user, PID, network, IPC, UTS and cgroup namespaces. The sandbox sees
  only ``/usr`` (read-only), the Python installation (read-only), the program (read-only,
  ``/code``), a few device nodes (``/dev/null``, ``zero``, ``full``, ``random``, ``urandom``) and
  **one** writable tmpfs of ``scratch_mb``: ``/sandbox``, holding the working directory
  (``/sandbox/work``, also ``HOME``), ``/tmp`` (a link to ``/sandbox/tmp``) and ``/dev/shm`` (a link
  to ``/sandbox/shm``). The root and ``/dev`` are read-only, so everything the program can write
  shares the one ``scratch_mb`` budget. No home directory, no ``/etc``, no ``/sys``, no network
  interface but its own loopback, an empty environment. When its first process exits, the PID
  namespace ends and every process left inside is killed.
- **a memory limit for the whole sandbox** (all its processes together): a memory cgroup where one
  can be made, else a watchdog on the host; see :mod:`rewards.sandbox_memory`. Past it the sandbox
  is killed (status ``memory``). :attr:`ExecResult.memory_enforcement` says which one ran.
- **rlimits**, set inside the sandbox before the program runs: CPU seconds, address space
  (``memory_mb`` per process, on top of the sandbox-wide limit), processes (counted per sandbox,
  thanks to the user namespace), file size, open files, no core dumps. Inherited file descriptors other than
  stdin/stdout/stderr and those the caller passes on purpose are closed.
- **bounded output**: stdout and stderr are pipes the host drains while the program runs (so the
  program may also open ``/dev/stdout`` or ``/dev/stderr`` by path and write to the same stream);
  the first ``max_output_bytes`` of each are kept, and a program writing more than
  ``file_size_mb`` to either is killed (status ``killed``, said on stderr).
- **a wall-clock timeout**: the sandbox is killed (SIGKILL to its PID namespace's init, which takes
  every process in it down) when it expires.
- **no root**: run as root, the sandbox drops to ``nobody`` (uid 65534) first, because the kernel
  does not enforce the process limit on root.
- **no zombies, no leftovers**: kills and waits go through pidfds; the processes that an execution
  orphans (bubblewrap's in-sandbox init; an rlimits program's children) are reaped by us when they
  are re-parented to us (the trainer is PID 1 of a container without an init, or a subreaper), and
  never anything else: the application's own children keep their exit statuses. Bubblewrap's init
  is recognised by its PID namespace, also when the program ended (and bubblewrap exited) before
  the host read its pid; an rlimits program's processes are found in its cgroup (or session),
  and a child of it that ended on its own, which no cgroup lists, among our children by its
  session; all before the program's own process is reaped, so that its pid (the session id) cannot
  be reused meanwhile. The temporary directory and the cgroup are removed.
- **bounded parallelism**: at most one sandbox per CPU core of this process's affinity runs at a
  time (a process-wide semaphore, :func:`slot`), so rewards scoring hundreds of completions do not
  oversubscribe the host.

Why bubblewrap: it is small, audited, packaged by every distribution, needs no daemon and no root,
and does exactly namespaces + bind mounts; a container runtime (docker, gVisor) would need a
daemon or root, nsjail/firejail are not packaged everywhere, and hand-rolled ``unshare`` + mount
code is what bubblewrap already is.

Without bubblewrap only ``isolation="rlimits"`` is possible: the same rlimits, memory limit,
environment, scratch directory (on the host's disk, not size-limited as a whole) and kill of the
session (of the cgroup, where there is one), but **no filesystem or network isolation** (the program
can read what its uid can read, and signal other processes of that uid). It is never chosen
silently: ``isolation="auto"`` logs a warning when it falls back, and every :class:`ExecResult`
says which isolation it ran under.

The sandbox runs the interpreter with ``-I -S`` (isolated mode, no site-packages): programs get
the standard library only.

Install bubblewrap: ``apt-get install bubblewrap`` (Debian/Ubuntu), ``dnf install bubblewrap``.
Inside Docker, unprivileged user namespaces must be allowed (the default seccomp profile blocks
them: run with ``--security-opt seccomp=unconfined`` or a profile that allows ``clone``/``unshare``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from rewards import sandbox_memory, sandbox_procs
from rewards.sandbox_memory import MEMORY_ENFORCEMENTS, CgroupUnavailable

log = logging.getLogger(__name__)

ISOLATIONS = ("bwrap", "rlimits", "auto")
#: uid/gid the sandbox runs as when started by root (the kernel exempts root from RLIMIT_NPROC).
NOBODY = 65534
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap); "
    "in Docker also allow user namespaces (--security-opt seccomp=unconfined). Or accept weaker "
    "isolation with isolation='rlimits' (no filesystem or network isolation)"
)
#: Device nodes the sandbox gets (bound from the host; writing to them stores nothing).
DEVICES = ("null", "zero", "full", "random", "urandom")

# Runs inside the sandbox, in the sandboxed interpreter, before the program: it closes every
# inherited file descriptor but stdin/stdout/stderr and the ones passed on purpose, sets the limits
# the program cannot raise again (lowering a hard limit needs CAP_SYS_RESOURCE to undo), then runs
# it as __main__ (in this module's namespace, as runpy would, without runpy's import cost). NPROC
# is set here and not before bwrap, because inside a fresh user namespace the kernel counts
# processes per namespace; set outside, it would count every process of the uid.
# A held execution (see Execution.release) first imports the modules named in ``preload`` from the
# program's folder, then waits until the host closes the ``hold`` pipe (having written the rest
# of the program's files); so a sandbox can be started, and its interpreter warmed, before the
# program it will run is known.
_BOOT = """\
def _boot():
    import os, resource, sys
    cpu, mem, nproc, fsize, nofile, keep, hold, preload, target = sys.argv[1:10]
    low = 3
    for fd in sorted(int(fd) for fd in (*keep.split(","), hold) if fd):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
    for kind, value in ((resource.RLIMIT_CPU, int(cpu)), (resource.RLIMIT_AS, int(mem)),
                        (resource.RLIMIT_NPROC, int(nproc)), (resource.RLIMIT_FSIZE, int(fsize)),
                        (resource.RLIMIT_NOFILE, int(nofile)), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(kind, (value, value))
    if preload:
        sys.path.insert(0, os.path.dirname(target))
        for module in preload.split(","):
            __import__(module)
        del sys.path[0]
    if hold:
        while os.read(int(hold), 4096):
            pass
        os.close(int(hold))
    sys.argv = [target, *sys.argv[10:]]
    with open(target, "rb") as f:
        code = compile(f.read(), target, "exec")
    globals()["__file__"] = target
    del globals()["_boot"]
    return code
exec(_boot())
"""

# With a memory cgroup, the sandbox starts behind this gate: the shell reads one line from its
# stdin, the gate pipe, which the host writes once it has moved the shell into the cgroup; then it
# becomes the sandbox (exec) with the program's stdin file, inherited as fd N, as stdin. (Re-opened
# through /proc: dash cannot redirect from an fd above 9; the file is readable by the sandbox's uid,
# and /proc/self/fd does not need its directories to be.) The boot script closes fd N.
_GATE = 'read -r _ || exit 125; exec "$@" </proc/self/fd/{fd}'


class SandboxError(RuntimeError):
    """The sandbox itself could not run (not the program's fault): missing tool, setup failure."""


class SandboxUnavailableError(SandboxError):
    """The requested isolation is not available on this machine."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution. Sizes in MiB, times in seconds."""

    timeout_s: float = 10.0  # wall clock, the whole sandbox killed when it expires
    cpu_s: int = 10  # CPU time per process (SIGXCPU, then SIGKILL)
    memory_mb: int = 1024  # the whole sandbox (see memory_enforcement), and address space per process
    max_processes: int = 32  # processes and threads inside the sandbox
    #: Largest file the program may write, and the most it may write to stdout and to stderr
    #: (each; past it the sandbox is killed, status ``killed``).
    file_size_mb: int = 16
    scratch_mb: int = 64  # everything the program can write under bwrap: /sandbox, /tmp, /dev/shm
    open_files: int = 64
    max_output_bytes: int = 1 << 16  # of stdout and of stderr kept in the result
    #: ``auto`` (cgroup where one can be made, else watchdog), ``cgroup`` (or SandboxUnavailableError)
    #: or ``watchdog``; see :mod:`rewards.sandbox_memory`.
    memory_enforcement: str = "auto"

    def check(self) -> None:
        for name, value in asdict(self).items():
            if name == "memory_enforcement":
                if value not in MEMORY_ENFORCEMENTS:
                    raise ValueError(
                        f"sandbox memory_enforcement must be one of {MEMORY_ENFORCEMENTS}, got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")


@dataclass
class ExecResult:
    """What one sandboxed execution did.

    ``status``: ``ok`` (exit 0), ``error`` (non-zero exit), ``timeout`` (wall clock expired,
    killed), ``memory`` (the sandbox went past ``memory_mb``, killed), ``killed`` (ended by a
    signal: CPU limit, file size limit, a crash, or killed by its caller).
    ``memory_enforcement``: ``cgroup-v1``, ``cgroup-v2`` or ``watchdog``.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: str
    memory_enforcement: str = "none"
    #: stdout or stderr was longer than ``Limits.max_output_bytes``: only its start is kept here.
    output_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------- isolation probing


@functools.lru_cache(maxsize=None)
def uid_mapped(uid: int) -> bool:
    """Does ``uid`` exist in this process's user namespace (can it be switched to)?"""
    try:
        ranges = [line.split() for line in Path("/proc/self/uid_map").read_text().splitlines()]
    except OSError:
        return True
    return any(int(inside) <= uid < int(inside) + int(count) for inside, _, count in ranges)


@functools.lru_cache(maxsize=1)
def _drop_to_nobody() -> bool:
    """Run as root: drop to ``nobody``. Only when ``nobody`` exists in this user namespace (not in
    a rootless container mapping only uid 0, where "root" is an ordinary user to the kernel)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    return uid_mapped(NOBODY)


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


def _dev_entries() -> list[str]:
    """A /dev of device nodes and links only: bubblewrap's ``--dev`` would add a writable tmpfs
    (``/dev`` and ``/dev/shm``) outside the scratch budget."""
    args = ["--dir", "/dev"]
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("shm", "/sandbox/shm")):
        args += ["--symlink", target, f"/dev/{name}"]
    return args


def _bwrap_command(code_dir: str, limits: Limits, status_fd: int) -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
    python, prefix = sandbox_python()
    args = [
        bwrap,
        "--unshare-all",  # user, pid, net, ipc, uts, cgroup namespaces
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into the caller's terminal
        "--cap-drop", "ALL",
        "--clearenv",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", "/sandbox/work",
        "--setenv", "TMPDIR", "/tmp",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        "--ro-bind", "/usr", "/usr",
        *_root_entries(),
        "--proc", "/proc",
        # The one writable filesystem, and so the whole write budget.
        "--size", str(limits.scratch_mb * 1024 * 1024), "--tmpfs", "/sandbox",
        "--dir", "/sandbox/work", "--dir", "/sandbox/tmp", "--dir", "/sandbox/shm",
        "--symlink", "/sandbox/tmp", "/tmp",
        *_dev_entries(),
        "--ro-bind", code_dir, "/code",
    ]
    if not prefix.startswith("/usr/") and prefix != "/usr":
        args += ["--ro-bind", prefix, prefix]
    args += [
        "--chdir", "/sandbox/work",
        "--remount-ro", "/",  # bubblewrap's own root tmpfs (and /dev on it): no unbounded writes
        "--json-status-fd", str(status_fd),
    ]
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
        "limits, empty environment and session kill only, NO filesystem or network isolation",
        problem,
    )


# ---------------------------------------------------------------------------- parallelism


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


@contextlib.contextmanager
def slot() -> Iterator[None]:
    """Hold one of the :func:`max_parallel` execution slots of this process (blocks while all are
    taken). :func:`run_python` takes one itself; a caller running sandboxes with
    :func:`start_python` takes one per unit of work it starts."""
    with _slots():
        yield


# ---------------------------------------------------------------------------- running


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


class _Output:
    """One output stream of a sandbox (stdout or stderr): a pipe, drained by the host while the
    program runs.

    A pipe, not a file, so that the program may also write to ``/dev/stdout`` and ``/dev/stderr``
    by path: re-opening a pipe gives one more writer of the same stream (a file would be truncated
    by the re-open's ``O_TRUNC``, losing what was printed before), and the pipe belongs to the
    sandbox's uid so that the re-open is allowed. The first ``keep`` bytes are kept (the rest is
    read and dropped, marked ``[output truncated]``); past ``limit`` bytes in all (``file_size_mb``,
    the budget a file would have had) ``on_over`` kills the sandbox."""

    def __init__(self, keep: int, limit: int, on_over: Callable[[], None]) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.keep, self.limit, self.on_over = keep, limit, on_over
        self.kept = bytearray()
        self.total = 0
        self.closed = False

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if len(self.kept) < self.keep:
            self.kept += data[: self.keep - len(self.kept)]
        if self.total > self.limit and not self.closed:
            self.closed = True
            self.on_over()

    @property
    def over(self) -> bool:
        return self.total > self.limit

    @property
    def truncated(self) -> bool:
        return self.total > self.keep

    def text(self) -> str:
        text = bytes(self.kept).decode("utf-8", errors="replace")
        return text + "\n[output truncated]" if self.truncated else text


def _drain(outputs: Sequence[_Output], stop: threading.Event) -> None:
    """Read every pipe of ``outputs`` to its end (every writer in the sandbox gone), or until
    ``stop`` is set: a thread per execution, so that a program is never blocked on a full pipe."""
    poller = select.poll()
    by_fd = {o.read_fd: o for o in outputs}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while by_fd and not stop.is_set():
        for fd, _ in poller.poll(100):
            try:
                data = os.read(fd, 1 << 16)
            except OSError:
                data = b""
            if data:
                by_fd[fd].feed(data)
            else:
                poller.unregister(fd)
                del by_fd[fd]


def _read_line(fd: int, timeout_s: float) -> bytes:
    """What the pipe ``fd`` (bubblewrap's status) holds up to the end of its first line (it may
    hold more lines already: a program that ends at once has its exit status written too);
    b"" at EOF or past ``timeout_s``."""
    data = b""
    deadline = time.monotonic() + timeout_s
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            return b""
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        data += chunk
    return data


def _child_pid(status: bytes) -> int:
    """The sandbox init's host pid from bubblewrap's status: its first line."""
    return int(json.loads(status.split(b"\n", 1)[0])["child-pid"])


def _pid_namespace(status: bytes) -> int | None:
    """The inode of the sandbox's PID namespace from bubblewrap's status (``None`` if not there)."""
    try:
        return int(json.loads(status.split(b"\n", 1)[0])["pid-namespace"])
    except (ValueError, KeyError, TypeError):
        return None


class Execution:
    """One sandboxed program, started (see :func:`start_python`): wait for it, kill it, then
    :meth:`finish` it (reap, clean up, get the :class:`ExecResult`). A context manager: leaving the
    block finishes it, killing it first if it still runs."""

    def __init__(
        self,
        code: str,
        stdin: str,
        limits: Limits,
        isolation: str,
        files: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        args: Sequence[str] = (),
        uid: int = NOBODY,
        hold: bool = False,
        preload: Sequence[str] = (),
    ) -> None:
        limits.check()
        self.limits = limits
        self.isolation = isolation
        self.uid = uid  # run as, when started by root
        #: Why we killed it (``timeout``, ``memory``, ``killed``), ``None`` if we did not.
        self.reason: str | None = None
        self.result: ExecResult | None = None
        self.proc: subprocess.Popen | None = None
        self.guard: sandbox_memory.MemoryGuard | None = None
        self.started = time.monotonic()
        self._pidfd: int | None = None
        self._init_fd: int | None = None  # bubblewrap's init, pid 1 of the sandbox's PID namespace
        self._status_r = -1
        self._status = b""
        self._outputs: list[_Output] = []
        self._drained = threading.Event()  # tells the drain thread to stop
        self._drain_thread: threading.Thread | None = None
        self._output_over = False
        self._hold_w = -1  # the host's end of the hold pipe, while the program waits on it
        self._hold = hold
        self._preload = ",".join(preload)
        self._tmp = Path(tempfile.mkdtemp(prefix="rewards-sandbox-"))
        try:
            self._start(code, stdin, files or {}, tuple(pass_fds), tuple(args))
        except BaseException:
            self._abandon()
            raise

    # -------------------------------------------------------------------- start

    def _start(
        self, code: str, stdin: str, files: dict[str, str], pass_fds: tuple[int, ...],
        args: tuple[str, ...],
    ) -> None:
        limits, host = self.limits, self._tmp
        drop = _drop_to_nobody()
        code_dir = host / "code"
        code_dir.mkdir()
        (code_dir / "boot.py").write_text(_BOOT)
        for name, content in files.items():
            self._place(name, content, chmod=False)
        (code_dir / "main.py").write_text(code)
        (host / "stdin").write_text(stdin)
        # The program's files must be readable by the sandbox uid (nobody when we are root).
        for path in (host, code_dir):
            path.chmod(0o755)
        for path in code_dir.iterdir():
            path.chmod(0o644)
        try:
            self.guard = sandbox_memory.open_guard(limits.memory_mb * 1024 * 1024,
                                                   limits.memory_enforcement)
        except CgroupUnavailable as e:
            raise SandboxUnavailableError(f"memory_enforcement='cgroup' is not possible here: {e}") from e
        keep = ",".join(str(fd) for fd in pass_fds)
        hold_r = -1
        if self._hold:
            hold_r, self._hold_w = os.pipe()
            pass_fds = (*pass_fds, hold_r)
        status_w = -1
        if self.isolation == "bwrap":
            # Counted inside the sandbox's own user namespace: the limit is the sandbox's budget.
            nproc = limits.max_processes
            boot, target = "/code/boot.py", "/code/main.py"
            self._status_r, status_w = os.pipe()
            argv = [*_bwrap_command(str(code_dir), limits, status_w), "-I", "-S"]
            cwd, popen_fds = str(host), (status_w, *pass_fds)
        else:
            # Without a user namespace the kernel counts every process of the uid: allow the ones
            # already running plus the sandbox's budget.
            scratch = host / "scratch"
            scratch.mkdir()
            if drop:
                os.chown(scratch, self.uid, self.uid)
            nproc = _processes_of(self.uid if drop else os.getuid()) + limits.max_processes
            boot, target = str(code_dir / "boot.py"), str(code_dir / "main.py")
            python, _ = sandbox_python()
            argv, cwd, popen_fds = [python, "-I", "-S"], str(scratch), pass_fds
        argv += [boot, str(int(limits.cpu_s)), str(limits.memory_mb * 1024 * 1024), str(nproc),
                 str(limits.file_size_mb * 1024 * 1024), str(limits.open_files), keep,
                 str(hold_r) if hold_r >= 0 else "", self._preload, target, *args]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        if self.isolation != "bwrap":
            env["HOME"] = env["TMPDIR"] = cwd  # tempfile's files go where they are cleaned up
        drop_kwargs: dict[str, Any] = (
            {"user": self.uid, "group": self.uid, "extra_groups": []} if drop else {}
        )
        limit = limits.file_size_mb * 1024 * 1024
        self._outputs = [_Output(limits.max_output_bytes, limit, self._over) for _ in range(2)]
        if drop:
            for output in self._outputs:  # the sandbox's uid may re-open it (/dev/stdout)
                os.fchown(output.write_fd, self.uid, self.uid)
        gate_r = gate_w = -1
        try:
            fout, ferr = self._outputs[0].write_fd, self._outputs[1].write_fd
            with open(host / "stdin", "rb") as fin:
                stdin: Any = fin
                if self.guard.gated:
                    gate_r, gate_w = os.pipe()
                    argv = ["/bin/sh", "-c", _GATE.format(fd=fin.fileno()), "sandbox-gate", *argv]
                    stdin, popen_fds = gate_r, (*popen_fds, fin.fileno())
                try:
                    self.proc = subprocess.Popen(
                        argv, stdin=stdin, stdout=fout, stderr=ferr, cwd=cwd, env=env,
                        start_new_session=True, pass_fds=popen_fds, close_fds=True,
                        **drop_kwargs,
                    )
                except OSError as e:
                    raise SandboxError(f"could not start the sandbox ({argv[0]}): {e}") from e
        finally:
            for fd in (status_w, gate_r, hold_r, *(o.write_fd for o in self._outputs)):
                if fd >= 0:
                    os.close(fd)
            for output in self._outputs:
                output.write_fd = -1
            if gate_w >= 0 and self.proc is None:
                os.close(gate_w)
        self._pidfd = sandbox_procs.pidfd_open(self.proc.pid)
        self._drain_thread = threading.Thread(
            target=_drain, args=(self._outputs, self._drained), name="sandbox-output", daemon=True
        )
        self._drain_thread.start()
        if gate_w >= 0:
            try:
                self.guard.attach(self.proc.pid)
                os.write(gate_w, b"go\n")
            except OSError as e:
                raise SandboxError(f"could not move the sandbox into its memory cgroup: {e}") from e
            finally:
                os.close(gate_w)
        self.started = time.monotonic()
        if self.isolation == "bwrap":
            self._find_init()
        else:
            sid = self.proc.pid
            self.guard.watch(lambda: sandbox_procs.session_members(sid))

    def _place(self, name: str, content: str, chmod: bool = True) -> None:
        """Write one of the program's files next to it (readable by the sandbox's uid)."""
        if name in ("boot.py", "main.py") or Path(name).name != name:
            raise ValueError(f"sandbox file name {name!r}: a plain file name other than boot.py/main.py")
        path = self._tmp / "code" / name
        path.write_text(content)
        if chmod:
            path.chmod(0o644)

    def _find_init(self) -> None:
        """Read the host pid of the sandbox's init from bubblewrap's status and hold a pidfd on it:
        killing it kills the whole PID namespace."""
        assert self.proc is not None and self.guard is not None
        line = _read_line(self._status_r, max(30.0, self.limits.timeout_s))
        self._status += line
        try:
            child = _child_pid(line)
        except (ValueError, KeyError, TypeError):
            self.proc.kill()
            self.proc.wait()
            self._collect_output()
            stderr = self._outputs[1].text()
            raise SandboxError(f"bubblewrap failed to set up the sandbox: {stderr.strip()[-1000:]}")
        fd = sandbox_procs.pidfd_open(child)
        if fd is not None and not self._is_init(child, line):
            os.close(fd)  # already gone (and its pid possibly reused): nothing to hold
            fd = None
        self._init_fd = fd
        namespace = sandbox_procs.pid_namespace(child) if fd is not None else None
        self.guard.watch(
            (lambda: sandbox_procs.namespace_members(namespace)) if namespace else (lambda: ())
        )

    def _is_init(self, child: int, status: bytes) -> bool:
        """Is ``child`` (a pidfd on it already open) the init bubblewrap reported? The program may
        have ended before this read: then bubblewrap may have exited too and the init, alive or a
        zombie, been re-parented: to the system's init, or to us (PID 1 of a container, or a
        subreaper), and then it is ours to reap. So it is recognised by its PID namespace, the one
        bubblewrap reported, whoever its parent is now; where that cannot be read, by being the
        init of a namespace whose parent is bubblewrap, or us."""
        assert self.proc is not None
        expected = _pid_namespace(status)
        namespace = sandbox_procs.pid_namespace(child)
        if expected is not None and namespace is not None:
            return namespace[1] == expected
        return (sandbox_procs.parent_of(child) in (self.proc.pid, os.getpid())
                and sandbox_procs.innermost_pid(child) == 1)

    # -------------------------------------------------------------------- run

    def release(self, files: dict[str, str] | None = None) -> None:
        """Let a held execution (``hold=True``) run its program: place ``files`` next to it
        (as the constructor does), then open the hold. Its wall clock starts now."""
        assert self._hold_w >= 0, "release() of an execution that is not held"
        for name, content in (files or {}).items():
            self._place(name, content)
        os.close(self._hold_w)
        self._hold_w = -1
        self.started = time.monotonic()

    def alive(self) -> bool:
        """Is the sandbox still running (a held one: still waiting to be released)?"""
        return self.proc is not None and self.result is None and not self._exited(0)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _exited(self, timeout_s: float) -> bool:
        assert self.proc is not None
        if self._pidfd is not None:
            return sandbox_procs.has_exited(self._pidfd, timeout_s)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def poll(self) -> bool:
        """Check the memory limit (killing the sandbox past it); True once the program has ended."""
        assert self.guard is not None
        if self.reason is None and self.guard.exceeded():
            self.kill("memory")
        return self._exited(0)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait up to ``timeout_s`` (``None``: no limit) for the program to end, enforcing the
        memory limit meanwhile. True if it ended."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = sandbox_memory.POLL_S if deadline is None else deadline - time.monotonic()
            if self._exited(max(0.0, min(sandbox_memory.POLL_S, left))):
                return True
            if self.poll():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def kill(self, reason: str = "killed") -> None:
        """SIGKILL every process of the sandbox (``reason`` goes into the result's status)."""
        if self.reason is None:
            self.reason = reason
        assert self.proc is not None
        if self._init_fd is not None:
            sandbox_procs.pidfd_kill(self._init_fd)  # the PID namespace dies with its init
        elif self.isolation == "bwrap":
            self._kill_main()  # bubblewrap had not started the sandbox (or it is gone already)
        else:
            self._kill_main()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            members = self.guard.members() if self.guard is not None else None
            for pid in members or ():
                fd = sandbox_procs.pidfd_open(pid)
                if fd is not None:
                    sandbox_procs.pidfd_kill(fd)
                    os.close(fd)

    def _over(self) -> None:
        """The program wrote more than ``file_size_mb`` to stdout or stderr (from the drain thread)."""
        self._output_over = True
        self.kill("killed")

    def _kill_main(self) -> None:
        assert self.proc is not None
        if self._pidfd is not None:
            sandbox_procs.pidfd_kill(self._pidfd)
        elif self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    # -------------------------------------------------------------------- finish

    def finish(self) -> ExecResult:
        """Make sure every process of the sandbox is gone and reaped, release its cgroup and
        temporary directory, and return what happened. Idempotent."""
        if self.result is not None:
            return self.result
        assert self.proc is not None and self.guard is not None
        try:
            if not self._exited(0):
                self.kill(self.reason or "killed")
            if not self._exited(sandbox_procs.EXIT_WAIT_S):
                self._kill_main()  # the init kill did not bring bwrap down: take bwrap itself
            while not self._exited(sandbox_procs.EXIT_WAIT_S):
                pass
            duration = time.monotonic() - self.started
            # Before the sandbox's first process is reaped: until then its pid, the session id of
            # an rlimits sandbox, cannot be reused by an unrelated process.
            self._clean_up_processes()
            returncode = self.proc.wait()
            memory = self.reason == "memory" or self.guard.exceeded()
            if self._status_r >= 0:
                self._status += _read_all(self._status_r)
            self._collect_output()
        finally:
            self._release()
        for line in self._status.decode(errors="replace").splitlines():
            if '"exit-code"' in line:
                # bwrap exits with the program's code, or 128+signal when the program was killed.
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    returncode = int(json.loads(line)["exit-code"])
        if memory:
            status = "memory"
        elif self.reason is not None:
            status = self.reason
        elif returncode == 0:
            status = "ok"
        elif returncode < 0 or (self.isolation == "bwrap" and returncode > 128):
            status = "killed"
        else:
            status = "error"
        stderr = self._outputs[1].text()
        if self._output_over:
            stderr += (f"\n[killed: more than {self.limits.file_size_mb} MiB written to stdout or "
                       "stderr (Limits.file_size_mb)]")
        self.result = ExecResult(
            status=status,
            returncode=None if status == "timeout" else returncode,
            stdout=self._outputs[0].text(),
            stderr=stderr,
            output_truncated=any(o.truncated for o in self._outputs),
            duration_s=duration,
            isolation=self.isolation,
            memory_enforcement=self.guard.kind,
        )
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.result

    def _clean_up_processes(self) -> None:
        assert self.proc is not None and self.guard is not None
        if self._init_fd is not None:
            # bubblewrap returns as soon as its init reports the program's exit code; the init then
            # tears the namespace down and exits, re-parented: to the system's init, or to us
            # (PID 1 of a container, or a subreaper), and then we must reap it.
            if sandbox_procs.has_exited(self._init_fd, sandbox_procs.EXIT_WAIT_S):
                sandbox_procs.reap_if_ours(self._init_fd, 0)
            else:
                sandbox_procs.reap_later(self._init_fd)
        if self.isolation != "bwrap":
            # What the program left behind: under a cgroup everything in it (also what left the
            # session), else its session. The first process itself (exited, not yet reaped) is
            # the Popen's to reap.
            guard, sid = self.guard, self.proc.pid

            def in_session(pid: int) -> bool:
                fields = sandbox_procs.stat_fields(pid)
                return bool(fields) and int(fields[3]) == sid

            def cgroup() -> list[int]:
                return [pid for pid in guard.members() or () if pid != sid]

            def session() -> list[int]:
                return [pid for pid in sandbox_procs.session_members(sid) if pid != sid]

            def our_zombies() -> list[int]:
                ours = sandbox_procs.children()
                if ours is None:
                    return session()
                return [pid for pid in ours if pid != sid and in_session(pid)]

            if guard.members() is None:
                sandbox_procs.kill_and_reap(session, in_session)
            else:
                sandbox_procs.kill_and_reap(cgroup, lambda pid: pid in (guard.members() or ()))
                # A cgroup lists live processes only: a child that ended on its own before this,
                # re-parented to us (PID 1, subreaper), is a zombie of ours in the session.
                sandbox_procs.kill_and_reap(our_zombies, in_session)

    def _collect_output(self) -> None:
        """Let the drain thread read the pipes to their end (the sandbox's processes are gone, so
        every writer is), bounded: a writer left over is not waited for."""
        if self._drain_thread is not None:
            self._drain_thread.join(sandbox_procs.EXIT_WAIT_S)
            self._drained.set()
            self._drain_thread.join()
            self._drain_thread = None

    def _release(self) -> None:
        for name in ("_pidfd", "_init_fd", "_status_r", "_hold_w"):
            fd = getattr(self, name)
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1 if name in ("_status_r", "_hold_w") else None)
        self._drained.set()
        if self._drain_thread is not None:
            self._drain_thread.join()
            self._drain_thread = None
        for output in self._outputs:
            for name in ("read_fd", "write_fd"):
                fd = getattr(output, name)
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    setattr(output, name, -1)
        if self.guard is not None:
            self.guard.close()

    def _abandon(self) -> None:
        """Clean up after a failed start."""
        if self.proc is not None:
            self.kill("killed")
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=sandbox_procs.EXIT_WAIT_S)
        self._release()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Execution:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def start_python(
    code: str,
    stdin: str = "",
    limits: Limits | None = None,
    isolation: str = "bwrap",
    files: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    args: Sequence[str] = (),
    uid: int = NOBODY,
    hold: bool = False,
    preload: Sequence[str] = (),
) -> Execution:
    """Start ``code`` as a Python program in a sandbox and return at once (see :class:`Execution`).
    ``pass_fds`` stay open in the program under the same numbers (e.g. one end of a socketpair);
    ``args`` become its ``sys.argv[1:]``; ``uid`` is the user it runs as when this process is root
    (``nobody`` by default; another uid keeps two sandboxes from signalling or tracing each other
    under ``isolation="rlimits"``). Does not take an execution :func:`slot`: the caller bounds
    its parallelism.

    ``hold=True`` starts the sandbox and its interpreter (importing ``preload``, modules among
    ``files``) but keeps the program waiting until :meth:`Execution.release`, which may add files
    (the part of the program not known yet): a sandbox started ahead, off the critical path, still
    runs exactly one program and is thrown away after it."""
    return Execution(code, stdin, limits or Limits(), resolve_isolation(isolation), files,
                     pass_fds, args, uid, hold, preload)


def _run(
    code: str, stdin: str, limits: Limits, isolation: str, files: dict[str, str] | None = None
) -> ExecResult:
    with Execution(code, stdin, limits, isolation, files) as execution:
        if not execution.wait(limits.timeout_s):
            execution.kill("timeout")
        return execution.finish()


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
    with slot():
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
