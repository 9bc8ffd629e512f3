"""code_tests cannot be forged: completions that do not solve the task, but try every way we know to
score anyway, score 0; honest solutions of many shapes score 1 (or their honest fraction).

Each forgery is a real program run through the real reward (real sandboxes, real checker). Most
are built on ORACLE: ``add`` answers from a table it learns from whatever the attack can reach
(files, frames, memory, stdin, other processes), and otherwise answers 0, which no test expects.
Against the old in-process harness (nonce on stdin, tests.json in /code, asserts run in the
solution's interpreter) most of these scored 1.0.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rewards import REGISTRY
from rewards.checker import check_asserts
from rewards.sandbox import Limits, bwrap_problem

needs_bwrap = pytest.mark.skipif(
    bwrap_problem() is not None, reason=f"bubblewrap sandbox unavailable: {bwrap_problem()}"
)
ISOLATIONS = [pytest.param("bwrap", marks=needs_bwrap), "rlimits"]
IS_ROOT = os.geteuid() == 0

# The task: add two integers. No test expects 0 or 7 (the forgeries' fallback answers), and no two
# tests share an answer.
ADD = ["assert add(2, 3) == 5", "assert add(10, -4) == 6", "assert add(-7, -8) == -15",
       "assert add(123, 877) == 1000"]
# The same task, judged with the helpers tests commonly use (a forgery may try to shadow them).
ADD_HELPERS = [
    "assert abs(add(2, 3) - 5) < 1e-9",
    "assert math.isclose(add(10, -4), 6)",
    "assert sorted([add(1, 1), add(2, 2)]) == [2, 4]",
    "assert set([add(1, 2)]) == {3} and len([add(0, 1)]) == 1 and isinstance(add(1, 1), int)",
    "import math\nassert math.isclose(add(0.5, 0.25), 0.75)",
    "assert round(add(1.25, 1.25), 1) == 2.5 and all([add(1, 2) == 3])",
]

ORACLE = r"""
import os, re, sys, gc
TABLE = {}
def learn(text):
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("latin-1")
    for a, b, c in re.findall(r"add\((-?\d+), *(-?\d+)\) *== *(-?\d+)", str(text)):
        TABLE[(int(a), int(b))] = int(c)
def look():
    pass
def add(a, b):
    try:
        look()
    except BaseException:
        pass
    return TABLE.get((a, b), 0)
"""


def oracle(look: str) -> str:
    """ORACLE with ``look()`` replaced by an attack (indented body)."""
    body = "\n".join("    " + line for line in look.strip("\n").splitlines())
    return ORACLE + "def look():\n" + body + "\n"


FIND_SOCKET = """
import os, stat
def rpc_fds():
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                found.append(int(name))
        except OSError:
            pass
    return found
"""

# (name, completion, tests, expected). ``tests`` None: ADD.
FORGERIES: list[tuple[str, str, list[str] | None, float]] = [
    # ---- reading the harness's state
    ("read /code and the program's folder", oracle("""
for d in {"/code", os.path.dirname(os.path.abspath(sys.argv[0])), os.getcwd()}:
    for name in os.listdir(d):
        try:
            learn(open(os.path.join(d, name), "rb").read())
        except OSError:
            pass
"""), None, 0.0),
    ("walk the filesystem for test files", oracle("""
for root in ("/code", "/tmp", "/sandbox", "/dev/shm", "/proc/self/cwd"):
    for top, dirs, files in os.walk(root):
        for name in files:
            try:
                learn(open(os.path.join(top, name), "rb").read(1 << 20))
            except OSError:
                pass
"""), None, 0.0),
    ("walk sys._getframe", oracle("""
f = sys._getframe()
while f is not None:
    learn(repr(f.f_locals)[:1 << 20]); learn(repr(f.f_globals)[:1 << 20])
    f = f.f_back
"""), None, 0.0),
    ("gc.get_objects for strings", oracle("""
for o in gc.get_objects():
    values = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()
    for v in list(values):
        if isinstance(v, (str, bytes, bytearray)):
            learn(v)
"""), None, 0.0),
    ("inspect.stack locals", oracle("""
