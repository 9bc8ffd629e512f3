"""Code rewards: run the completion's Python against the example's tests in the sandbox.

``code_tests`` rewards the fraction of an example's test cases the completion's code passes. The
tests come from a dataset column (``tests`` by default; ``kwargs.tests_column`` names another), in
one of the shapes public code datasets use, per example:

- a list of Python statements, usually asserts (MBPP ``test_list``, HumanEval-style checks):
  ``["assert add(1, 2) == 3", "assert add(0, 0) == 0"]``; each entry is one test, run in order in
  one namespace (so an entry may use what an earlier one defined);
- a list of stdin/stdout cases (APPS, CodeContests): ``[{"input": "1 2\\n", "output": "3\\n"}]``;
  the code runs once per case as a program reading stdin, and passes when its whole stdout matches
  (trailing whitespace of each line and trailing blank lines ignored). It may print up to
  :data:`MAX_OUTPUT_MB` (16 MiB), also through ``/dev/stdout``; a program printing more is killed
  and fails the case;
- APPS' ``{"inputs": [...], "outputs": [...]}``;
- any of these as a JSON string (how many datasets store them).

An entry of Python statements with nothing to execute (empty, whitespace, comments, ``pass``,
``...``, a bare string) is no test and is dropped; an example left with no test (or with none to
begin with) scores ``None`` (not applicable), never a pass. An entry that does not parse stays a
test, and fails. The code is the last fenced block (```python ... ```, or any ``` block), else the
whole completion.

Nothing the completion's code does can raise its score above what its return values earn:

- assert-style tests are judged by :mod:`rewards.checker`: the tests run in a separate, trusted
  checker process (its own sandbox) that never runs the completion's code; the code runs in its
  own sandbox and only answers calls with plain data. It never sees a test or an expected value,
  and cannot reach the checker or the channel the verdicts travel on. See that module for the
  design and for which test shapes are supported.
- stdin/stdout cases are judged on the host: the program sees its own code and its input, nothing
  else (no expected output, no other case), and only its stdout and exit status count.

Every execution runs in :mod:`rewards.sandbox` (bubblewrap by default; ``isolation: rlimits`` or
``auto`` accept weaker isolation, see that module: the checker design holds there too, but the
program can read what its uid can read). A sandbox that cannot start raises
:class:`~rewards.sandbox.SandboxError` (the completion is not at fault, so it is not scored 0); the
``on_error`` policy of the reward's config decides what training does then.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rewards.registry import register
from rewards.text import completion_text

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


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
    ...])``; ``None`` when there are none (entries with nothing to execute are none, see
    :func:`has_statement`). Raises ``ValueError`` for a shape it does not know."""
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
        kept = [t for t in tests if has_statement(t)]
        return ("asserts", kept) if kept else None
    if all(isinstance(t, Mapping) and "input" in t and "output" in t for t in tests):
        return "stdio", [(_as_text(t["input"]), _as_text(t["output"])) for t in tests]
    raise ValueError(
        "tests must be a list of Python statements or a list of {input, output} cases, got "
        f"{[type(t).__name__ for t in tests][:5]}"
    )


def has_statement(test: str) -> bool:
    """Does this entry of Python statements execute anything? Not when it is empty or only
    comments, ``pass``, ``...`` or bare string literals (a docstring). An entry that does not parse
    counts (it is a test, and it fails)."""
    try:
        body = ast.parse(test).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return True
    return any(
        not isinstance(node, ast.Pass)
        and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        for node in body
    )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):  # some datasets store lines as a list
        return "\n".join(str(v) for v in value)
    return str(value)


def _normalise_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


#: The most a stdin/stdout program may print (stdout, and stderr, each), in MiB. Its whole output
#: is compared with the expected one; a program that prints more is killed and fails the case.
MAX_OUTPUT_MB = 16


def _limits(timeout_s: float, memory_mb: int) -> Any:
    from rewards.sandbox import Limits

    return Limits(timeout_s=float(timeout_s), cpu_s=max(1, int(timeout_s)), memory_mb=int(memory_mb),
                  file_size_mb=MAX_OUTPUT_MB, max_output_bytes=MAX_OUTPUT_MB << 20)


def _score_asserts(
    code: str, tests: list[str], limits: Any, isolation: str, call_timeout_s: float | None
) -> float:
    from rewards.checker import check_asserts

    return check_asserts(code, tests, limits, isolation, call_timeout_s).score


def _score_stdio(code: str, cases: list[tuple[str, str]], limits: Any, isolation: str) -> float:
    from rewards.sandbox import map_parallel, run_python

    results = map_parallel(
        lambda case: run_python(code, stdin=case[0], limits=limits, isolation=isolation), cases
    )
    passed = sum(
        1
        for result, (_, expected) in zip(results, cases)
        if result.ok and not result.output_truncated
        and _normalise_output(result.stdout) == _normalise_output(expected)
    )
    return passed / len(cases)


def _check_code(
    tests_column: str = "tests",
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    isolation: str = "bwrap",
    language: str = "python",
    call_timeout_s: float | None = None,
) -> None:
    from rewards.checker import self_test
    from rewards.sandbox import ISOLATIONS, resolve_isolation

    if not isinstance(tests_column, str) or not tests_column:
        raise ValueError(f"tests_column must be a column name, got {tests_column!r}")
    for name, value in (("timeout_s", timeout_s), ("call_timeout_s", call_timeout_s)):
        if value is None and name == "call_timeout_s":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
    if language != "python":
        raise ValueError(f"language: only 'python' is supported, got {language!r}")
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    # Fail at setup, not at the first step, when the sandbox or the checker cannot run here.
    self_test(resolve_isolation(isolation))


@register("code_tests", check=_check_code)
def code_tests(
    completions: Sequence[Any],
    tests_column: str = "tests",
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    isolation: str = "bwrap",
    language: str = "python",
    call_timeout_s: float | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Fraction of the example's tests (column ``tests_column``) the completion's code passes;
    ``None`` when the example has no test (an entry with nothing to execute is none).

    Limits: ``memory_mb`` for the program's whole sandbox; ``timeout_s`` of wall clock for all of
    an example's assert-style tests together (each stdin/stdout case gets its own), and at most
    ``call_timeout_s`` (default ``timeout_s``) for one call into the program. Completions run in
    parallel, at most one sandbox (or checker + program pair) per CPU core."""
    if tests_column not in kwargs:
        raise KeyError(
            f"code_tests needs the dataset column {tests_column!r} (the example's test cases); "
            f"columns passed: {sorted(k for k in kwargs if not k.startswith('log_'))}. Rename the "
            "column with data.columns or set kwargs.tests_column"
        )
    all_tests = kwargs[tests_column]
    limits = _limits(timeout_s, memory_mb)
    from rewards.sandbox import map_parallel, resolve_isolation

    chosen = resolve_isolation(isolation)

    def score(pair: tuple[Any, Any]) -> float | None:
        completion, tests = pair
        parsed = parse_tests(tests)
        if parsed is None:
            return None
        mode, cases = parsed
        code = extract_code(completion_text(completion), language)
        if mode == "asserts":
            return _score_asserts(code, cases, limits, chosen, call_timeout_s)
        return _score_stdio(code, cases, limits, chosen)

    return map_parallel(score, list(zip(completions, all_tests, strict=True)))
