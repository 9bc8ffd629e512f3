"""The data that crosses between the trusted checker and the untrusted solution process.

Values travel as tagged JSON, so a value decoded on the checker's side is always a real builtin
built by the checker itself: nothing of the solution's classes, ``__eq__`` or ``__hash__`` can
cross. Types are checked with ``type(x) is ...`` (a subclass of ``int`` or ``list`` is not
plain data and travels as a handle). Tags:

==========  ===========================================  =======================================
tag         value                                        notes
==========  ===========================================  =======================================
``N``       ``None``
``B``       ``bool``                                     ``["B", true]``
``i``       ``int``                                      hex digits (no 4300-digit limit)
``f``       ``float``                                    ``float.hex`` (nan, inf, -0.0 exact)
``c``       ``complex``                                  two ``float.hex``
``s``       ``str``
``y``       ``bytes``                                    hex digits
``q``       ``fractions.Fraction``                       numerator, denominator (hex)
``D``       ``decimal.Decimal``                          its ``str``
``t``       ``tuple``                                    items
``F``       ``frozenset``                                items
``sl``      ``slice``                                    start, stop, step
``l``       ``list`` / ``collections.deque``             ref, items, kind, maxlen
``d``       ``dict`` / ``Counter`` / ``OrderedDict`` /   ref, [[key, value], ...], kind
            ``defaultdict`` (a builtin factory)
``S``       ``set``                                      ref, items
``r``       a mutable container seen earlier             ref (aliases and cycles)
``h``       an object of the solution process            handle number (see ``untrusted.py``)
``g``       a global name of the solution                (checker to solution only)
==========  ===========================================  =======================================

Mutable containers carry a ``ref`` number so that aliasing survives the trip and so that the
arguments a call mutated in place can be written back (``sync``). Messages are one JSON object
per line, at most :data:`MAX_MESSAGE` bytes, nested at most :data:`MAX_DEPTH` values deep;
anything else is a :class:`WireError`.

This file runs inside both sandboxes (standard library only) and is imported by the host's tests.
It is on the path of every check, so it keeps each sandbox's start cheap: messages go through the
C half of the standard library's ``json`` (``_json``: the same scanner and encoder ``json.loads``
and ``json.dumps`` use) without its Python layer, whose import (``re``, ``enum`` and the
compilation of its regular expressions) cost more than starting the interpreter itself; and
``collections`` is imported only where a message holds one of its types.
"""

from __future__ import annotations

import os
import select
import sys
import time

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ms at each sandbox start

if TYPE_CHECKING:  # kept out of the sandboxes' start-up time, like decimal and fractions below
    from collections.abc import Callable
    from typing import Any

MAX_MESSAGE = 8 << 20
MAX_DEPTH = 100
#: Factories a ``defaultdict`` may have to cross (a builtin type, rebuilt on the other side).
FACTORIES = {"int": int, "float": float, "str": str, "list": list, "set": set, "dict": dict,
             "tuple": tuple, "bool": bool, "None": None}
_FACTORY_NAMES = {v: k for k, v in FACTORIES.items()}


def _collections_types() -> tuple:
    """``deque``, ``Counter``, ``OrderedDict``, ``defaultdict``, or ``()`` while ``collections``
    was never imported (then no instance of them exists)."""
    loaded = sys.modules.get("collections")
    if loaded is None:
        return ()
    return (loaded.deque, loaded.Counter, loaded.OrderedDict, loaded.defaultdict)


class WireError(Exception):
    """A message that is not well-formed (too large, too deep, unknown tag, wrong types)."""


class ChannelClosed(Exception):
    """The other side closed the connection (or died)."""


class ChannelTimeout(Exception):
    """No complete message arrived before the deadline."""


# ---------------------------------------------------------------------------- values