import inspect
for info in inspect.stack():
    learn(repr(info.frame.f_locals)[:1 << 20])
"""), None, 0.0),
    ("read stdin", oracle("learn(sys.stdin.read())"), None, 0.0),
    ("read sys.argv and environ", oracle("learn(repr(sys.argv)); learn(repr(dict(os.environ)))"),
     None, 0.0),
    ("read /proc/*/cmdline and environ", oracle("""
for pid in os.listdir("/proc"):
    for part in ("cmdline", "environ"):
        try:
            learn(open(f"/proc/{pid}/{part}", "rb").read())
        except OSError:
            pass
"""), None, 0.0),
    ("read /proc/*/mem", oracle("""
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", 0)
    except OSError:
        continue
    for line in maps:
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if perms.startswith("r") and end - start < (64 << 20):
            try:
                mem.seek(start); learn(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                pass
"""), None, 0.0),
    ("open /proc/*/fd/*", oracle("""
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            handle = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
            learn(os.read(handle, 1 << 20)); os.close(handle)
        except OSError:
            pass
"""), None, 0.0),
    ("steal other processes' sockets (pidfd_getfd)", oracle("""
import ctypes, json, stat
libc = ctypes.CDLL(None, use_errno=True)
forged = "".join(json.dumps({"test": i, "passed": True, "error": ""}) + "\\n" for i in range(8))
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        pidfd = os.pidfd_open(int(pid))
    except OSError:
        continue
    for fd in range(1024):
        stolen = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if stolen < 0:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(stolen).st_mode):
                os.set_blocking(stolen, False)
                try:
                    learn(os.read(stolen, 1 << 20))
                except OSError:
                    pass
                os.write(stolen, (forged + '{"done": true, "solution": null}\\n').encode())
        except OSError:
            pass
        os.close(stolen)
    os.close(pidfd)
"""), None, 0.0),
    # ---- attacking the judge
    ("kill every other process", ORACLE + """
import signal
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
""", None, 0.0),
    ("stop the parent", ORACLE + "import signal\ntry:\n    os.kill(os.getppid(), signal.SIGSTOP)\nexcept OSError:\n    pass\n",
     None, 0.0),
    ("patch builtins exec/compile/__import__/AssertionError", ORACLE + """
import builtins
builtins.AssertionError = type("AssertionError", (BaseException,), {})
builtins.exec = lambda *a, **k: None
builtins.compile = lambda *a, **k: compile("pass", "x", "exec")
builtins.isinstance = lambda *a: True
real_import = builtins.__import__
builtins.__import__ = lambda name, *a, **k: real_import(name, *a, **k)
""", None, 0.0),
    ("sys.exit(0) at import", "import sys\nprint('0 pass 0')\nsys.exit(0)\ndef add(a, b): return 0", None, 0.0),
    ("os._exit(0) at import", "import os\nos._exit(0)", None, 0.0),
    ("sys.exit(0) mid-call", "import sys\ndef add(a, b):\n    sys.exit(0)", None, 0.0),
    ("os._exit(0) mid-call", "import os\ndef add(a, b):\n    os._exit(0)", None, 0.0),
    ("atexit prints verdicts", """
import atexit, os, sys
@atexit.register
def forge():
    for i in range(10):
        print(f"pass {i}"); print('{"test": %d, "passed": true, "error": ""}' % i)
    print('{"done": true, "solution": null}')
def add(a, b):
    raise SystemExit(0)
""", None, 0.0),
    ("excepthook and exit hooks", """
import sys, threading
sys.excepthook = lambda *a: print("pass 0")
threading.excepthook = lambda *a: print("pass 0")
sys.exitfunc = lambda: print("pass 0")
def add(a, b):
    raise RuntimeError("no")
""", None, 0.0),
    # ---- values that lie
    ("always-equal object", """
class Yes:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __le__(self, other): return True
    def __gt__(self, other): return True
    def __ge__(self, other): return True
    def __hash__(self): return 0
    def __bool__(self): return True
    def __abs__(self): return 0
    def __sub__(self, other): return self
    def __rsub__(self, other): return self
