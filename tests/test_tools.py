"""The tools registry and the built-in tools: real functions, real files, real sandboxes.

User tools are written to tmp_path (outside the repo) and plugged in by 'file.py:fn', as a user
would. The python tool's hostile programs need bubblewrap and are skipped where it cannot run."""

import textwrap
import time

import pytest
from transformers.utils import get_json_schema

import tools
from rewards.sandbox import bwrap_problem
from tools import (
    ToolCallError,
    ToolConfigError,
    ToolImportError,
    ToolSchemaError,
    UnknownToolError,
    build_tools,
    check_environment,
    resolve_environment,
)
from tools.calculator import calculator

needs_bwrap = pytest.mark.skipif(
    bwrap_problem() is not None, reason=f"bubblewrap sandbox unavailable: {bwrap_problem()}"
)


@pytest.fixture(autouse=True)
def _fresh_stats():
    tools.reset_stats()
    yield
    tools.reset_stats()


def user_tools(tmp_path, source: str, name: str = "user_tools.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def build_one(ref: str, **entry) -> object:
    (tool,) = build_tools({"tool": {"fn": ref, **entry}})
    return tool


# ---------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2", "3"),
        ("2 * (3 + 4)", "14"),
        ("-3 + +5", "2"),
        ("7 / 2", "3.5"),
        ("8 / 2", "4"),  # exact division stays an int
        ("10**30 / 10**10", "100000000000000000000"),  # exactly, not via a float
        ("1 / 3", "0.333333333333"),
        ("0.1 + 0.2", "0.3"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("2 ** 10", "1024"),
        ("2 ** -1", "0.5"),
        ("2 ** 100", "1267650600228229401496703205376"),
        ("(-1) ** 10**20", "1"),  # a huge exponent of a trivial base costs nothing
        ("4 ** 0.5", "2"),
        ("1e3 * 2", "2000"),
        ("1_000 + 1", "1001"),
        ("((((((1))))))", "1"),
        ("  12  ", "12"),
        # The deepest nesting the length bound allows is cheap to evaluate.
        ("(" * 99 + "1" + ")" * 99, "1"),
        ("-" * 199 + "1", "-1"),
    ],
)
def test_calculator_values(expression, expected):
    assert calculator(expression) == expected


