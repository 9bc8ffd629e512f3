"""The trusted checker: runs an example's assert-style tests against a solution it never executes.

Runs as the main program of its own sandbox (a PID namespace the solution cannot see), next to
``wire.py``. ``argv``: the fd of its control socket to the host (the tests come in, the verdicts
go out; the solution has no handle to it) and the fd of its socket to the solution's process
(``untrusted.py``). It marks itself non-dumpable first, so that under ``isolation="rlimits"`` a
process of the same uid cannot read its memory or its file descriptors through ``/proc``.

Each test runs here, with ``exec``, in one namespace shared by the tests (in order), where every
name the solution defines is bound to a :class:`Remote`: calling it sends the call to the solution
and turns the answer back into plain data (``wire``), so the comparison in ``assert f(1) == 2``
happens here, between real builtins, and ``2`` never leaves this process. Which name means what:

1. names a test binds itself (assignments, imports, ``def``) are its own;
2. builtins (``len``, ``set``, ``abs``, ``AssertionError`` ...) are always this interpreter's,
   whatever the solution defines;
3. a standard-library module a test uses as one (``math.isclose``) is this interpreter's own import,
   whatever the solution binds to that name;
4. every other name of the solution is a :class:`Remote` (or a copy, for plain data). What the
   solution says about its names is believed only as far as that: a claim can never make the
   checker run one of its own objects in the solution's place.

A test passes when it runs to the end without raising and the solution stayed in good standing
throughout. A solution that dies, hangs past the per-call limit or breaks the protocol is *gone*:
the test in progress and every later one fail (a test cannot catch its way out of that).
"""

from __future__ import annotations

import builtins
import os
import sys
import time

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ms at each sandbox start

if TYPE_CHECKING:
    from typing import Any

if __package__:  # imported from the rewards package (the host's tests)
    from rewards.checker import wire
else:  # the main program of a sandbox, next to wire.py
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire  # type: ignore[no-redef]

_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))
#: Standard-library modules never imported for a test (side effects at import).
_NO_IMPORT = frozenset({"antigravity", "this", "__hello__", "__phello__", "idlelib", "turtle",
                        "turtledemo", "tkinter", "pydoc", "webbrowser"})
#: Exceptions a solution's call may raise into a test as themselves (``except ValueError``);
#: anything else arrives as :class:`RemoteError`.
_EXCEPTIONS = {
    name: cls for name, cls in vars(builtins).items()
    if isinstance(cls, type) and issubclass(cls, Exception)
    and cls not in (StopIteration, StopAsyncIteration)
}
_REPLY_KEYS = frozenset({"id", "ok", "raised", "sync"})


class SolutionGone(BaseException):
    """The solution died, hung or broke the protocol: no later call can be believed.
    A ``BaseException`` so that a test's ``except Exception`` does not swallow it."""


class RemoteError(Exception):
    """The solution's call raised an exception that is not a builtin one."""