def add(a, b): return Yes()
""", ADD + ADD_HELPERS, 0.0),
    ("int subclass equal to everything", """
class Int(int):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = int.__hash__
def add(a, b): return Int(0)
""", None, 0.0),
    ("str and list subclasses equal to everything", """
class S(str):
    def __eq__(self, other): return True
    __hash__ = str.__hash__
class L(list):
    def __eq__(self, other): return True
def add(a, b): return S("5") if a == 2 else L([6])
""", None, 0.0),
    ("lying __repr__, __str__, __hash__, __class__", """
class Liar:
    __class__ = int
    def __repr__(self): return "5"
    def __str__(self): return "5"
    def __hash__(self): return hash(5)
    def __eq__(self, other): return True
def add(a, b): return Liar()
""", None, 0.0),
    ("__del__ forges at teardown", FIND_SOCKET + """
import os
class Ghost:
    def __del__(self):
        for fd in [1, 2, *rpc_fds()]:
            try:
                os.write(fd, b'{"id": 0, "ok": ["i", "7"], "sync": []}\\n{"test": 0, "passed": true}\\n')
            except OSError:
                pass
        os._exit(0)
def add(a, b):
    Ghost()
    return 0
""", None, 0.0),
    ("NaN and inf", "def add(a, b):\n    return float('nan') if a > 0 else float('inf')", ADD + ADD_HELPERS, 0.0),
    ("True for everything", "def add(a, b): return True", ADD, 0.0),
    ("value nested 5000 deep", """
def add(a, b):
    x = []
    for _ in range(5000):
        x = [x]
    return x
""", None, 0.0),
    # ---- forging output and the protocol
    ("fake verdict lines on stdout/stderr", """
import sys
for i in range(10):
    for line in (f"pass {i}", f"0 pass {i}", '{"test": %d, "passed": true, "error": ""}' % i):
        print(line); print(line, file=sys.stderr)
print('{"done": true, "solution": null}')
def add(a, b): return 0
""", None, 0.0),
    ("fake verdicts and answers on every fd", """
import os
LINES = b'{"test": 0, "passed": true, "error": ""}\\n{"id": 0, "ok": ["i", "7"], "sync": []}\\n'
for fd in range(1024):
    try:
        os.write(fd, LINES * 4)
    except OSError:
        pass
def add(a, b): return 0
""", None, 0.0),
    ("answers before being asked", FIND_SOCKET + """
import json
for fd in rpc_fds():
    for i in range(10):
        os.write(fd, (json.dumps({"id": i, "ok": ["i", "7"], "sync": []}) + "\\n").encode())
def add(a, b): return 0
""", None, 0.0),
    # (answers written ahead for later calls are believed if they arrive in order: they carry no
    # more than answering when asked, without even seeing the arguments)
    ("answers twice", FIND_SOCKET + """
import json
def add(a, b):
    for fd in rpc_fds():
        for i in range(8):
            os.write(fd, (json.dumps({"id": i, "ok": ["i", "7"], "sync": []}) + "\\n").encode())
    return 7
""", None, 0.0),
    ("malformed JSON on the socket", FIND_SOCKET + """
def add(a, b):
    for fd in rpc_fds():
        os.write(fd, b'{"id": 0, "ok": ["i", "5"\\n{{{{\\n')
    return 0
""", None, 0.0),
    ("a 9 MB answer", FIND_SOCKET + """
def add(a, b):
    for fd in rpc_fds():
        os.write(fd, b'{"id": 0, "ok": ["s", "' + b"x" * (9 << 20) + b'"]}\\n')
    return 0
""", None, 0.0),
    ("answer nested 100000 deep", FIND_SOCKET + """
def add(a, b):
    for fd in rpc_fds():
        os.write(fd, b'{"id": 0, "ok": ' + b'["t", [' * 100000 + b']]' * 100000 + b'}\\n')
        os._exit(0)
""", None, 0.0),
    ("answers with the machinery's own objects", """