HOSTILE = [
    ("9**9**9**9", "too large"),
    ("10**10**10", "too large"),
    ("2**5000", "too large"),
    ("(10**1000) * (10**1000)", "too large"),
    ("1e308 * 1e308", "too large for a float"),
    ("10**400 / 3", "too large for a float"),
    ("2.0 ** 100000", "too large for a float"),
    ("(" * 10_000 + "1" + ")" * 10_000, "too long"),
    ("2**2**2**2**2**2", "too large"),  # refused at the first power that would be too large
    ("1 / 0", "division by zero"),
    ("1 // 0", "division by zero"),
    ("1 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("x + 1", "names not supported"),
    ("__import__('os').system('id')", "function calls not supported"),
    ("(1).real", "attributes not supported"),
    ("[1, 2][0]", "subscripts not supported"),
    ("'a' * 3", "only numbers"),
    ("1 < 2", "comparisons not supported"),
    ("True + 1", "only numbers"),
    ("1j * 2", "only numbers"),
    ("1 << 4", "operator LShift not supported"),
    ("~1", "operator Invert not supported"),
    ("lambda: 1", "lambdas not supported"),
    ("1 +", "not a valid expression"),
    ("", "empty expression"),
    ("import os", "not a valid expression"),
]


@pytest.mark.parametrize(("expression", "error"), HOSTILE, ids=[e[:30] for e, _ in HOSTILE])
def test_calculator_refuses_hostile_input_quickly(expression, error):
    start = time.monotonic()
    with pytest.raises(ValueError, match=error):
        calculator(expression)
    assert time.monotonic() - start < 0.5


def test_calculator_error_reaches_the_model_as_one_line():
    (calc,) = build_tools({"calc": {"fn": "calculator"}})
    with pytest.raises(ToolCallError, match=r"^CalculatorError: division by zero$"):
        calc(expression="1/0")
    assert tools.stats()["calc"] == {"calls": 1, "errors": 1, "timeouts": 0, "cut": 0}


# ---------------------------------------------------------------- building: the schema the model sees


def test_built_tools_are_what_trl_takes():
    built = build_tools({"calc": {"fn": "calculator"}, "run_python": {"fn": "python", "kwargs": {"timeout_s": 5}}})
    assert [t.__name__ for t in built] == ["calc", "run_python"]
    schemas = [get_json_schema(t)["function"] for t in built]
    assert [s["name"] for s in schemas] == ["calc", "run_python"]
    assert schemas[0]["parameters"]["required"] == ["expression"]
    # The python tool's configuration (keyword-only) is never shown to the model.
    assert list(schemas[1]["parameters"]["properties"]) == ["code"]
    assert "timeout_s" not in built[1].__doc__ and "isolation" not in built[1].__doc__
    assert built[0](expression="6*7") == "42"


def test_bound_kwargs_are_hidden_from_the_model_and_cannot_be_passed(tmp_path):
    path = user_tools(tmp_path, '''
        def lookup(key: str, table: dict, default: str = "?") -> str:
            """Look a key up in the table.

            Args:
                key: The key to look up.
                table: The table (configuration,
                    bound in config).
                default: What to answer for a missing key.
            """
            return table.get(key, default)
    ''')
    tool = build_one(f"{path}:lookup", kwargs={"table": {"a": "1"}})
    schema = get_json_schema(tool)["function"]
    assert schema["name"] == "tool"
    assert list(schema["parameters"]["properties"]) == ["key", "default"]
    assert schema["parameters"]["required"] == ["key"]
    assert "table:" not in tool.__doc__ and "bound in config" not in tool.__doc__
    assert tool(key="a") == "1" and tool(key="b") == "?"
    with pytest.raises(ToolCallError, match="bad arguments for tool tool: .*'table'.*it takes: key, default"):
        tool(key="a", table={"a": "forged"})
    assert tools.stats()["tool"]["errors"] == 1


SCHEMA_PROBLEMS = [
    ("no docstring", "def f(x: int) -> str:\n    return str(x)\n", ToolSchemaError, "no docstring description"),
    (
        "missing type hint",
        'def f(x) -> str:\n    """Echo.\n\n    Args:\n        x: A value.\n    """\n    return str(x)\n',
        ToolSchemaError, "parameter 'x' has no type hint",
    ),
    (
        "missing Args entry",
        'def f(x: int, y: int) -> str:\n    """Add.\n\n    Args:\n        x: A number.\n    """\n    return str(x + y)\n',
        ToolSchemaError, "parameter 'y' is not described in the docstring's 'Args:'",
    ),
    (
        "misspelled Args entry",
        'def f(count: int) -> str:\n    """Count.\n\n    Args:\n        cuont: How many.\n    """\n    return ""\n',
        ToolSchemaError, "did you mean 'cuont'",
    ),
    (
        "**kwargs",
        'def f(x: int, **extra: int) -> str:\n    """Echo.\n\n    Args:\n        x: A value.\n        extra: More.\n    """\n    return ""\n',
        ToolSchemaError, r"\*extra cannot be described",
    ),
    (
        "a type transformers cannot describe",
        'class Point: pass\ndef f(p: Point) -> str:\n    """Echo.\n\n    Args:\n        p: A point.\n    """\n    return ""\n',
        ToolSchemaError, "transformers cannot build its JSON schema",
    ),
    (
        "positional-only",
        'def f(x: int, /) -> str:\n    """Echo.\n\n    Args:\n        x: A value.\n    """\n    return ""\n',
        ToolSchemaError, "positional-only",
    ),
    ("not callable", "f = 3\n", ToolConfigError, "resolved to a int, which is not callable"),
    ("async", 'async def f(x: int) -> str:\n    """Echo.\n\n    Args:\n        x: A value.\n    """\n', ToolConfigError, "is async"),
]


@pytest.mark.parametrize(("source", "error", "match"), [p[1:] for p in SCHEMA_PROBLEMS], ids=[p[0] for p in SCHEMA_PROBLEMS])
def test_user_tools_that_cannot_be_described_fail_at_setup(tmp_path, source, error, match):
    path = user_tools(tmp_path, source)
    with pytest.raises(error, match=match) as info:
        build_one(f"{path}:f")
    message = str(info.value)
    assert "\n" not in message and "tool 'tool'" in message


def test_future_annotations_in_a_user_file_resolve(tmp_path):
    path = user_tools(tmp_path, '''
        from __future__ import annotations
        from typing import Literal

        def pick(colour: Literal["red", "blue"], n: int | None = None) -> str:
            """Pick a colour.

            Args:
                colour: The colour.
                n: How many (optional).
            """
            return colour * (n or 1)
    ''')
    tool = build_one(f"{path}:pick")
    props = get_json_schema(tool)["function"]["parameters"]["properties"]
    assert props["colour"]["enum"] == ["red", "blue"]
    assert tool(colour="red", n=2) == "redred"


# ---------------------------------------------------------------- calling: errors, deadline, output bound

CALLS = '''
import time

def boom(x: int) -> str:
    """Fail loudly.

    Args:
        x: Anything.
    """
    raise RuntimeError("first line\\nsecond line\\n" + "x" * 2000)

def sleepy(x: int) -> str:
    """Never answer.

    Args:
        x: Anything.
    """
    while True:
        time.sleep(1)

def huge(n: int) -> list:
    """Return a lot.

    Args:
        n: How many items.
    """
    return list(range(n))

def counts(word: str) -> dict:
    """Count letters.

    Args:
        word: The word.
    """
    return {c: word.count(c) for c in sorted(set(word))}
'''


def test_a_raising_tool_propagates_one_line_and_is_counted(tmp_path):
    tool = build_one(f"{user_tools(tmp_path, CALLS)}:boom")
    with pytest.raises(ToolCallError) as info:
        tool(x=1)
    message = str(info.value)
    assert message.startswith("RuntimeError: first line second line x")
    assert "\n" not in message and len(message) <= 500
    assert isinstance(info.value.__cause__, RuntimeError)
    assert tools.stats()["tool"] == {"calls": 1, "errors": 1, "timeouts": 0, "cut": 0}


def test_a_stuck_tool_times_out_and_is_counted(tmp_path):
    tool = build_one(f"{user_tools(tmp_path, CALLS)}:sleepy", timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^tool tool did not answer within 0.5s$"):
        tool(x=1)
    assert time.monotonic() - start < 2
    assert tools.stats()["tool"] == {"calls": 1, "errors": 0, "timeouts": 1, "cut": 0}


def test_huge_output_is_cut_with_a_marker_and_counted(tmp_path):
    path = user_tools(tmp_path, CALLS)
    tool = build_one(f"{path}:huge", max_output_chars=50)
    out = tool(n=100_000)
    full = str(list(range(100_000))).replace(" ", ", ").replace(",,", ",")  # JSON spacing
    assert out.startswith("[0, 1, 2, 3") and out.endswith(f"... [output cut: {len(full) - 50} more characters]")
    assert len(out) < 100
    assert tool(n=3) == "[0, 1, 2]"
    assert tools.stats()["tool"] == {"calls": 2, "errors": 0, "timeouts": 0, "cut": 1}
    counts = build_one(f"{path}:counts")
    assert counts(word="aab") == '{"a": 2, "b": 1}'  # a dict reaches the model as JSON


def test_stats_are_per_tool_and_resettable():
    calc, calc2 = build_tools({"calc": {"fn": "calculator"}, "calc2": {"fn": "calculator"}})
    for _ in range(3):
        calc(expression="1+1")
    calc2(expression="1+1")
    assert {k: v["calls"] for k, v in tools.stats().items()} == {"calc": 3, "calc2": 1}
    tools.reset_stats()
    assert tools.stats() == {}


# ---------------------------------------------------------------- config errors

CONFIG_ERRORS = [
    ({"fn": "calculater"}, UnknownToolError, r"unknown tool 'calculater' \(did you mean 'calculator'\?\)"),
    ({"fn": "no_such_pkg_xyz.mod:f"}, ToolImportError, "cannot import module 'no_such_pkg_xyz.mod'"),
    ({"fn": "tools.calculator:calculater"}, ToolImportError, r"has no attribute 'calculater' \(did you mean 'calculator'\?\)"),
    ({"fn": "/nonexistent/dir/t.py:f"}, ToolImportError, "tool file '/nonexistent/dir/t.py' does not exist"),
    ({"fn": "calculator", "timeout": 3}, ToolConfigError, r"unknown keys \['timeout'\] \(did you mean 'timeout_s'\?\)"),
    ({"fn": "calculator", "timeout_s": 0}, ToolConfigError, "timeout_s must be a positive number of seconds, got 0"),
    ({"fn": "calculator", "timeout_s": True}, ToolConfigError, "timeout_s must be a positive number of seconds, got True"),
    ({"fn": "calculator", "timeout_s": "5"}, ToolConfigError, "timeout_s must be a positive number"),
    ({"fn": "calculator", "timeout_s": float("inf")}, ToolConfigError, "timeout_s must be a positive number"),
    ({"fn": "calculator", "timeout_s": float("nan")}, ToolConfigError, "timeout_s must be a positive number"),
    ({"fn": "calculator", "max_output_chars": "x"}, ToolConfigError, "max_output_chars must be a positive int, got 'x'"),
    ({"fn": "calculator", "max_output_chars": True}, ToolConfigError, "max_output_chars must be a positive int, got True"),
    ({"fn": "calculator", "max_output_chars": 10.5}, ToolConfigError, "max_output_chars must be a positive int"),
    ({"fn": "calculator", "kwargs": {"expresion": "1"}}, ToolConfigError, r"unknown kwarg 'expresion' \(did you mean 'expression'\?\)"),
    ({"fn": "calculator", "kwargs": [1]}, ToolConfigError, "kwargs must be a mapping"),
    ({"kwargs": {}}, ToolConfigError, "missing 'fn'"),
    ({"fn": "python", "kwargs": {"memory_mb": 8}}, ToolConfigError, "memory_mb must be an int >= 64"),
    ({"fn": "python", "kwargs": {"isolation": "docker"}}, ToolConfigError, "isolation must be one of"),
]


@pytest.mark.parametrize(("entry", "error", "match"), CONFIG_ERRORS, ids=[str(e[0])[:40] for e in CONFIG_ERRORS])
def test_config_errors_name_the_entry_and_the_fix(entry, error, match):
    with pytest.raises(error, match=match) as info:
        build_tools({"my_tool": entry})
    assert str(info.value).startswith("tool 'my_tool'") and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["1calc", "my-tool", "class", ""])
def test_tool_names_must_be_identifiers(name):
    with pytest.raises(ToolConfigError, match="not a valid identifier"):
        build_tools({name: {"fn": "calculator"}})


def test_a_user_file_that_does_not_import(tmp_path):
    path = user_tools(tmp_path, "import no_such_module_xyz\n", name="broken_tools.py")
    with pytest.raises(ToolImportError, match=r"tool file .*broken_tools.py failed to import: ModuleNotFoundError"):
        build_one(f"{path}:f")


def test_a_registered_check_and_a_users_check_run_at_setup(tmp_path):
    path = user_tools(tmp_path, '''
        def greet(name: str, *, greeting: str = "hello") -> str:
            """Greet someone.

            Args:
                name: Who to greet.
                greeting: The greeting word (configuration).
            """
            return f"{greeting} {name}"

        def _check(greeting="hello"):
            if not greeting.isalpha():
                raise ValueError(f"greeting must be a word, got {greeting!r}")

        greet.check_kwargs = _check
    ''')
    with pytest.raises(ToolConfigError, match="greeting must be a word, got '!!'"):
        build_one(f"{path}:greet", kwargs={"greeting": "!!"})
    tool = build_one(f"{path}:greet", kwargs={"greeting": "hi"})
    assert tool(name="Ada") == "hi Ada"
    assert list(get_json_schema(tool)["function"]["parameters"]["properties"]) == ["name"]


# ---------------------------------------------------------------- environments

ENVIRONMENTS = '''
class Good:
    def __init__(self):
        self.moves = 0

    def reset(self, **kwargs) -> str | None:
        self.moves = 0

    def move(self, direction: str) -> str:
        """Move one step.

        Args:
            direction: up, down, left or right.
        """
        self.moves += 1
        return "ok"

    def get_reward(self) -> float:
        return -self.moves

    def _helper(self):
        pass


class NoReset:
    def restart(self) -> None:
        pass

    def move(self, direction: str) -> str:
        """Move.

        Args:
            direction: Where.
        """
        return "ok"


class Undocumented(Good):
    def look(self, distance: int) -> str:
        return "nothing"


def make_good():
    return Good()


class Exploding:
    def __init__(self):
        raise RuntimeError("instantiated")

    def reset(self):
        pass
'''


def test_environments(tmp_path):
    path = user_tools(tmp_path, ENVIRONMENTS, name="envs.py")
    check_environment(resolve_environment(f"{path}:Good"), "good")
    check_environment(resolve_environment(f"{path}:make_good"), "factory")  # a factory is called once
    # one instance is constructed at setup, as trl constructs one per rollout
    with pytest.raises(ToolConfigError, match=r"environment 'boom': constructing one raised "
                                              r"RuntimeError: instantiated \(at .*envs.py:\d+\)"):
        check_environment(resolve_environment(f"{path}:Exploding"), "boom")
    with pytest.raises(ToolConfigError, match=r"environment 'e': NoReset has no callable reset\(\) \(did you mean 'restart'\?\)"):
        check_environment(resolve_environment(f"{path}:NoReset"), "e")
    with pytest.raises(ToolSchemaError, match="environment 'e' method 'look': no docstring description"):
        check_environment(resolve_environment(f"{path}:Undocumented"), "e")
    with pytest.raises(ToolImportError, match=r"has no attribute 'Goood' \(did you mean 'Good'\?\)"):
        resolve_environment(f"{path}:Goood")
    with pytest.raises(ToolConfigError, match="must look like 'pkg.module:Class'"):
        resolve_environment("Good")


# ---------------------------------------------------------------- the python tool (sandboxed)


@pytest.fixture(scope="module")
def run_python():
    if bwrap_problem() is not None:
        pytest.skip(f"bubblewrap sandbox unavailable: {bwrap_problem()}")
    (tool,) = build_tools({"run_python": {
        "fn": "python", "kwargs": {"timeout_s": 2, "memory_mb": 256, "output_chars": 1000},
        "max_output_chars": 3000, "timeout_s": 20,
    }})
    return tool


@needs_bwrap
def test_python_runs_code(run_python):
    assert run_python(code="print(sum(range(10)))") == "45"
    out = run_python(code="import sys; print('partial'); sys.exit('bad input')")
    assert out == "partial\nbad input\n[exit code 1]"


HOSTILE_CODE = [
    ("infinite loop", "while True:\n    pass", ["[timed out after 2s]"]),
    ("network", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", ["OSError", "[exit code 1]"]),
    ("write outside scratch", "open('/usr/owned.txt', 'w').write('x')", ["Read-only file system", "[exit code 1]"]),
    ("read host files", "print(open('/etc/passwd').read())", ["FileNotFoundError", "[exit code 1]"]),
    ("memory hog", "x = []\nwhile True:\n    x.append(bytearray(1 << 24))", ["MemoryError|\\[killed"]),
    ("huge output", "print('x' * 10**7)", ["[output truncated]"]),
]


@needs_bwrap
@pytest.mark.parametrize(("code", "expected"), [h[1:] for h in HOSTILE_CODE], ids=[h[0] for h in HOSTILE_CODE])
def test_python_contains_hostile_code(run_python, code, expected):
    import re

    start = time.monotonic()
    out = run_python(code=code)
    assert time.monotonic() - start < 15
    for pattern in expected:
        assert re.search(pattern if "|" in pattern else re.escape(pattern), out), out[-500:]
    assert len(out) <= 3000 + 100  # the sandbox's bound per stream, under the entry's
    assert "[output cut" not in out  # the status line always survives


@needs_bwrap
def test_python_output_beyond_the_entry_bound_is_cut(tmp_path):
    (tool,) = build_tools({"py": {"fn": "python", "max_output_chars": 100}})
    out = tool(code="print('y' * 5000)")
    assert out.startswith("y" * 100) and "[output cut:" in out
    assert tools.stats()["py"]["cut"] == 1


def test_python_tool_setup_fails_without_a_sandbox_when_bwrap_is_required():
    if bwrap_problem() is None:
        pytest.skip("bubblewrap works here: nothing to refuse")
    with pytest.raises(Exception, match="bubblewrap"):
        build_tools({"py": {"fn": "python"}})
