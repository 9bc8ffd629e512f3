"""The solution's side of an assert-style check: run the program under test, then answer calls.

Runs as the main program of the *solution's* sandbox, next to ``wire.py`` and ``solution.py``,
with one end of a socketpair whose other end the checker holds (its fd number is ``argv[1]``).
The solution runs in this same interpreter, so it can read, patch or replace anything here,
write whatever it likes to the socket, exit at any moment. That is expected: this process holds no
secret (it never sees a test or an expected value) and the checker believes nothing it says
beyond plain data, checked on arrival. It only has to work for honest solutions.

Protocol (one JSON object per line, values encoded by ``wire``):

1. once the solution's module has run: ``{"ready": true, "names": [[name, kind...], ...]}`` (or
   ``{"ready": false, "error": ...}``), describing each global name the solution defines:
   ``["data", value]`` (plain data, copied) or ``["remote"]`` (functions, classes, modules ...);
2. then, for each request ``{"id", "op", "target", "args", "kwargs", "name"}``, one reply
   ``{"id", "ok": value | "raised": [type name, message], "sync": [[ref, container], ...]}``:
   ``sync`` gives the new contents of every mutable container of the arguments, so that
   in-place mutation (``l.sort()``) reaches the checker's objects.
"""

from __future__ import annotations

import builtins
import operator
import os
import sys

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ms at each sandbox start

if TYPE_CHECKING:
    from typing import Any

if __package__:  # imported from the rewards package (the host's tests)
    from rewards.checker import wire
else:  # the main program of a sandbox, next to wire.py
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire  # type: ignore[no-redef]

def _message(error: BaseException) -> str:
    try:
        return str(error)[:500]
    except BaseException:  # a solution's exception whose __str__ raises
        return "(unprintable)"


def _call(target: Any, args: list, kwargs: dict, name: Any) -> Any:
    return target(*args, **kwargs)


def _setattr(target: Any, args: list, kwargs: dict, name: Any) -> None:
    setattr(target, name, args[0])


def _setitem(target: Any, args: list, kwargs: dict, name: Any) -> None:
    target[args[0]] = args[1]


def _delitem(target: Any, args: list, kwargs: dict, name: Any) -> None:
    del target[args[0]]


OPS = {
    "call": _call,
    "getattr": lambda target, args, kwargs, name: getattr(target, name),
    "setattr": _setattr,
    "getitem": lambda target, args, kwargs, name: target[args[0]],
    "setitem": _setitem,
    "delitem": _delitem,
    "len": lambda target, args, kwargs, name: len(target),
    "bool": lambda target, args, kwargs, name: bool(target),
    "contains": lambda target, args, kwargs, name: args[0] in target,
    "iter": lambda target, args, kwargs, name: iter(target),
    "next": lambda target, args, kwargs, name: next(target),
    "str": lambda target, args, kwargs, name: str(target),
    "int": lambda target, args, kwargs, name: int(target),
    "float": lambda target, args, kwargs, name: float(target),
    "index": lambda target, args, kwargs, name: operator.index(target),
}


class Server:
    """Holds the solution's namespace and the objects handed out as handles."""

    def __init__(self, namespace: dict[str, Any], channel: wire.Channel) -> None:
        self.namespace = namespace
        self.channel = channel
        self.objects: list[Any] = []  # handle -> object (kept alive: ids stay unique)
        self.handles: dict[int, int] = {}  # id(object) -> handle

    def handle_of(self, obj: Any) -> list:
        handle = self.handles.get(id(obj))
        if handle is None:
            handle = len(self.objects)
            self.objects.append(obj)
            self.handles[id(obj)] = handle
        return ["h", handle]

    def resolve(self, tag: list) -> Any:
        if len(tag) == 2 and tag[0] == "h" and type(tag[1]) is int and 0 <= tag[1] < len(self.objects):
            return self.objects[tag[1]]
        if len(tag) == 2 and tag[0] == "g" and type(tag[1]) is str and tag[1] in self.namespace:
            return self.namespace[tag[1]]
        raise wire.WireError(f"unknown object {tag!r}")

    def describe(self) -> list[list]:
        names = []
        for name, value in list(self.namespace.items()):
            if type(name) is not str or (name.startswith("__") and name.endswith("__")):
                continue
            names.append([name, *self._kind(value)])
        return names

    def _kind(self, value: Any) -> list:
        try:
            return ["data", wire.Encoder(_refuse).encode(value)]
        except (TypeError, wire.WireError, RecursionError):
            return ["remote"]

    def answer(self, request: dict) -> dict:
        rid = request.get("id")
        decoder = wire.Decoder(self.resolve)
        try:
            op = OPS[request["op"]]
            target = decoder.decode(request["target"])
            args = [decoder.decode(a) for a in request.get("args", [])]
            kwargs = {k: decoder.decode(v) for k, v in request.get("kwargs", [])}
        except (KeyError, TypeError, ValueError, wire.WireError) as e:
            return {"id": rid, "raised": ["ProtocolError", _message(e)], "sync": []}
        containers = dict(decoder.refs)  # ref -> the argument containers, as this side holds them
        try:
            result = op(target, args, kwargs, request.get("name"))
            raised = None
        except BaseException as e:  # SystemExit, KeyboardInterrupt too: the call failed
            result, raised = None, [type(e).__name__, _message(e)]
        encoder = wire.Encoder(self.handle_of, {id(obj): ref for ref, obj in containers.items()},
                               next_ref=max(containers, default=-1) + 1)
        try:
            sync = [[ref, encoder.contents(obj, ref)] for ref, obj in containers.items()]
            reply: dict[str, Any] = {"id": rid, "sync": sync}
            if raised is None:
                reply["ok"] = encoder.encode(result)
            else:
                reply["raised"] = raised
        except (wire.WireError, RecursionError) as e:
            return {"id": rid, "raised": ["WireError", _message(e)], "sync": []}
        return reply

    def serve(self) -> None:
        while True:
            try:
                request = self.channel.recv()
            except wire.ChannelClosed:
                return
            reply = self.answer(request)
            try:
                self.channel.send(reply)
            except wire.WireError as e:  # a result too large to send
                self.channel.send({"id": reply.get("id"), "raised": ["WireError", _message(e)], "sync": []})


def _refuse(obj: Any) -> list:
    raise TypeError("not plain data")


def main() -> None:
    channel = wire.Channel(int(sys.argv[1]))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "solution.py")
    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": builtins}
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as e:  # SystemExit at import time too: the solution did not load
        import traceback

        traceback.print_exc()
        channel.send({"ready": False, "error": f"{type(e).__name__}: {_message(e)}"})
        return
    server = Server(namespace, channel)
    try:
        channel.send({"ready": True, "names": server.describe()})
    except wire.WireError:
        channel.send({"ready": True, "names": [[n, "remote"] for n, *_ in server.describe()][:10000]})
    server.serve()


if __name__ == "__main__":
    main()