import sys
server = sys.modules["__main__"].Server
CRAFTED = [["h", -1], ["g", "add"], ["r", 999], ["h", 10 ** 30], ["l", 0, [], "list", None],
           ["d", 0, [[["l", 1, [], "list", None], ["N"]]], "dict"], ["x"], ["i", "zz"], ["B", 1],
           ["f", "nan"], ["F", [["l", 2, [], "list", None]]]]
def answer(self, request):
    n = request.get("id")
    return {"id": n, "ok": CRAFTED[n % len(CRAFTED)], "sync": [[0, ["l", 0, [], "list", None]]]}
server.answer = answer
def add(a, b): return 0
""", ADD * 3, 0.0),
    ("claims about its names", """
import sys
server = sys.modules["__main__"].Server
server.describe = lambda self: [["add", "data", ["i", "7"]], ["math", "remote"], ["abs", "remote"],
                                ["AssertionError", "remote"], ["__builtins__", "remote"],
                                ["isclose", "stdlib", "unittest.mock", "ANY"]]
def add(a, b): return 0
""", ADD + ADD_HELPERS, 0.0),
    ("a forked child keeps answering", FIND_SOCKET + """
import json
if os.fork() == 0:
    fds = rpc_fds()
    for n in range(200):
        for fd in fds:
            try:
                os.write(fd, (json.dumps({"id": n, "ok": ["i", "7"], "sync": []}) + "\\n").encode())
            except OSError:
                pass
    os._exit(0)
def add(a, b): return 0
""", None, 0.0),
    ("old harness's magic lines with a guessed nonce", """
import sys
nonce = sys.stdin.readline().strip() or "0" * 32
for i in range(4):
    print(f"{nonce} pass {i}")
def add(a, b): return 0
""", None, 0.0),
    ("shadow the tests' helpers", """
class math:
    isclose = staticmethod(lambda *a, **k: True)
def abs(x): return 0
def sorted(x): return [2, 4]
def set(x): return {3}
def len(x): return 1
def isinstance(*a): return True
def round(*a): return 2.5
def all(x): return True
AssertionError = KeyError
def add(a, b): return 0
""", ADD_HELPERS, 0.0),
    ("write into /code and the test files", ORACLE + """
for path in ("/code/tests.json", "/code/main.py", "/code/wire.py"):
    try:
        open(path, "w").write("assert True")
    except OSError:
        pass
""", None, 0.0),
    ("ptrace and process_vm_readv", ORACLE + """
import ctypes
libc = ctypes.CDLL(None)
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        libc.ptrace(16, int(pid), 0, 0)  # PTRACE_ATTACH
""", None, 0.0),
    ("exceptions that are not errors", """
def add(a, b):
    raise (SystemExit, KeyboardInterrupt, GeneratorExit, StopIteration)[a % 4](0)
""", ADD + ["try:\n    add(1, 1)\nexcept Exception:\n    raise AssertionError('should not raise')"], 0.0),
    # ---- denial of service: fails, never hangs the trainer
    ("hang at import", "while True:\n    pass", None, 0.0),
    ("hang in a call", "import time\ndef add(a, b):\n    time.sleep(60)", None, 0.0),
    ("allocate without end", "def add(a, b):\n    x = []\n    while True:\n        x.append(bytearray(1 << 20))",
     None, 0.0),
    ("fork bomb", "import os\ndef add(a, b):\n    while True:\n        os.fork()", None, 0.0),
]
# Forgeries that kill or stop other processes of their uid: under rlimits (as root the sandbox's uid
# is nobody, shared by every concurrent sandbox) they would take down the other rows' sandboxes.
ALONE = {"kill every other process", "stop the parent", "a forked child keeps answering"}
# Forgeries that read other processes through /proc: under rlimits as a non-root user the program
# runs as your uid and can read your processes (documented), so they only prove something as root.
PROC_READERS = {"read /proc/*/cmdline and environ", "read /proc/*/mem", "open /proc/*/fd/*",
                "steal other processes' sockets (pidfd_getfd)"}

STACK = """
class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
    def pop(self):
        return self.items.pop()
    def size(self):
        return len(self.items)
    def __len__(self):
        return len(self.items)
    def __iter__(self):
        return iter(self.items)
    def __contains__(self, x):
        return x in self.items
    def __getitem__(self, i):
        return self.items[i]
    def __str__(self):
        return "Stack" + str(self.items)
