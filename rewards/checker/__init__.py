"""Assert-style tests judged so that the program under test cannot reach what decides its score.

A program that runs inside the harness that judges it owns that harness: it can read the harness's
memory, files, stdin and nonce, patch ``exec`` or ``AssertionError``, exit early with a forged
report, or return an object that equals everything. No in-process defence survives that, so the
judging happens somewhere the program cannot reach:

::

    host (the reward)  --tests-->  CHECKER sandbox  --calls: name, args-->  SOLUTION sandbox
          ^                        (trusted.py:            <--plain data--  (untrusted.py: runs
          '--verdict per test----   runs the tests,                          the program, answers
                                    never the program)                       calls; sees no test)

- The **solution** sandbox runs the completion's code and answers calls. It never receives a test,
  an expected value or any secret: there is nothing in it worth reading.
- The **checker** sandbox runs the tests (``exec``) with each of the solution's names bound to a
  proxy (``trusted.Remote``). Calling one sends the name and the arguments (plain data) to the
  solution, which answers with plain data, decoded here into real builtins (``wire``): an
  always-equal object, an ``int`` subclass or a lying ``__hash__`` cannot cross; they come back as
  opaque handles, equal only to themselves. The comparison of ``assert f(1) == 2`` happens in the
  checker, and ``2`` never leaves it. Objects that are not plain data (``s = Stack()``) are handles
  whose methods and attributes are calls again; lists, dicts and sets an argument held are written
  back after each call, so in-place mutation works (``sort_in_place(l); assert l == [1, 3]``).
- The two sandboxes are separate bubblewrap sandboxes (separate PID namespaces: neither sees the
  other's processes) connected only by a socketpair; the checker's verdicts go to the host on a
  second socketpair the solution has no handle to. The dataset's test code runs in the checker's
  sandbox, never on the host. Run as root, the checker's uid is not the solution's
  (:data:`CHECKER_UID`, the solution's is ``nobody``). Under ``isolation="rlimits"`` they are
  separate processes, and the checker makes itself non-dumpable (no ``/proc/<pid>/mem``, ``fd``,
  ``environ`` or ``pidfd_getfd`` for others of its uid) and says so before the solution starts;
  sockets cannot be re-opened through ``/proc``. Run as an ordinary user, rlimits mode still lets
  the solution reach what that user can (your files, and where ptrace is allowed your processes'
  memory, this one's included): use bubblewrap for training.

Each test is judged on its own: a test that fails or raises does not affect the others. A solution
that crashes, exits, hangs past ``call_timeout_s`` or breaks the protocol (answers unasked, twice,
malformed, oversized, too deeply nested) fails the test in progress and every later one. (An
answer written ahead for a later call, before its question, is taken as that answer if it comes in
order: it holds less than answering when asked, since the arguments were not even known.) The
whole check (both sandboxes' start-up included) has ``timeout_s``.

What the tests may do (see ``trusted.py`` for the name rules): any statements, helper variables and
functions (``x = f(1)`` then ``assert x == 2``; HumanEval's ``def check(candidate)``), call the
solution's functions and classes with plain data or with objects the solution returned, iterate
what it returns, use ``math.isclose``/``abs(a - b) < eps``, catch the builtin exceptions it raises
(``except ValueError``). What they cannot do: pass a function or object of their own to the
solution (a ``key=lambda``; only plain data and the solution's own objects cross), compare the
solution's objects with ``==`` (only plain data compares; ``repr`` of them is local, ``str`` is
asked), use ``isinstance`` with a solution's class, or catch a solution-defined exception class.
Builtins are never the solution's (a solution function named ``sum`` or ``max`` is not the one a
test calls), nor is a standard-library module a test uses as ``module.attr``. A test that relies
on a helper it neither defines nor imports (``isclose(f(2), 3.14)`` with ``isclose`` imported by
the solution) gets the solution's helper, computed in the solution's process: write the import
into the test.
"""

from __future__ import annotations

import ast
import atexit
import dataclasses
import functools
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.checker import wire
from rewards.sandbox import NOBODY, Limits, SandboxError, max_parallel, slot, start_python, uid_mapped

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
#: Memory of the checker's sandbox: it decodes at most ``wire.MAX_MESSAGE`` at a time.
CHECKER_MEMORY_MB = 512
#: The uid the checker runs as when this process is root: not ``nobody`` (the solution's), so the
#: solution can neither signal nor trace it even without namespaces (``isolation="rlimits"``).
CHECKER_UID = 65533