class Encoder:
    """Encodes values; ``handle`` turns a non-plain object into a tag (``["h", n]`` or
    ``["g", name]``), or raises ``TypeError`` if it cannot cross."""

    def __init__(self, handle: Callable[[Any], list], refs: dict[int, int] | None = None,
                 next_ref: int = 0) -> None:
        self.handle = handle
        self.refs: dict[int, int] = dict(refs or {})  # id(container) -> ref
        self.keep: list[Any] = []  # containers whose ids are in refs stay alive meanwhile
        self.next_ref = next_ref

    def _new_ref(self, obj: Any) -> int:
        ref = self.next_ref
        self.next_ref += 1
        self.refs[id(obj)] = ref
        self.keep.append(obj)
        return ref

    def encode(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH}")
        t = type(x)
        if x is None:
            return ["N"]
        if t is bool:
            return ["B", x]
        if t is int:
            return ["i", format(x, "x")]
        if t is float:
            return ["f", x.hex()]
        if t is str:
            return ["s", x]
        if t is complex:
            return ["c", x.real.hex(), x.imag.hex()]
        if t is bytes:
            return ["y", x.hex()]
        if _is(t, "fractions", "Fraction"):
            return ["q", format(x.numerator, "x"), format(x.denominator, "x")]
        if _is(t, "decimal", "Decimal"):
            return ["D", str(x)]
        if t is tuple:
            return ["t", [self.encode(v, depth + 1) for v in x]]
        if t is frozenset:
            return ["F", [self.encode(v, depth + 1) for v in x]]
        if t is slice:
            return ["sl", [self.encode(v, depth + 1) for v in (x.start, x.stop, x.step)]]
        if t is list or t is dict or t is set or t in _collections_types():
            if id(x) in self.refs:
                return ["r", self.refs[id(x)]]
            return self.contents(x, self._new_ref(x), depth)
        return self.handle(x)

    def contents(self, x: Any, ref: int, depth: int = 0) -> list:
        """The full encoding of container ``x`` under ``ref`` (even if ``x`` is already known)."""
        t = type(x)
        collections = sys.modules.get("collections")  # loaded if x is one of its types
        if t is list or (collections is not None and t is collections.deque):
            kind, maxlen = ("list", None) if t is list else ("deque", x.maxlen)
            return ["l", ref, [self.encode(v, depth + 1) for v in x], kind,
                    None if maxlen is None else self.encode(maxlen)]
        if t is set:
            return ["S", ref, [self.encode(v, depth + 1) for v in x]]
        if t is not dict and t is collections.defaultdict:
            if x.default_factory not in _FACTORY_NAMES:
                return self.handle(x)
            kind = "defaultdict:" + _FACTORY_NAMES[x.default_factory]
        else:
            kind = "dict" if t is dict else {collections.Counter: "Counter",
                                             collections.OrderedDict: "OrderedDict"}[t]
        return ["d", ref, [[self.encode(k, depth + 1), self.encode(v, depth + 1)]
                           for k, v in x.items()], kind]


class Decoder:
    """Decodes values; ``handle(tag)`` turns ``["h", n]`` / ``["g", name]`` into an object."""

    def __init__(self, handle: Callable[[list], Any], refs: dict[int, Any] | None = None) -> None:
        self.handle = handle
        self.refs: dict[int, Any] = dict(refs or {})

    def decode(self, x: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH}")
        if type(x) is not list or not x or type(x[0]) is not str:
            raise WireError("a value must be a tagged list")
        tag, n = x[0], len(x)
        try:
            if tag == "N" and n == 1:
                return None
            if tag == "B" and n == 2 and type(x[1]) is bool:
                return x[1]
            if tag == "i" and n == 2 and type(x[1]) is str:
                return int(x[1], 16)
            if tag == "f" and n == 2 and type(x[1]) is str:
                return float.fromhex(x[1])
            if tag == "s" and n == 2 and type(x[1]) is str:
                return x[1]
            if tag == "c" and n == 3 and type(x[1]) is str and type(x[2]) is str:
                return complex(float.fromhex(x[1]), float.fromhex(x[2]))
            if tag == "y" and n == 2 and type(x[1]) is str:
                return bytes.fromhex(x[1])
            if tag == "q" and n == 3 and type(x[1]) is str and type(x[2]) is str:
                import fractions

                return fractions.Fraction(int(x[1], 16), int(x[2], 16))
            if tag == "D" and n == 2 and type(x[1]) is str and len(x[1]) <= 4096:
                import decimal

                return decimal.Decimal(x[1])
            if tag in ("t", "F", "sl") and n == 2 and type(x[1]) is list:
                items = [self.decode(v, depth + 1) for v in x[1]]
                if tag == "t":
                    return tuple(items)
                if tag == "F":
                    return frozenset(items)
                if len(items) == 3:
                    return slice(*items)
            if tag == "r" and n == 2 and type(x[1]) is int and x[1] in self.refs:
                return self.refs[x[1]]
            if tag in ("l", "d", "S"):
                return self.container(x, depth)
            if tag in ("h", "g"):
                return self.handle(x)
        except WireError:
            raise
        except (ValueError, TypeError, ZeroDivisionError, ArithmeticError, OverflowError) as e:
            raise WireError(f"bad {tag!r} value: {e}") from None
        except ImportError as e:  # decimal or fractions missing from this interpreter
            raise WireError(str(e)) from None
        raise WireError(f"unknown or malformed value {str(x)[:80]}")

    def container(self, x: list, depth: int, into: Any = None) -> Any:
        """Decode a container; with ``into``, refill that existing object in place instead (it
        must be of the same kind)."""
        tag, ref = x[0], x[1] if len(x) > 1 else None
        if type(ref) is not int or (into is None and ref in self.refs):
            raise WireError("container without a fresh ref")
        if tag == "l" and len(x) == 5 and type(x[2]) is list and x[3] in ("list", "deque"):
            maxlen = None if x[4] is None else self.decode(x[4], depth + 1)
            if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
                raise WireError("bad deque maxlen")
            if x[3] == "list":
                kind: type = list
                obj = into if into is not None else []
            else:
                import collections

                kind = collections.deque
                obj = into if into is not None else collections.deque(maxlen=maxlen)
            self._check_kind(obj, kind)
            self.refs[ref] = obj
            items = [self.decode(v, depth + 1) for v in x[2]]
            if type(obj) is list:
                obj[:] = items
            else:
                obj.clear()
                obj.extend(items)
            return obj
        if tag == "S" and len(x) == 3 and type(x[2]) is list:
            obj = into if into is not None else set()
            self._check_kind(obj, set)
            self.refs[ref] = obj
            items = [self.decode(v, depth + 1) for v in x[2]]
            obj.clear()
            obj.update(items)
            return obj
        if tag == "d" and len(x) == 4 and type(x[2]) is list and type(x[3]) is str:
            obj = into if into is not None else _new_dict(x[3])
            self._check_kind(obj, type(_new_dict(x[3])))
            if into is not None and x[3].startswith("defaultdict:"):
                obj.default_factory = _new_dict(x[3]).default_factory
            self.refs[ref] = obj
            pairs = []
            for pair in x[2]:
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("a dict item must be a [key, value] pair")
                pairs.append((self.decode(pair[0], depth + 1), self.decode(pair[1], depth + 1)))
            obj.clear()
            try:
                for k, v in pairs:
                    obj[k] = v
            except TypeError as e:  # an unhashable key
                raise WireError(f"bad dict key: {e}") from None
            return obj
        raise WireError(f"malformed {tag!r} container")

    @staticmethod
    def _check_kind(obj: Any, kind: type) -> None:
        if type(obj) is not kind:
            raise WireError(f"a {kind.__name__} in the message for a {type(obj).__name__}")