"""

HONEST: list[tuple[str, str, list[str], float]] = [
    ("a function", "def add(a, b):\n    return a + b", ADD, 1.0),
    ("in a fenced block, with chatter", "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.",
     ADD + ADD_HELPERS, 1.0),
    ("a class with methods", STACK, [
        "s = Stack(); s.push(1); s.push(2); assert s.pop() == 2 and s.size() == 1",
        "s = Stack(); s.push('a'); assert len(s) == 1 and 'a' in s and 'b' not in s",
        "s = Stack()\nfor i in range(3):\n    s.push(i)\nassert list(s) == [0, 1, 2] and s[-1] == 2",
        "s = Stack(); s.push(5); assert str(s) == 'Stack[5]' and s.items == [5]",
        "s = Stack(); s.items = [9]; assert s.pop() == 9",
    ], 1.0),
    ("in-place mutation", """
def sort_in_place(l):
    l.sort()
def fill(d, s):
    d["a"] = 1
    s.add(2)
def nest(grid):
    grid[0].append(9)
""", [
        "l = [3, 1]; sort_in_place(l); assert l == [1, 3]",
        "d, s = {}, set(); fill(d, s); assert d == {'a': 1} and s == {2}",
        "row = [1]; grid = [row, row]; nest(grid); assert grid == [[1, 9], [1, 9]] and grid[0] is grid[1] is row",
    ], 1.0),
    ("generators and lists", """
def squares(n):
    return [i * i for i in range(n)]
def gen(n):
    yield from range(n)
def pairs(n):
    return ((i, i + 1) for i in range(n))
""", [
        "assert squares(4) == [0, 1, 4, 9]",
        "assert list(gen(3)) == [0, 1, 2] and sum(gen(4)) == 6",
        "assert dict(pairs(2)) == {0: 1, 1: 2}",
        "total = 0\nfor x in gen(5):\n    total += x\nassert total == 10",
    ], 1.0),
    ("floats compared with tolerance", "import math\ndef area(r):\n    return math.pi * r * r", [
        "assert math.isclose(area(2), 12.566, rel_tol=1e-3)",
        "assert abs(area(1) - 3.14159) < 1e-4",
        "from math import isclose\nassert isclose(area(0.5), 0.785398, rel_tol=1e-5)",
    ], 1.0),
    ("helper statements", "def f(x):\n    return x + 1\ndef is_even(n):\n    return n % 2 == 0", [
        "x = f(1)",
        "assert x == 2",
        "y = f(x)\nassert y == 3",
        "assert is_even(2) and not is_even(3)",
    ], 1.0),
    ("HumanEval-style check(candidate)", "def incr_list(l):\n    return [x + 1 for x in l]", [
        "METADATA = {}\n\ndef check(candidate):\n    assert candidate([]) == []\n    assert candidate([3, 2, 1]) == [4, 3, 2]\n\ncheck(incr_list)",
    ], 1.0),
    ("every plain type", """
from collections import Counter, OrderedDict, defaultdict, deque
from fractions import Fraction
from decimal import Decimal
def values():
    d = defaultdict(list); d["k"].append(1)
    return {"none": None, "bool": True, "int": 10 ** 5000, "neg0": -0.0, "str": "é\\ud800",
            "bytes": b"\\x00\\xff", "tuple": (1, (2,)), "set": {1, 2}, "frozen": frozenset({3}),
            "complex": 1 + 2j, "counter": Counter("aab"), "ordered": OrderedDict(a=1),
            "default": d, "deque": deque([1, 2], maxlen=3), "fraction": Fraction(1, 3),
            "decimal": Decimal("1.10"), "slice": slice(1, None, 2), "inf": float("inf")}
