"""Code rewards: run the completion's Python against the example's tests in the sandbox.

``code_tests`` rewards the fraction of an example's test cases the completion's code passes. The
tests come from a dataset column (``tests`` by default; ``kwargs.tests_column`` names another), in
one of the shapes public code datasets use, per example:

- a list of Python statements, usually asserts (MBPP ``test_list``, HumanEval-style checks):
  ``["assert add(1, 2) == 3", "assert add(0, 0) == 0"]``; the code is run once, then each
  statement in turn, in the code's namespace;
- a list of stdin/stdout cases (APPS, CodeContests): ``[{"input": "1 2\\n", "output": "3\\n"}]``;
  the code runs once per case as a program reading stdin, and passes when its stdout matches
  (trailing whitespace of each line and trailing blank lines ignored);
- APPS' ``{"inputs": [...], "outputs": [...]}``;
- any of these as a JSON string (how many datasets store them).

An empty or missing test list gives ``None`` (not applicable). The code is the last fenced block
(```python ... ```, or any ``` block), else the whole completion.

Every execution runs in :mod:`rewards.sandbox` (bubblewrap by default; ``isolation: rlimits`` or
``auto`` accept weaker isolation, see that module). A sandbox that cannot start raises
:class:`~rewards.sandbox.SandboxError` (the completion is not at fault, so it is not scored 0); the
``on_error`` policy of the reward's config decides what training does then.

Results of assert-style tests cannot be forged by printing: the harness reads a random nonce from
stdin before the code runs and reports each passing test with it, and a code that exits early
fails the tests that did not run. Code that inspects the harness's own frames could still find the
nonce; stdin/stdout tests are judged outside the sandbox and cannot be forged at all.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from rewards.registry import register
from rewards.text import completion_text

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)

# The harness around assert-style tests. Runs inside the sandbox as the main program; the solution
# and the tests are files next to it in /code (read-only).
_HARNESS = """\
import os, sys, traceback
nonce = sys.stdin.readline().strip()
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "tests.json")) as f:
    import json
    tests = json.load(f)
with open(os.path.join(here, "solution.py")) as f:
    source = f.read()
out = os.dup(1)  # a private copy: the solution may replace or close sys.stdout
namespace = {"__name__": "solution", "__builtins__": __builtins__}
try:
    exec(compile(source, "solution.py", "exec"), namespace)
except BaseException:
    traceback.print_exc()
    sys.exit(1)
for i, test in enumerate(tests):
    try:
        exec(compile(test, f"test_{i}", "exec"), namespace)
    except BaseException:
        print(f"test {i} failed:", file=sys.stderr)
        traceback.print_exc()
    else:
        os.write(out, f"{nonce} pass {i}\\n".encode())
"""


def extract_code(text: str, language: str = "python") -> str:
    """The last fenced code block of ``text`` tagged ``language`` (or untagged); if none is
    tagged so, the last fenced block of any kind; without fences, the whole text."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    aliases = {"python": {"python", "py", "python3"}}.get(language, {language})
    tagged = [body for tag, body in blocks if tag.lower() in aliases or not tag]
    return (tagged or [body for _, body in blocks])[-1]


def parse_tests(tests: Any) -> tuple[str, list[Any]] | None:
    """Normalise one example's tests to ``("asserts", [stmt, ...])`` or ``("stdio", [(in, out),
    ...])``; ``None`` when there are none. Raises ``ValueError`` for a shape it does not know."""
    if tests is None:
        return None
    if isinstance(tests, (bytes, str)):
        text = tests.decode() if isinstance(tests, bytes) else tests
        if not text.strip():
            return None
        try:
            tests = json.loads(text)
        except json.JSONDecodeError:
            tests = [text]  # a single block of asserts
    if isinstance(tests, Mapping):
        if "inputs" in tests and "outputs" in tests:
            inputs, outputs = tests["inputs"], tests["outputs"]
            if len(inputs) != len(outputs):
                raise ValueError(f"tests: {len(inputs)} inputs but {len(outputs)} outputs")
            tests = [{"input": i, "output": o} for i, o in zip(inputs, outputs)]
        else:
            raise ValueError(
                f"tests: a mapping needs 'inputs' and 'outputs' lists, got keys {sorted(tests)}"
            )
    if not isinstance(tests, Sequence) or isinstance(tests, str):
        raise ValueError(f"tests must be a list, got {type(tests).__name__}")
    tests = list(tests)
    if not tests:
        return None
    if all(isinstance(t, str) for t in tests):
        return "asserts", tests
    if all(isinstance(t, Mapping) and "input" in t and "output" in t for t in tests):
        return "stdio", [(_as_text(t["input"]), _as_text(t["output"])) for t in tests]
    raise ValueError(
        "tests must be a list of Python statements or a list of {input, output} cases, got "
        f"{[type(t).__name__ for t in tests][:5]}"
    )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):  # some datasets store lines as a list
        return "\n".join(str(v) for v in value)
    return str(value)