def _is(t: type, module: str, name: str) -> bool:
    """Is ``t`` the class ``module.name``? (No instance exists if the module was never imported.)"""
    loaded = sys.modules.get(module)
    return loaded is not None and getattr(loaded, name, None) is t


def _new_dict(kind: str) -> Any:
    if kind == "dict":
        return {}
    import collections

    if kind == "Counter":
        return collections.Counter()
    if kind == "OrderedDict":
        return collections.OrderedDict()
    if kind.startswith("defaultdict:") and kind[12:] in FACTORIES:
        return collections.defaultdict(FACTORIES[kind[12:]])
    raise WireError(f"unknown dict kind {kind!r}")


# ---------------------------------------------------------------------------- messages


class Channel:
    """One JSON object per line over a stream socket, with deadlines and a size cap."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def send(self, message: dict) -> None:
        data = _dumps(message).encode("ascii")
        if len(data) >= MAX_MESSAGE:
            raise WireError(f"message of {len(data)} bytes, the limit is {MAX_MESSAGE}")
        view = memoryview(data + b"\n")
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ChannelClosed(str(e)) from None

    def recv(self, deadline: float | None = None) -> dict:
        """The next message; raises :class:`ChannelTimeout` past ``deadline`` (a
        ``time.monotonic()`` value), :class:`ChannelClosed` at end of stream, :class:`WireError`
        for a message that is too large or not a JSON object."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return _parse(line)
            if len(self.buffer) >= MAX_MESSAGE:
                raise WireError(f"message longer than {MAX_MESSAGE} bytes")
            timeout = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self.poller.poll(timeout):
                raise ChannelTimeout()
            try:
                chunk = os.read(self.fd, 1 << 16)
            except (ConnectionResetError, OSError) as e:
                raise ChannelClosed(str(e)) from None
            if not chunk:
                raise ChannelClosed("end of stream")
            self.buffer += chunk

    def pending(self) -> bool:
        """Is there data the other side sent that nobody asked for yet?"""
        return bool(self.buffer) or bool(self.poller.poll(0))


def _not_plain_json(value: Any) -> Any:
    raise ValueError(f"not JSON: {value}")


class _ScannerContext:
    """What ``_json.make_scanner`` reads off a ``json.JSONDecoder``: strict JSON, plain dicts, no
    NaN or Infinity (no message has a float: floats travel as hex strings)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_not_plain_json)


try:
    from _json import encode_basestring_ascii as _encode_str
    from _json import make_encoder as _make_encoder
    from _json import make_scanner as _make_scanner
except ImportError:  # an interpreter without the C accelerator: the json package, at its cost
    import json

    def _dumps(message: dict) -> str:
        return json.dumps(message, separators=(",", ":"), allow_nan=False)

    def _loads(text: str) -> Any:
        return json.loads(text, parse_constant=_not_plain_json)
else:
    _SCAN = _make_scanner(_ScannerContext())

    def _dumps(message: dict) -> str:
        # As json.dumps(message, separators=(",", ":"), allow_nan=False) builds it.
        encode = _make_encoder({}, _not_plain_json, _encode_str, None, ":", ",", False, False, False)
        return "".join(encode(message, 0))

    def _loads(text: str) -> Any:
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            raise ValueError("no JSON value") from None
        if end != len(text):
            raise ValueError(f"extra data at {end}")
        return value


def _parse(line: bytes) -> dict:
    try:
        message = _loads(line.decode("ascii"))
    except (ValueError, RecursionError) as e:
        raise WireError(f"not a JSON message: {str(e)[:100]}") from None
    if type(message) is not dict:
        raise WireError("a message must be a JSON object")
    return message