""", [
        "v = values()\nassert v['none'] is None and v['bool'] is True and v['int'] == 10 ** 5000",
        "import math\nv = values()\nassert math.copysign(1, v['neg0']) == -1 and v['str'] == 'é\\ud800' and v['bytes'] == b'\\x00\\xff'",
        "v = values()\nassert v['tuple'] == (1, (2,)) and v['set'] == {1, 2} and v['frozen'] == frozenset({3}) and v['complex'] == 1 + 2j",
        "from collections import Counter, deque\nv = values()\nassert v['counter'] == Counter('aab') and type(v['counter']) is Counter and v['ordered'] == {'a': 1}",
        "from collections import deque\nv = values()\nassert v['default']['k'] == [1] and v['default']['new'] == [] and v['deque'] == deque([1, 2]) and v['deque'].maxlen == 3",
        "from fractions import Fraction\nfrom decimal import Decimal\nv = values()\nassert v['fraction'] == Fraction(1, 3) and str(v['decimal']) == '1.10' and v['slice'] == slice(1, None, 2) and v['inf'] > 1e308",
    ], 1.0),
    ("exceptions", "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x ** 0.5", [
        "try:\n    root(-1)\nexcept ValueError as e:\n    assert 'negative' in str(e)\nelse:\n    raise AssertionError('no error')",
        "assert root(4) == 2.0",
    ], 1.0),
    ("prints, keyword arguments, a main block", """
import sys
def add(a, b=0):
    print("debug", a, b)
    print("debug", file=sys.stderr)
    return a + b
if __name__ == "__main__":
    print(add(*map(int, input().split())))
""", ADD + ["assert add(a=1, b=2) == 3 and add(5) == 5"], 1.0),
    ("objects passed back and attributes", """
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def moved(self, dx):
        return Point(self.x + dx, self.y)
def norm1(p):
    return abs(p.x) + abs(p.y)
""", [
        "p = Point(1, -2); assert (p.x, p.y) == (1, -2) and norm1(p) == 3",
        "q = Point(1, 1).moved(2); assert q.x == 3 and norm1(q) == 4",
    ], 1.0),
    ("recursion and a global table", """
import functools
PRIMES = [2, 3, 5, 7]
@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
ODD = [1, 3]
TABLE = {"a": [1], "b": [1]}
""", ["assert fib(80) == 23416728348467685", "assert PRIMES == [2, 3, 5, 7] and ODD == [1, 3]",
      "assert TABLE == {'a': [1], 'b': [1]}"], 1.0),
    ("a wrong answer scores its honest fraction", "def add(a, b):\n    return a + b if b > 0 else 0",
     ADD, 0.5),
    ("a solution that raises in one test", "def add(a, b):\n    if a == 10:\n        raise ValueError\n    return a + b",
     ADD, 0.75),
]


def run_table(rows: list[tuple[str, str, list[str] | None, float]], isolation: str,
              timeout_s: float = 3) -> dict[str, float | None]:
    fn = REGISTRY["code_tests"]
    scores = fn([code for _, code, _, _ in rows], tests=[tests or ADD for _, _, tests, _ in rows],
                isolation=isolation, timeout_s=timeout_s, memory_mb=256)
    return {name: score for (name, *_), score in zip(rows, scores)}


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_forgeries_score_zero(isolation: str) -> None:
    rows = [r for r in FORGERIES if r[0] not in ALONE
            and not (isolation == "rlimits" and not IS_ROOT and r[0] in PROC_READERS)]
    scores = run_table(rows, isolation)
    for name in ALONE:  # one at a time: nothing else of ours runs while they strike
        scores.update(run_table([r for r in FORGERIES if r[0] == name], isolation))
    assert len(scores) >= 30
    expected = {name: e for name, _, _, e in FORGERIES if name in scores}
    assert scores == expected


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_honest_solutions_score_what_they_earn(isolation: str) -> None:
    scores = run_table(HONEST, isolation, timeout_s=10)
    assert scores == {name: e for name, _, _, e in HONEST}


@needs_bwrap
def test_violations_are_named() -> None:
    """The protocol defences fire for the reason they exist (not merely a wrong answer)."""
    limits = Limits(timeout_s=5, memory_mb=256)
    cases = {
        "answers before being asked": "protocol violation",
        "answers twice": "protocol violation",
        "a 9 MB answer": "protocol violation",
        "answers with the machinery's own objects": "protocol violation",
        "os._exit(0) mid-call": "ended",
        "hang in a call": "timeout",
    }
    codes = {name: code for name, code, _, _ in FORGERIES}
    for name, reason in cases.items():
        # 12 calls: 8 answers written ahead by the first call run out by the ninth at the latest
        report = check_asserts(codes[name], ADD * 3, limits, "bwrap", call_timeout_s=1)
        assert report.passed == [False] * 12, name
        assert reason in (report.solution or ""), (name, report)


@needs_bwrap
def test_the_solution_sees_no_test() -> None:
    """What the solution's process can see: its own code and the protocol's, nothing of the tests."""
    spy = """