def _normalise_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def _limits(timeout_s: float, memory_mb: int) -> Any:
    from rewards.sandbox import Limits

    return Limits(timeout_s=float(timeout_s), cpu_s=max(1, int(timeout_s)), memory_mb=int(memory_mb))


def _score_asserts(code: str, tests: list[str], limits: Any, isolation: str) -> float:
    from rewards.sandbox import run_python

    nonce = secrets.token_hex(16)
    result = run_python(
        _HARNESS,
        stdin=nonce + "\n",
        limits=limits,
        isolation=isolation,
        files={"solution.py": code, "tests.json": json.dumps(tests)},
    )
    passed = set()
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == nonce and parts[1] == "pass" and parts[2].isdigit():
            passed.add(int(parts[2]))
    return len(passed & set(range(len(tests)))) / len(tests)


def _score_stdio(code: str, cases: list[tuple[str, str]], limits: Any, isolation: str) -> float:
    from rewards.sandbox import map_parallel, run_python

    results = map_parallel(
        lambda case: run_python(code, stdin=case[0], limits=limits, isolation=isolation), cases
    )
    passed = sum(
        1
        for result, (_, expected) in zip(results, cases)
        if result.ok and _normalise_output(result.stdout) == _normalise_output(expected)
    )
    return passed / len(cases)


def _check_code(
    tests_column: str = "tests",
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    isolation: str = "bwrap",
    language: str = "python",
) -> None:
    from rewards.sandbox import ISOLATIONS, resolve_isolation

    if not isinstance(tests_column, str) or not tests_column:
        raise ValueError(f"tests_column must be a column name, got {tests_column!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
    if language != "python":
        raise ValueError(f"language: only 'python' is supported, got {language!r}")
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    # Fail at setup, not at the first step, when the sandbox cannot run here.
    resolve_isolation(isolation)


@register("code_tests", check=_check_code)
def code_tests(
    completions: Sequence[Any],
    tests_column: str = "tests",
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    isolation: str = "bwrap",
    language: str = "python",
    **kwargs: Any,
) -> list[float | None]:
    """Fraction of the example's tests (column ``tests_column``) the completion's code passes, run
    in the sandbox with ``timeout_s`` (wall clock, per execution) and ``memory_mb`` limits.
    ``None`` when the example has no tests. Completions run in parallel, at most one sandbox per
    CPU core."""
    if tests_column not in kwargs:
        raise KeyError(
            f"code_tests needs the dataset column {tests_column!r} (the example's test cases); "
            f"columns passed: {sorted(k for k in kwargs if not k.startswith('log_'))}. Rename the "
            "column with data.columns or set kwargs.tests_column"
        )
    all_tests = kwargs[tests_column]
    limits = _limits(timeout_s, memory_mb)
    from rewards.sandbox import map_parallel

    def score(pair: tuple[Any, Any]) -> float | None:
        completion, tests = pair
        parsed = parse_tests(tests)
        if parsed is None:
            return None
        mode, cases = parsed
        code = extract_code(completion_text(completion), language)
        if mode == "asserts":
            return _score_asserts(code, cases, limits, isolation)
        return _score_stdio(code, cases, limits, isolation)

    return map_parallel(score, list(zip(completions, all_tests, strict=True)))
