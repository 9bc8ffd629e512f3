"""Memory limit for a whole sandbox (every process in it together), not per process.

Two ways, chosen per execution by ``Limits.memory_enforcement``:

- ``cgroup``: a memory cgroup made for the execution, a child of the cgroup this process is in, with
  ``memory_mb`` as its hard limit (swap included where the kernel accounts it). The kernel enforces
  it: charged memory is everything the sandbox's processes hold, anonymous memory, shared memory and
  the files they write to the sandbox's tmpfs included. A sandbox that hits it is OOM-killed; the
  host sees the ``oom_kill`` event and kills the rest (status ``memory``). cgroup v1 (the ``memory``
  controller, as root) and cgroup v2 (when this process's cgroup already has the memory controller
  enabled for its children and is writable, e.g. a delegated systemd scope) are supported. The
  sandbox is started behind a gate (a shell waiting on a pipe) and moved into the cgroup before the
  gate opens, so not a byte is allocated outside it.
- ``watchdog``: no cgroup could be made. The host polls every :data:`POLL_S` the resident memory
  (``RssAnon + RssShmem``) of every process of the sandbox (its PID namespace under bubblewrap, its
  session under rlimits) and kills the whole sandbox past ``memory_mb`` (status ``memory``). Each
  process also keeps ``RLIMIT_AS = memory_mb``. Slack: memory can grow for one poll interval before
  it is seen (page faults run at a few GB/s per core, so up to ~100-300 MB per busy core at 50 ms),
  the tmpfs (bounded by ``scratch_mb`` on its own) and memory that no process maps (a ``memfd``
  written but never mapped: bounded by ``RLIMIT_FSIZE`` x ``RLIMIT_NOFILE``) are not counted, and
  under ``isolation="rlimits"`` a process that leaves the session escapes the count.

``auto`` (the default) uses a cgroup when one can be made here (probed once per process, with a
throw-away cgroup) and the watchdog otherwise, with one warning.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rewards import sandbox_procs

log = logging.getLogger(__name__)

MEMORY_ENFORCEMENTS = ("auto", "cgroup", "watchdog")
#: Interval of the host's checks: the watchdog's memory count, the cgroup's OOM events.
POLL_S = 0.05
#: Name prefix of the cgroups made here: ``rewards-sandbox-<host pid>-<n>``.
CGROUP_PREFIX = "rewards-sandbox-"

_COUNTER = itertools.count()
_COUNTER_LOCK = threading.Lock()
_TOKEN = secrets.token_hex(4)
#: A cgroup of ours older than this whose owner is gone is stale (a crashed process left it).
STALE_AFTER_S = 600


class CgroupUnavailable(OSError):
    """No memory cgroup can be made for a sandbox here (the reason is the message)."""


class MemoryGuard:
    """Enforces the memory limit of one execution; see the module docstring."""

    kind = "none"
    #: Must the sandbox wait (behind a gate) until :meth:`attach` has run?
    gated = False

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes

    def attach(self, pid: int) -> None:
        """Put the (gated, not yet running) process ``pid`` under this guard."""

    def watch(self, members: Callable[[], Iterable[int]]) -> None:
        """Tell the guard how to list the sandbox's processes (for the watchdog)."""

    def exceeded(self) -> bool:
        """Has the sandbox gone past its limit (checked every :data:`POLL_S` while it runs)?"""
        return False

    def members(self) -> list[int] | None:
        """The sandbox's processes if the guard can list them exactly (a cgroup), else ``None``."""
        return None

    def close(self) -> None:
        """Release what the guard holds (the cgroup); the sandbox's processes are gone by now."""


class WatchdogGuard(MemoryGuard):
    kind = "watchdog"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(limit_bytes)
        self._members: Callable[[], Iterable[int]] = lambda: ()
        self._over = False

    def watch(self, members: Callable[[], Iterable[int]]) -> None:
        self._members = members

    def exceeded(self) -> bool:
        if not self._over:
            total = sum(sandbox_procs.resident_bytes(pid) for pid in self._members())
            self._over = total > self.limit_bytes
        return self._over