class Connection:
    """The checker's end of the socket to the solution."""

    def __init__(self, channel: wire.Channel, call_timeout_s: float, deadline: float) -> None:
        self.channel = channel
        self.call_timeout_s = call_timeout_s
        self.deadline = deadline
        self.gone: str | None = None
        self.calls = 0
        self.remotes: dict[int, Remote] = {}

    def die(self, why: str) -> SolutionGone:
        if self.gone is None:
            self.gone = why
        return SolutionGone(self.gone)

    def _receive(self) -> dict:
        limit = min(self.deadline, time.monotonic() + self.call_timeout_s)
        try:
            return self.channel.recv(limit)
        except wire.ChannelTimeout:
            raise self.die("timeout: no answer within the time limit") from None
        except wire.ChannelClosed:
            raise self.die("the solution's process ended") from None
        except wire.WireError as e:
            raise self.die(f"protocol violation: {e}") from None

    def ready(self) -> list:
        message = self._receive()
        if message.get("ready") is False:
            raise self.die(f"the solution did not load: {str(message.get('error'))[:300]}")
        if message.get("ready") is not True or type(message.get("names")) is not list:
            raise self.die("protocol violation: the first message must say the solution is ready")
        return message["names"]

    def remote(self, tag: list) -> Any:
        if len(tag) == 2 and tag[0] == "h" and type(tag[1]) is int and tag[1] >= 0:
            if tag[1] not in self.remotes:
                self.remotes[tag[1]] = Remote(self, tag)
            return self.remotes[tag[1]]
        raise wire.WireError(f"not an object the solution may name: {str(tag)[:80]}")

    def request(self, op: str, target: Remote, args: tuple = (), kwargs: dict | None = None,
                name: str | None = None) -> Any:
        if self.gone is not None:
            raise SolutionGone(self.gone)
        encoder = wire.Encoder(_tag_of)
        try:
            message = {
                "id": self.calls, "op": op, "name": name, "target": _tag_of(target),
                "args": [encoder.encode(a) for a in args],
                "kwargs": [[k, encoder.encode(v)] for k, v in (kwargs or {}).items()],
            }
        except wire.WireError as e:
            raise TypeError(f"cannot pass this value to the solution: {e}") from None
        containers = dict(enumerate(encoder.keep))  # ref -> the checker's own argument objects
        if self.channel.pending():  # an answer nobody asked for
            raise self.die("protocol violation: the solution wrote without being asked")
        try:
            self.channel.send(message)
        except wire.ChannelClosed:
            raise self.die("the solution's process ended") from None
        except wire.WireError as e:
            raise TypeError(f"arguments too large to send: {e}") from None
        reply = self._receive()
        self.calls += 1
        if reply.get("id") != message["id"] or not set(reply) <= _REPLY_KEYS:
            raise self.die("protocol violation: an answer to a question not asked")
        if ("ok" in reply) == ("raised" in reply) or type(reply.get("sync", [])) is not list:
            raise self.die("protocol violation: malformed answer")
        try:
            decoder = wire.Decoder(self.remote, containers)
            for entry in reply.get("sync", []):
                if type(entry) is not list or len(entry) != 2 or entry[0] not in containers:
                    raise wire.WireError("sync of an object that was not an argument")
                ref, value = entry
                if type(value) is not list or len(value) < 2 or value[0] not in ("l", "d", "S") or value[1] != ref:
                    raise wire.WireError("malformed sync")
                decoder.container(value, 0, into=containers[ref])
            if "ok" in reply:
                return decoder.decode(reply["ok"])
            raised = reply["raised"]
        except (wire.WireError, RecursionError, MemoryError) as e:
            raise self.die(f"protocol violation: {str(e)[:200]}") from None
        if type(raised) is not list or len(raised) != 2 or not all(type(x) is str for x in raised):
            raise self.die("protocol violation: malformed exception")
        kind, text = raised[0][:100], raised[1][:500]
        if kind == "StopIteration" and op == "next":
            raise StopIteration
        if kind in _EXCEPTIONS:
            raise _EXCEPTIONS[kind](text)
        raise RemoteError(f"{kind}: {text}")


def _tag_of(obj: Any) -> list:
    if type(obj) is Remote:
        return object.__getattribute__(obj, "_tag")
    raise wire.WireError(f"a {type(obj).__name__} cannot be sent to the solution (plain data only)")