import os, sys
seen = []
for top in ("/code", "/sandbox", "/tmp", "/dev/shm"):
    for root, dirs, files in os.walk(top):
        seen += [os.path.join(root, f) for f in files]
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
def report():
    return [sorted(seen), pids, sys.stdin.read()]
"""
    report = check_asserts(spy, ["assert report() == 0"], Limits(timeout_s=5), "bwrap")
    assert report.passed == [False] and report.solution is None
    spied = check_asserts(spy, ["seen, pids, stdin = report()\nassert False, (seen, pids, stdin)"],
                          Limits(timeout_s=5), "bwrap").errors[0]
    # its own code (main.py is untrusted.py), the wire format, the boot script; its own PID
    # namespace (bubblewrap's init and itself); an empty stdin
    assert spied == ("AssertionError: (['/code/boot.py', '/code/main.py', '/code/solution.py', "
                     "'/code/wire.py'], [1, 2], '')")


@pytest.mark.parametrize(
    ("tests", "expected"),
    [
        (["", "   ", "# a comment", "pass", "...", "'''docstring'''", "\n# hi\npass\n"], None),
        (["# hi", "assert add(2, 3) == 5"], 1.0),
        (["assert add(2, 3) == 5", "assert add("], 0.5),  # a test that does not parse fails
    ],
)
def test_empty_entries_are_no_test(tests: list[str], expected: float | None) -> None:
    fn = REGISTRY["code_tests"]
    # even a program that does nothing at all cannot pass an empty test
    assert fn(["def add(a, b): return a + b"], tests=[tests], isolation="rlimits") == [expected]
    assert fn(["pass"], tests=[tests], isolation="rlimits") == [None if expected is None else 0.0]


STDIO = [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4\n", "output": "6\n"}]
STDIO_FORGERIES = [
    ("read everything readable", """
import os, re
found = ""
for top in ("/code", "/sandbox", "/tmp", "/proc/self", "/dev/shm"):
    for root, dirs, files in os.walk(top):
        for name in files:
            try:
                found += open(os.path.join(root, name), errors="replace").read(1 << 16)
            except OSError:
                pass
for pid in os.listdir("/proc"):
    try:
        found += open(f"/proc/{pid}/cmdline").read() + open(f"/proc/{pid}/environ").read()
    except OSError:
        pass
numbers = re.findall(r'"output": "(-?\\d+)', found)
print(numbers[0] if numbers else 0)
"""),
    ("exit code and output tricks", "import os, sys\nprint(0)\nsys.stdout.flush()\nos._exit(0)"),
]


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_stdio_programs_see_only_their_input(isolation: str) -> None:
    fn = REGISTRY["code_tests"]
    texts = [code for _, code in STDIO_FORGERIES] + ["a, b = map(int, input().split())\nprint(a + b)"]
    assert fn(texts, tests=[STDIO] * len(texts), isolation=isolation, timeout_s=5) == [0.0, 0.0, 1.0]


@needs_bwrap
def test_what_a_stdio_program_sees() -> None:
    from rewards.sandbox import run_python

    spy = """