@functools.cache
def _source(name: str) -> str:
    return (_HERE / name).read_text()


def names_used_as_modules(tests: list[str]) -> list[str]:
    """Names the tests use as ``name.attribute`` (``math`` in ``math.isclose(...)``): the checker
    binds its own standard-library module to those, whatever the solution defines."""
    used: set[str] = set()
    for test in tests:
        try:
            tree = ast.parse(test)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                used.add(node.value.id)
    return sorted(used)


@dataclass
class CheckReport:
    """What happened to each test (``passed[i]``), and why a failing one failed."""

    passed: list[bool]
    errors: list[str]
    solution: str | None  # why the solution was cut off (died, hung, broke the protocol), if it was
    checker_finished: bool

    @property
    def score(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


class _Pair:
    """A solution sandbox and a checker sandbox, connected (see the module docstring), both held
    before their programs run: started ahead of the check they will serve (:func:`_warm_pair`), or
    for it. Each runs one check and is thrown away."""

    def __init__(self, limits: Limits, checker_limits: Limits, isolation: str) -> None:
        self.host_end, checker_control = socket.socketpair()
        checker_end, solution_end = socket.socketpair()
        self.made = time.monotonic()
        self.executions: list = []
        try:
            self.executions.append(start_python(
                _source("untrusted.py"), limits=limits, isolation=isolation,
                files={"wire.py": _source("wire.py")}, pass_fds=[solution_end.fileno()],
                args=[str(solution_end.fileno())], hold=True, preload=["wire"],
            ))
            self.executions.append(start_python(
                _source("trusted.py"), limits=checker_limits, isolation=isolation,
                files={"wire.py": _source("wire.py")},
                pass_fds=[checker_control.fileno(), checker_end.fileno()],
                args=[str(checker_control.fileno()), str(checker_end.fileno())],
                uid=CHECKER_UID if uid_mapped(CHECKER_UID) else NOBODY, hold=True, preload=["wire"],
            ))
        except BaseException:
            self.close()
            raise
        finally:
            for sock in (checker_control, checker_end, solution_end):
                sock.close()  # from now on only the sandboxes hold their ends

    def ready(self) -> bool:
        return all(execution.alive() for execution in self.executions)

    def close(self) -> None:
        for execution in self.executions:
            execution.kill("killed")
        for execution in self.executions:
            execution.finish()
        self.host_end.close()


# Pairs started ahead, per (limits, checker limits, isolation): a check takes one (its two sandboxes
# already up, their interpreters started and ``wire`` imported) and one more is started in the
# background, so that sandbox start-up overlaps the checks instead of preceding each of them.
# At most max_parallel() pairs per key and two keys (a reward's limits, and one other); started by
# one long-lived thread, because bubblewrap's --die-with-parent follows the thread that started it.
# A pair left unused for POOL_IDLE_S is stopped: between bursts of checks no sandbox waits.
POOL_IDLE_S = 5.0
_POOL: dict[tuple, list[_Pair]] = {}
_POOL_LOCK = threading.Lock()
_POOL_KEYS = 2
_REFILL: queue.SimpleQueue = queue.SimpleQueue()
_REFILLER: threading.Thread | None = None


def _warm_pair(key: tuple) -> _Pair | None:
    """A pair started ahead for ``key`` whose sandboxes still wait, or ``None``; asks for another."""
    global _REFILLER
    pair = None
    with _POOL_LOCK:
        waiting = _POOL.setdefault(key, [])
        _POOL[key] = _POOL.pop(key)  # most recently used last
        while waiting and pair is None:
            pair = waiting.pop(0)
            if not pair.ready():
                stale, pair = pair, None
                stale.close()
        if _REFILLER is None:
            _REFILLER = threading.Thread(target=_refill_forever, name="checker-pool", daemon=True)
            _REFILLER.start()
    _REFILL.put(key)
    return pair


def _refill_forever() -> None:
    while True:
        try:
            key = _REFILL.get(timeout=1.0)
        except queue.Empty:
            _stop_idle()
            continue
        with _POOL_LOCK:
            if len(_POOL.get(key, ())) >= max_parallel():
                continue
            evicted = []
            while len(_POOL) > _POOL_KEYS:
                evicted += _POOL.pop(next(iter(_POOL)))
        for old in evicted:
            old.close()
        try:
            pair = _Pair(*key)
        except Exception as e:  # the check that needs one starts its own, and reports the problem
            log.debug("checker pool: could not start a pair ahead: %s", e)
            continue
        with _POOL_LOCK:
            _POOL.setdefault(key, []).append(pair)


def _stop_idle() -> None:
    now = time.monotonic()
    with _POOL_LOCK:
        idle = [pair for waiting in _POOL.values() for pair in waiting if now - pair.made > POOL_IDLE_S]
        for key, waiting in list(_POOL.items()):
            _POOL[key] = [pair for pair in waiting if pair not in idle]
    for pair in idle:
        pair.close()


def close_pool() -> None:
    """Stop and remove the pairs started ahead (at exit, and for a caller that wants no sandbox
    left waiting)."""
    with _POOL_LOCK:
        pairs = [pair for waiting in _POOL.values() for pair in waiting]
        _POOL.clear()
    for pair in pairs:
        pair.close()


def _forget_pool_in_child() -> None:
    """After fork: the parent's pairs and refill thread are the parent's (closing the copies of
    their descriptors here is harmless; killing their sandboxes would not be)."""
    global _REFILLER, _REFILL, _POOL_LOCK
    _POOL.clear()
    _REFILLER, _REFILL, _POOL_LOCK = None, queue.SimpleQueue(), threading.Lock()


atexit.register(close_pool)
os.register_at_fork(after_in_child=_forget_pool_in_child)


def check_asserts(
    code: str,
    tests: list[str],
    limits: Limits,
    isolation: str = "bwrap",
    call_timeout_s: float | None = None,
    warm: bool = True,
) -> CheckReport:
    """Run ``tests`` (Python statements, non-empty) against the program ``code`` as described in
    the module docstring; ``limits.timeout_s`` bounds the whole check, ``call_timeout_s`` (default:
    the same) each call into the solution. Raises :class:`~rewards.sandbox.SandboxError` only when a
    sandbox cannot start. ``warm``: under bubblewrap, use a pair of sandboxes started ahead for
    these limits and start the next one in the background (see :class:`_Pair`)."""
    call_timeout_s = float(call_timeout_s or limits.timeout_s)
    checker_limits = dataclasses.replace(
        limits, memory_mb=max(limits.memory_mb, CHECKER_MEMORY_MB), max_processes=8
    )
    if isolation == "bwrap":
        return _check_in_pair(code, tests, limits, checker_limits, call_timeout_s, warm)
    return _check_rlimits(code, tests, limits, checker_limits, isolation, call_timeout_s)


def _check_in_pair(code: str, tests: list[str], limits: Limits, checker_limits: Limits,
                   call_timeout_s: float, warm: bool) -> CheckReport:
    """Under bubblewrap: the two sandboxes start side by side (namespaces keep them apart)."""
    with slot():
        key = (limits, checker_limits, "bwrap")
        pair = _warm_pair(key) if warm else None
        if pair is None:
            pair = _Pair(*key)
        started = time.monotonic()
        deadline = started + limits.timeout_s
        solution, checker = pair.executions
        solution.release({"solution.py": code})
        checker.release()
        return _judge(pair.host_end, pair.executions, tests, call_timeout_s, deadline, None)


def _check_rlimits(code: str, tests: list[str], limits: Limits, checker_limits: Limits,
                   isolation: str, call_timeout_s: float) -> CheckReport:
    """Without namespaces: the checker arms itself (non-dumpable) and gets its tests before the
    solution exists."""
    host_end, checker_control = socket.socketpair()
    checker_end, solution_end = socket.socketpair()
    with slot():
        started = time.monotonic()
        deadline = started + limits.timeout_s
        executions: list = []

        def start_solution() -> None:
            executions.insert(0, start_python(
                _source("untrusted.py"), limits=limits, isolation=isolation,
                files={"wire.py": _source("wire.py"), "solution.py": code},
                pass_fds=[solution_end.fileno()], args=[str(solution_end.fileno())],
            ))
            solution_end.close()

        try:
            executions.append(start_python(
                _source("trusted.py"), limits=checker_limits, isolation=isolation,
                files={"wire.py": _source("wire.py")},
                pass_fds=[checker_control.fileno(), checker_end.fileno()],
                args=[str(checker_control.fileno()), str(checker_end.fileno()), "--non-dumpable"],
                uid=CHECKER_UID if uid_mapped(CHECKER_UID) else NOBODY,
            ))
        except BaseException:
            for sock in (host_end, checker_control, checker_end, solution_end):
                sock.close()
            raise
        checker_control.close()  # from now on only the checker holds its ends
        checker_end.close()
        return _judge(host_end, executions, tests, call_timeout_s, deadline, start_solution,
                      closing=[solution_end])


def _judge(host_end: socket.socket, executions: list, tests: list[str], call_timeout_s: float,
           deadline: float, start_solution: Any, closing: list | None = None) -> CheckReport:
    """Send the tests to the checker and collect its verdicts (the sandboxes are started; under
    rlimits, ``start_solution`` starts the solution once the checker is armed). Always finishes
    every execution and closes the sockets."""
    passed = [False] * len(tests)
    errors = ["not run"] * len(tests)
    finished, solution_state = False, None
    results: list = []
    try:
        control = wire.Channel(host_end.fileno())
        if start_solution is not None:
            armed = control.recv(deadline)
            if armed.get("armed") is not True:
                raise wire.ChannelClosed("the checker did not start")
            if armed.get("non_dumpable") is not True:
                _warn_dumpable()
        try:
            control.send({"tests": tests, "module_names": names_used_as_modules(tests),
                          "call_timeout_s": call_timeout_s,
                          "time_left_s": max(0.0, deadline - time.monotonic())})
        except wire.WireError as e:
            raise ValueError(f"code_tests: this example's tests are too large to check: {e}") from None
        if start_solution is not None:
            start_solution()
        solution, checker = executions
        while time.monotonic() < deadline:
            try:
                message = control.recv(min(deadline, time.monotonic() + 0.05))
            except wire.ChannelTimeout:
                solution.poll()  # memory limits: a sandbox past its limit is killed here
                checker.poll()
                continue
            except (wire.ChannelClosed, wire.WireError):
                break
            if message.get("done") is True:
                finished = True
                solution_state = message.get("solution")
                break
            i = message.get("test")
            if type(i) is int and 0 <= i < len(tests) and type(message.get("passed")) is bool:
                passed[i] = message["passed"]
                errors[i] = str(message.get("error", ""))
    except (wire.ChannelClosed, wire.ChannelTimeout):
        pass  # the checker ended (or never armed) before reading its tests: reported below
    finally:
        for execution in executions:
            execution.kill("timeout" if not finished else "killed")
        results = [execution.finish() for execution in executions]
        for sock in (host_end, *(closing or ())):
            sock.close()
    if not finished:
        timed_out = time.monotonic() >= deadline
        if solution_state is None:
            solution_state = "timeout: the check ran past timeout_s" if timed_out else "checker ended early"
        if len(results) == 2 and not timed_out:
            checker_result = results[1]
            log.warning(
                "code_tests: the checker ended without a verdict (status %s); scoring the %d "
                "tests it reported. stderr: %s", checker_result.status,
                sum(e != "not run" for e in errors), checker_result.stderr[-1000:],
            )
    return CheckReport(passed=passed, errors=errors, solution=solution_state, checker_finished=finished)


@functools.lru_cache(maxsize=1)
def _warn_dumpable() -> None:
    log.warning(
        "code_tests: the checker could not make itself non-dumpable (no ctypes in the sandbox's "
        "interpreter); under isolation=rlimits a solution of the same uid could trace it"
    )


@functools.cache
def self_test(isolation: str) -> None:
    """Fail at setup, not with every score 0 at step 1, if the checker cannot work here (e.g. the
    sandbox's interpreter is too old for it): one known-good check, once per isolation."""
    report = check_asserts(
        "def add(a, b):\n    return a + b\n",
        ["assert add(1, 2) == 3", "l = [add(1, 1)]\nassert l == [2]"],
        Limits(timeout_s=30, cpu_s=30, memory_mb=256),
        isolation,
        warm=False,
    )
    if report.passed != [True, True]:
        raise SandboxError(
            f"code_tests: the test checker does not work here (isolation={isolation}): "
            f"{report.errors} {report.solution}"
        )