class Remote:
    """An object that lives in the solution's process: a global name (a function, a class ...) or
    something a call returned that is not plain data (an instance, a generator, a bound method).

    Calls, attributes, items, iteration, ``len``, ``bool``, ``str``, ``int``, ``float`` and
    ``in`` are asked of the solution, and their results are plain data again. Comparison and
    hashing are by identity, never asked: an object of the solution cannot decide that it equals
    an expected value (which would also have to be sent to it). ``repr`` is local."""

    __slots__ = ("__weakref__", "_conn", "_tag")

    def __init__(self, conn: Connection, tag: list) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_tag", tag)

    def _ask(self, op: str, *args: Any, name: str | None = None, kwargs: dict | None = None) -> Any:
        conn = object.__getattribute__(self, "_conn")
        return conn.request(op, self, args, kwargs, name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and name not in ("__name__", "__qualname__", "__doc__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._ask("setattr", value, name=name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ask("call", *args, kwargs=kwargs)

    def __len__(self) -> int:
        return self._ask("len")

    def __bool__(self) -> bool:
        return self._ask("bool")

    def __iter__(self) -> Any:
        return self._ask("iter")

    def __next__(self) -> Any:
        return self._ask("next")

    def __contains__(self, item: Any) -> bool:
        return bool(self._ask("contains", item))

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._ask("setitem", key, value)

    def __delitem__(self, key: Any) -> None:
        self._ask("delitem", key)

    def __str__(self) -> str:
        return self._ask("str")

    def __int__(self) -> int:
        return self._ask("int")

    def __float__(self) -> float:
        return self._ask("float")

    def __index__(self) -> int:
        return self._ask("index")

    def __repr__(self) -> str:
        tag = object.__getattribute__(self, "_tag")
        return f"<solution's {f'object #{tag[1]}' if tag[0] == 'h' else tag[1]}>"

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__


# ---------------------------------------------------------------------------- the namespace


def _stdlib_import(module: str) -> Any:
    """This interpreter's own copy of a standard-library module, or ``None``."""
    if type(module) is not str or module.split(".")[0] not in _STDLIB or module.split(".")[0] in _NO_IMPORT:
        return None
    try:
        __import__(module)
    except Exception:
        return None
    return sys.modules.get(module)


def build_namespace(names: list, as_modules: list[str], conn: Connection) -> dict[str, Any]:
    """The namespace the tests run in (see the module docstring for what each name means);
    ``as_modules``: the names the tests use as ``name.attribute`` (found by the host, which parses
    the tests anyway)."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for entry in names:
        if type(entry) is not list or not entry or type(entry[0]) is not str:
            raise conn.die("protocol violation: malformed name")
        name, kind = entry[0], entry[1:]
        if not name.isidentifier() or (name.startswith("__") and name.endswith("__")):
            continue
        if hasattr(builtins, name):
            continue  # builtins are never the solution's
        if kind[:1] == ["data"] and len(kind) == 2:
            try:  # each name was encoded on its own: its refs are its own
                namespace[name] = wire.Decoder(conn.remote).decode(kind[1])
            except (wire.WireError, RecursionError) as e:
                raise conn.die(f"protocol violation: {e}") from None
        else:
            namespace[name] = Remote(conn, ["g", name])
    # A standard-library module used as one by a test is ours, whatever the solution calls by
    # that name (a class named math with an isclose that always says yes).
    for name in as_modules:
        if type(name) is str and name in _STDLIB and not hasattr(builtins, name):
            module = _stdlib_import(name)
            if module is not None:
                namespace[name] = module
    return namespace


# ---------------------------------------------------------------------------- main


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return "(unprintable)"


def _set_non_dumpable() -> bool:
    """PR_SET_DUMPABLE 0: others of this uid lose ptrace, /proc/<pid>/mem, fd, environ and
    pidfd_getfd on this process. False if it could not be done here (no ctypes)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0 and libc.prctl(3, 0, 0, 0, 0) == 0
    except Exception:  # an interpreter without ctypes
        return False


def run(control: wire.Channel, solution: wire.Channel) -> None:
    config = control.recv(time.monotonic() + 60)
    tests = config["tests"]
    started = time.monotonic()
    conn = Connection(solution, float(config["call_timeout_s"]), started + float(config["time_left_s"]))

    def report(i: int, passed: bool, error: str = "") -> None:
        control.send({"test": i, "passed": passed, "error": error[-1000:]})

    try:
        namespace = build_namespace(conn.ready(), config["module_names"], conn)
    except SolutionGone as e:
        for i in range(len(tests)):
            report(i, False, f"solution gone: {e}")
        control.send({"done": True, "solution": conn.gone})
        return
    for i, test in enumerate(tests):
        if conn.gone is not None:
            report(i, False, f"solution gone: {conn.gone}")
            continue
        try:
            code = compile(test, f"<test {i}>", "exec", dont_inherit=True, optimize=0)
            exec(code, namespace)
        except SolutionGone as e:
            report(i, False, f"solution gone: {e}")
        except BaseException as e:  # the test failed, or raised SystemExit: not a pass either
            report(i, False, f"{type(e).__name__}: {_text(e)}")
        else:
            # A test that swallowed the solution's death (``except BaseException``) did not pass.
            if conn.gone is not None:
                report(i, False, f"solution gone: {conn.gone}")
            else:
                report(i, True)
    control.send({"done": True, "solution": conn.gone})


def main() -> None:
    control, solution = wire.Channel(int(sys.argv[1])), wire.Channel(int(sys.argv[2]))
    if "--non-dumpable" in sys.argv[3:]:  # isolation=rlimits: no PID namespace hides this process
        control.send({"armed": True, "non_dumpable": _set_non_dumpable()})  # the solution starts now
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * wire.MAX_DEPTH + 100))
    run(control, solution)


if __name__ == "__main__":
    main()