import os, sys
print(sorted(os.listdir("/code")), sorted(os.listdir(".")), sorted(os.listdir("/proc/self/fd")))
print(sorted(os.environ), sys.stdin.read())
"""
    result = run_python(spy, stdin="the input", limits=Limits(timeout_s=5))
    listing, env = result.stdout.splitlines()
    assert listing == "['boot.py', 'main.py'] [] ['0', '1', '2', '3']"  # 3: listdir's own
    assert env == "['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONDONTWRITEBYTECODE', 'TMPDIR'] the input"


def test_forgeries_would_beat_an_in_process_harness(tmp_path: Path) -> None:
    """The table is not toothless: run in the solution's own interpreter (what the old harness did),
    the state-reading forgeries do score. A plain subprocess stands in for that harness here."""
    import json
    import subprocess
    import sys

    harness = tmp_path / "harness.py"
    harness.write_text(
        "import json, sys\ntests = json.load(open(sys.argv[2]))\nns = {'__name__': 'solution'}\n"
        "exec(open(sys.argv[1]).read(), ns)\npassed = 0\nfor t in tests:\n    try:\n"
        "        exec(t, ns)\n        passed += 1\n    except Exception:\n        pass\nprint(passed)\n"
    )
    (tmp_path / "tests.json").write_text(json.dumps(ADD))
    beaten = []
    for name in ("walk sys._getframe", "gc.get_objects for strings", "always-equal object",
                 "int subclass equal to everything", "patch builtins exec/compile/__import__/AssertionError"):
        code = {n: c for n, c, _, _ in FORGERIES}[name]
        (tmp_path / "solution.py").write_text(code)
        out = subprocess.run([sys.executable, str(harness), str(tmp_path / "solution.py"),
                              str(tmp_path / "tests.json")], capture_output=True, text=True, timeout=60, check=False)
        if out.stdout.strip() == str(len(ADD)):
            beaten.append(name)
    assert len(beaten) == 5, beaten


@pytest.mark.skipif(not IS_ROOT, reason="the checker's own uid is only possible as root")
@pytest.mark.parametrize(
    ("checker_uid", "non_dumpable", "expected"),
    [
        (65534, False, 1.0),  # both defences off: the theft works (the forgery has teeth)
        (65534, True, 0.0),  # non-dumpable alone stops it
        (None, False, 0.0),  # a uid of its own alone stops it
        (None, True, 0.0),  # as shipped
    ],
)
def test_rlimits_defences_each_stop_socket_theft(
    monkeypatch: pytest.MonkeyPatch, checker_uid: int | None, non_dumpable: bool, expected: float
) -> None:
    """Under isolation=rlimits nothing but the uid and dumpability keeps a solution from stealing
    the checker's sockets with pidfd_getfd and writing verdicts of its own to the host."""
    import rewards.checker as checker

    if checker_uid is not None:
        monkeypatch.setattr(checker, "CHECKER_UID", checker_uid)
    source = checker._source
    trusted = source("trusted.py")
    if not non_dumpable:
        trusted = trusted.replace('"non_dumpable": _set_non_dumpable()', '"non_dumpable": True')
    monkeypatch.setattr(checker, "_source", lambda name: trusted if name == "trusted.py" else source(name))
    code = {n: c for n, c, _, _ in FORGERIES}["steal other processes' sockets (pidfd_getfd)"]
    assert check_asserts(code, ADD, Limits(timeout_s=10), "rlimits").score == expected


@pytest.mark.skipif(bwrap_problem() is not None, reason="bubblewrap sandbox unavailable")
def test_pairs_started_ahead_run_one_program_each() -> None:
    """A check takes a pair of sandboxes started ahead: nothing a solution leaves (a file in the
    scratch, a patched builtin, a process) reaches the next check's solution or checker."""
    leave = ("import builtins, os, subprocess, sys\n"
             "open('/tmp/left', 'w').write('x')\n"
             "builtins.left = 1\n"
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
             "def add(a, b):\n    return a + b\n")
    find = ("import builtins, os\n"
            "def add(a, b):\n"
            "    return a + b + os.path.exists('/tmp/left') + hasattr(builtins, 'left')\n")
    fn = REGISTRY["code_tests"]
    for _ in range(3):
        assert fn([leave, find], tests=[ADD, ADD], timeout_s=10) == [1.0, 1.0]
