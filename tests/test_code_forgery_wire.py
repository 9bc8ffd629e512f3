"""The checker's wire format on its own (no sandbox): what crosses is plain data rebuilt from
scratch, everything else is a handle, and a malformed message is an error, never a value."""

from __future__ import annotations

import collections
import math
from decimal import Decimal
from fractions import Fraction

import pytest

from rewards.checker import names_used_as_modules, wire


def handles(obj: object) -> list:
    return ["h", 0]


def round_trip(value: object) -> object:
    return wire.Decoder(lambda tag: ("handle", tag[1])).decode(wire.Encoder(handles).encode(value))


PLAIN = [
    None, True, False, 0, -1, 10**5000, -(2**70), 0.1, -0.0, math.inf, 1 + 2j, "", "é\ud800\n",
    b"\x00\xff", (), (1, (2, "x")), [], [1, [2, [3]]], {}, {"a": [1], 2: (3,)}, {1, 2}, frozenset({3}),
    slice(1, None, -1), Fraction(-1, 3), Decimal("1.10"), collections.Counter("aab"),
    collections.OrderedDict(b=1, a=2), collections.deque([1, 2], maxlen=5),
]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_plain_data_round_trips_exactly(value: object) -> None:
    back = round_trip(value)
    assert back == value and type(back) is type(value)
    if isinstance(value, collections.deque):
        assert back.maxlen == value.maxlen


def test_nan_defaultdict_and_aliasing() -> None:
    assert math.isnan(round_trip(math.nan))
    d = collections.defaultdict(list, {"k": [1]})
    back = round_trip(d)
    assert back == d and back.default_factory is list and back["new"] == []
    shared = [1]
    outer = round_trip([shared, shared])
    assert outer[0] is outer[1]
    cycle: list = []
    cycle.append(cycle)
    again = round_trip(cycle)
    assert again[0] is again


class Int(int):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


class Always:
    def __eq__(self, other: object) -> bool:
        return True


@pytest.mark.parametrize(
    "value",
    [Int(3), Always(), type("S", (str,), {})("x"), type("L", (list,), {})([1]), object(), len,
     collections.defaultdict(lambda: 0), iter([1])],
    ids=lambda v: type(v).__name__,
)
def test_anything_else_is_a_handle(value: object) -> None:
    assert round_trip(value) == ("handle", 0)
    assert round_trip([value]) == [("handle", 0)]


MALFORMED = [
    "not a list", [], [1], ["?"], ["N", 1], ["B", 1], ["B", "true"], ["i", 3], ["i", "xyz"],
    ["f", "0x1p"], ["f", 1.0], ["s", 1], ["y", "zz"], ["q", "1", "0"], ["D", "x" * 5000],
    ["t", "abc"], ["l", "0", [], "list", None], ["l", 0, [], "tuple", None], ["l", 0, []],
    ["d", 0, [[["N"]]], "dict"], ["d", 0, [[["l", 1, [], "list", None], ["N"]]], "dict"],
    ["d", 0, [], "defaultdict:os.system"], ["S", 0, [["l", 1, [], "list", None]]], ["r", 7],
    ["l", 0, [["l", 0, [], "list", None]], "list", None],  # a ref used twice
    ["l", 0, [], "deque", ["i", "-1"]], ["sl", [["N"]]], ["g", "x"], ["h", "0"],
]


@pytest.mark.parametrize("message", MALFORMED, ids=str)
def test_malformed_values_are_errors(message: object) -> None:
    def only_numbered_handles(tag: list) -> object:
        if tag[0] == "h" and type(tag[1]) is int:
            return ("handle", tag[1])
        raise wire.WireError("no such object")

    with pytest.raises(wire.WireError):
        wire.Decoder(only_numbered_handles).decode(message)


def test_too_deep_is_an_error_both_ways() -> None:
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(wire.WireError, match="deeper"):
        wire.Encoder(handles).encode(deep)
    message = ["t", []]
    for _ in range(wire.MAX_DEPTH + 5):
        message = ["t", [message]]
    with pytest.raises(wire.WireError, match="deeper"):
        wire.Decoder(handles).decode(message)


def test_sync_refills_the_callers_objects_in_place() -> None:
    mine = [3, 1]
    d = {"a": 1}
    encoder = wire.Encoder(handles)
    encoder.encode([mine, d])
    theirs = dict(enumerate(encoder.keep))  # ref -> the caller's objects: outer list, mine, d
    decoder = wire.Decoder(handles, theirs)
    decoder.container(["l", 1, [["i", "1"], ["i", "3"]], "list", None], 0, into=theirs[1])
    decoder.container(["d", 2, [[["s", "b"], ["i", "2"]]], "dict"], 0, into=theirs[2])
    assert mine == [1, 3] and d == {"b": 2}
    with pytest.raises(wire.WireError, match="a set in the message for a list"):
        decoder.container(["S", 1, []], 0, into=theirs[1])  # a list cannot turn into a set


def test_channel_limits(tmp_path) -> None:
    import os
    import socket
    import time

    a, b = socket.socketpair()
    sender, receiver = wire.Channel(a.fileno()), wire.Channel(b.fileno())
    sender.send({"x": 1})
    assert receiver.recv(time.monotonic() + 1) == {"x": 1}
    with pytest.raises(wire.ChannelTimeout):
        receiver.recv(time.monotonic() + 0.05)
    with pytest.raises(wire.WireError, match="limit"):
        sender.send({"x": "y" * wire.MAX_MESSAGE})
    os.write(a.fileno(), b"[1, 2]\n{broken\n")
    with pytest.raises(wire.WireError, match="JSON object"):
        receiver.recv(time.monotonic() + 1)
    with pytest.raises(wire.WireError, match="not a JSON message"):
        receiver.recv(time.monotonic() + 1)
    a.close()
    with pytest.raises(wire.ChannelClosed):
        receiver.recv(time.monotonic() + 1)
    b.close()


def test_names_used_as_modules() -> None:
    tests = ["assert math.isclose(f(1), 2)", "import re\nassert re.match('a', g())", "x = (", "h(1)"]
    assert names_used_as_modules(tests) == ["math", "re"]