class CgroupGuard(MemoryGuard):
    gated = True

    def __init__(self, version: int, parent: Path, limit_bytes: int) -> None:
        super().__init__(limit_bytes)
        self.version = version
        self.kind = f"cgroup-v{version}"
        with _COUNTER_LOCK:
            n = next(_COUNTER)
        # The pid names the owner (for the removal of stale cgroups); the token keeps processes of
        # different PID namespaces sharing a parent cgroup apart.
        self.path = parent / f"{CGROUP_PREFIX}{os.getpid()}-{_TOKEN}-{n}"
        os.mkdir(self.path)
        try:
            _write_limits(self.path, version, limit_bytes)
        except OSError:
            _rmdir(self.path)
            raise

    def attach(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def exceeded(self) -> bool:
        return _oom_kills(self.path, self.version) > 0

    def members(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def close(self) -> None:
        # Normally empty: the sandbox's processes were killed and waited for. Anything left (a
        # process still being torn down) is killed before the directory goes.
        sandbox_procs.kill_and_reap(self.members, lambda pid: pid in self.members())
        deadline = time.monotonic() + sandbox_procs.EXIT_WAIT_S
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    log.warning("sandbox: could not remove cgroup %s", self.path)
                    return
                time.sleep(0.005)


def _write_limits(path: Path, version: int, limit: int) -> None:
    if version == 1:
        (path / "memory.limit_in_bytes").write_text(str(limit))
        # Swap counts too where the kernel accounts it (memsw >= limit, so set after it).
        _try_write(path / "memory.memsw.limit_in_bytes", str(limit))
        _try_write(path / "memory.swappiness", "0")
    else:
        (path / "memory.max").write_text(str(limit))
        _try_write(path / "memory.swap.max", "0")
        _try_write(path / "memory.oom.group", "1")  # an OOM kill takes the whole sandbox


def _try_write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError:
        pass  # not present (no swap accounting, older kernel): the main limit still holds


def _oom_kills(path: Path, version: int) -> int:
    name = "memory.oom_control" if version == 1 else "memory.events"
    try:
        text = (path / name).read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def _rmdir(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------- finding a parent


def _mountinfo() -> list[tuple[str, str, str, list[str]]]:
    """(root, mount point, fstype, super options) of every mount this process sees."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 3:
                mounts.append((fields[3], fields[4], tail[0], tail[2].split(",")))
    return mounts


def _inside(mount_root: str, mount_point: str, cgroup_path: str) -> Path | None:
    if mount_root != "/" and not (cgroup_path + "/").startswith(mount_root.rstrip("/") + "/"):
        return None
    relative = cgroup_path[len(mount_root.rstrip("/")) :] if mount_root != "/" else cgroup_path
    return Path(mount_point) / relative.lstrip("/")


def find_parent() -> tuple[int, Path]:
    """(cgroup version, directory) under which this process may make memory cgroups; raises
    :class:`CgroupUnavailable` saying why not."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = _mountinfo()
    except OSError as e:
        raise CgroupUnavailable(f"cannot read this process's cgroups ({e})") from e
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    # cgroup v1 with a memory controller (this includes hybrid setups, where v2 has no memory).
    for root, point, fstype, options in mounts:
        if fstype == "cgroup" and "memory" in options and "memory" in paths:
            parent = _inside(root, point, paths["memory"])
            if parent is not None:
                return 1, parent
    for root, point, fstype, _ in mounts:
        if fstype == "cgroup2" and "" in paths:
            parent = _inside(root, point, paths[""])
            if parent is None:
                continue
            try:
                enabled = (parent / "cgroup.subtree_control").read_text().split()
            except OSError:
                enabled = []
            if "memory" not in enabled:
                raise CgroupUnavailable(
                    f"cgroup v2: the memory controller is not enabled for the children of {parent} "
                    "(a delegated cgroup, e.g. `systemd-run --user --scope -p Delegate=yes`, has it)"
                )
            return 2, parent
    raise CgroupUnavailable("no cgroup memory controller is mounted")


@functools.lru_cache(maxsize=1)
def cgroup_parent() -> tuple[int, Path] | str:
    """Where sandboxes get their memory cgroups here, or why they cannot (probed once: a cgroup
    is made, limited and removed). Also removes cgroups left by earlier processes that died."""
    try:
        version, parent = find_parent()
        _remove_stale(parent)
        probe = CgroupGuard(version, parent, 64 << 20)
        probe.close()
    except CgroupUnavailable as e:
        return str(e)
    except OSError as e:
        return f"cannot make a memory cgroup here ({e.strerror or e})"
    return version, parent


def _remove_stale(parent: Path) -> None:
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(CGROUP_PREFIX) :].split("-")[0]
        if entry.name.startswith(CGROUP_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            try:
                old = time.time() - entry.stat().st_mtime > STALE_AFTER_S
            except OSError:
                continue
            if old:
                _rmdir(entry)  # fails (EBUSY) if a process is still in it


@functools.lru_cache(maxsize=1)
def _warn_watchdog(reason: str) -> None:
    log.warning(
        "sandbox: no memory cgroup (%s); the memory limit of a sandbox is enforced by a watchdog "
        "summing its processes' resident memory every %.0f ms (see rewards/sandbox_memory.py for "
        "the slack)", reason, POLL_S * 1000,
    )


def open_guard(limit_bytes: int, enforcement: str) -> MemoryGuard:
    """The guard for one execution (``enforcement``: one of :data:`MEMORY_ENFORCEMENTS`)."""
    if enforcement not in MEMORY_ENFORCEMENTS:
        raise ValueError(f"memory_enforcement must be one of {MEMORY_ENFORCEMENTS}, got {enforcement!r}")
    if enforcement == "watchdog":
        return WatchdogGuard(limit_bytes)
    found = cgroup_parent()
    if isinstance(found, str):
        if enforcement == "cgroup":
            raise CgroupUnavailable(found)
        _warn_watchdog(found)
        return WatchdogGuard(limit_bytes)
    try:
        return CgroupGuard(*found, limit_bytes)
    except OSError as e:
        if enforcement == "cgroup":
            raise CgroupUnavailable(f"cannot make a memory cgroup under {found[1]}: {e}") from e
        _warn_watchdog(str(e))
        return WatchdogGuard(limit_bytes)
