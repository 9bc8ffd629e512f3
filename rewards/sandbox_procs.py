"""The processes of one sandbox, seen from the host: find them, measure them, kill them, and reap
the ones that became our children.

Linux only (``/proc``, pidfds: Linux 5.3+, Python 3.9+; without pidfds the helpers degrade to plain
pids, with the usual pid-reuse race). Every kill and every wait goes through a pidfd opened on a
process *after* checking it belongs to the sandbox, and checked again once open, so a pid recycled
by an unrelated process is never signalled or waited for.

Why reaping is our business at all: when the trainer is PID 1 of its container (a container started
without an init) or a child subreaper, every orphan of the container is re-parented to it, and an
orphan nobody waits for stays a zombie forever. bubblewrap orphans one process per execution (its
in-namespace init, which exits just after bwrap has reported the exit code), and an
``isolation="rlimits"`` program may leave children behind. We wait for exactly those processes and
never call ``waitpid(-1)``, so the exit statuses of the application's own children stay theirs. One
that has not ended within :data:`EXIT_WAIT_S` of its kill is handed to a background thread
(:func:`reap_later`), which reaps it when it ends: an execution never waits longer, and a slow exit
under load still leaves no zombie.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable

#: Upper bound on how long we wait for a killed process to be gone before moving on.
EXIT_WAIT_S = 2.0
#: How long :func:`reap_later` waits for a process to end before giving up on it.
REAP_LATER_S = 600.0


def _probe_pidfds() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


#: pidfds work here (Linux 5.3+). Without them, kills and waits use plain pids.
PIDFDS = _probe_pidfds()


def pidfd_open(pid: int) -> int | None:
    """A pidfd for ``pid``, or ``None`` if it is gone or pidfds are not supported here."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def pidfd_kill(fd: int, sig: int = signal.SIGKILL) -> None:
    try:
        signal.pidfd_send_signal(fd, sig)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def has_exited(fd: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the process behind pidfd ``fd`` to exit."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def reap_if_ours(fd: int, timeout_s: float = EXIT_WAIT_S) -> bool:
    """Collect the exit status of the process behind pidfd ``fd`` if it is our child (we are its
    parent, or it was re-parented to us as PID 1 or subreaper); never blocks longer than
    ``timeout_s``. True if it was ours and is now reaped."""
    for attempt in range(2):
        try:
            result = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return False  # not our child: its parent (or the system's init) reaps it
        except OSError:
            return False
        if result is not None:
            return True
        if attempt == 0 and not has_exited(fd, timeout_s):
            return False
    return False


_LATER: dict[int, float] = {}  # pidfd (our own duplicate) -> when to give up on it
_LATER_LOCK = threading.Lock()
_LATER_THREAD: threading.Thread | None = None


def reap_later(fd: int) -> None:
    """Reap the process behind pidfd ``fd`` once it ends (if it is ours then), from a background
    thread, for up to :data:`REAP_LATER_S`. ``fd`` stays the caller's (a duplicate is kept)."""
    global _LATER_THREAD
    try:
        own = os.dup(fd)
    except OSError:
        return
    with _LATER_LOCK:
        _LATER[own] = time.monotonic() + REAP_LATER_S
        if _LATER_THREAD is None:
            _LATER_THREAD = threading.Thread(target=_reap_pending, name="sandbox-reaper", daemon=True)
            _LATER_THREAD.start()


def _reap_pending() -> None:
    """The background thread of :func:`reap_later`: reaps each process once it has ended and is
    ours; one that has ended but is not ours is dropped once no pending process still runs (none
    left whose end could make it ours), or past its time."""
    global _LATER_THREAD
    while True:
        with _LATER_LOCK:
            if not _LATER:
                _LATER_THREAD = None
                return
            pending = dict(_LATER)
        running = [fd for fd in pending if not has_exited(fd, 0)]
        now = time.monotonic()
        done = [
            fd for fd, until in pending.items()
            if now > until or (fd not in running and (reap_if_ours(fd, 0) or not running))
        ]
        with _LATER_LOCK:
            for fd in done:
                del _LATER[fd]
                os.close(fd)
        if running and not done:
            poller = select.poll()
            for fd in running:
                poller.register(fd, select.POLLIN)
            poller.poll(100)


def stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name may hold spaces and parentheses: it ends at the last ")".
    return data[data.rfind(")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def innermost_pid(pid: int) -> int | None:
    """``pid``'s number in its own PID namespace (1: the init of a namespace), zombies included."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


#: The kernel lists each thread's children in /proc (``CONFIG_PROC_CHILDREN``).
PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def children() -> list[int] | None:
    """This process's children (of all its threads), zombies included; ``None`` where the kernel
    does not list them."""
    if not PROC_CHILDREN:
        return None
    found: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                found += [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
    return found


def session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (an ``isolation="rlimits"`` sandbox starts its own session)."""
    found = []
    for pid in _pids():
        fields = stat_fields(pid)
        if fields and int(fields[3]) == sid:
            found.append(pid)
    return found


def pid_namespace(pid: int) -> tuple[int, int] | None:
    """Identity of the PID namespace ``pid`` lives in (device and inode of ``/proc/<pid>/ns/pid``)."""
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def namespace_members(namespace: tuple[int, int]) -> list[int]:
    """Host pids of the processes in a PID namespace (a bubblewrap sandbox's)."""
    return [pid for pid in _pids() if pid_namespace(pid) == namespace]


def resident_bytes(pid: int) -> int:
    """Memory ``pid`` holds that counts against a sandbox: anonymous pages and shared memory
    (``RssAnon + RssShmem``), not the file pages of the interpreter and libraries, which every
    process shares with the host's page cache."""
    total = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"RssAnon:", b"RssShmem:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return total


def open_members(
    find: Callable[[], Iterable[int]], belongs: Callable[[int], bool], held: Iterable[int] = ()
) -> dict[int, int]:
    """pid -> pidfd for every process ``find`` lists that still ``belongs`` once its pidfd is open
    (a pid recycled between the listing and the open fails the second check), but those ``held``
    already."""
    opened: dict[int, int] = {}
    skip = {os.getpid(), *held}
    for pid in find():
        if pid in skip or pid in opened:
            continue
        fd = pidfd_open(pid)
        if fd is None:
            continue
        if belongs(pid):
            opened[pid] = fd
        else:
            os.close(fd)
    return opened


def kill_and_reap(
    find: Callable[[], Iterable[int]], belongs: Callable[[int], bool], rounds: int = 20
) -> None:
    """SIGKILL every process ``find`` lists (again, until none is left: a fork may race the kill),
    then reap those that are our children. Bounded: ``rounds`` listings, :data:`EXIT_WAIT_S` of
    waiting; a process still running then is reaped later (:func:`reap_later`).

    All are waited for before any is reaped: a process becomes ours (re-parented to us as PID 1 or
    subreaper) only once its parent, maybe listed after it, has ended."""
    if not PIDFDS:
        _kill_and_reap_by_pid(find, belongs, rounds)
        return
    opened: dict[int, int] = {}
    try:
        for _ in range(rounds):
            fresh = open_members(find, belongs, held=opened)
            alive = [fd for fd in opened.values() if not has_exited(fd, 0)]
            if not fresh and not alive:
                break
            opened.update(fresh)
            for fd in fresh.values():
                pidfd_kill(fd)
            time.sleep(0.002)
        deadline = time.monotonic() + EXIT_WAIT_S
        ended = {fd: has_exited(fd, max(0.0, deadline - time.monotonic())) for fd in opened.values()}
        unreaped = [fd for fd, done in ended.items() if not (done and reap_if_ours(fd, 0))]
        if not all(ended.values()):
            for fd in unreaped:  # an ended one may become ours when its parent, still here, ends
                reap_later(fd)
    finally:
        for fd in opened.values():
            os.close(fd)


def _kill_and_reap_by_pid(
    find: Callable[[], Iterable[int]], belongs: Callable[[int], bool], rounds: int
) -> None:
    """:func:`kill_and_reap` without pidfds (kernels before 5.3): racy against pid reuse."""
    seen: set[int] = set()
    for _ in range(rounds):
        members = [p for p in find() if p != os.getpid() and belongs(p)]
        if not members:
            break
        for pid in members:
            seen.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)
    deadline = time.monotonic() + EXIT_WAIT_S
    for pid in seen:
        while parent_of(pid) == os.getpid() and time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.005)
