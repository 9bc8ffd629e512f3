"""``python``: run the policy's Python code in :mod:`rewards.sandbox` and show it what happened.

The code is model-written and hostile; it runs exactly as ``code_tests`` runs completions:
bubblewrap by default (no network, no file of the host but the read-only interpreter, one small
writable scratch tmpfs, an empty environment), a memory limit for the whole sandbox and a
wall-clock timeout after which every process in it is killed. Only the standard library is
available. ``isolation: rlimits`` (or ``auto``) accepts weaker isolation, see that module.

The model sees stdout, then stderr if any, then the status when the run did not end well
(``[exit code 1]``, ``[timed out after 5s]``, ``[killed: over the memory limit of 256 MB]``).
Each stream is cut by the sandbox at ``output_chars`` (marked ``[output truncated]``); keep
``2 * output_chars`` below the entry's ``max_output_chars`` so the status line is never cut.

Configuration (keyword-only, so never the model's; set them in the entry's ``kwargs``):
``timeout_s`` (keep it below the entry's ``timeout_s``, the deadline of the whole call),
``memory_mb``, ``isolation``, ``output_chars``. At setup the sandbox runs one known program, so a
machine without a working sandbox fails then, not at the first tool call.
"""

from __future__ import annotations

import functools

from tools.registry import register


def _limits(timeout_s: float, memory_mb: int, output_chars: int):  # -> rewards.sandbox.Limits
    from rewards.sandbox import Limits

    # The sandbox keeps at most this many bytes of each stream: no more than output_chars characters.
    return Limits(timeout_s=float(timeout_s), cpu_s=max(1, int(timeout_s)), memory_mb=int(memory_mb),
                  max_output_bytes=int(output_chars))


@functools.cache
def _self_test(isolation: str) -> None:
    from rewards.sandbox import SandboxError, run_python

    result = run_python("print(6 * 7)", limits=_limits(30, 256, 1000), isolation=isolation)
    if result.stdout.strip() != "42":
        raise SandboxError(
            f"python tool: the sandbox does not run a test program here (isolation={isolation}, "
            f"status {result.status}): {result.stderr[-300:]}"
        )


def _check_python(
    timeout_s: float = 10.0, memory_mb: int = 512, isolation: str = "bwrap", output_chars: int = 1500
) -> None:
    from rewards.sandbox import ISOLATIONS, resolve_isolation

    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
    if isinstance(output_chars, bool) or not isinstance(output_chars, int) or output_chars <= 0:
        raise ValueError(f"output_chars must be a positive int, got {output_chars!r}")
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    # Fail at setup, not at the first tool call, when the sandbox cannot run here.
    _self_test(resolve_isolation(isolation))


def _status(result, timeout_s: float, memory_mb: int) -> str:  # result: rewards.sandbox.ExecResult
    if result.status == "timeout":
        return f"[timed out after {timeout_s:g}s]"
    if result.status == "memory":
        return f"[killed: over the memory limit of {memory_mb} MB]"
    if result.status == "killed":
        return f"[killed (exit status {result.returncode}): CPU or file size limit, or a crash]"
    return f"[exit code {result.returncode}]"


@register("python", check=_check_python)
def python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    isolation: str = "bwrap",
    output_chars: int = 1500,
) -> str:
    """Run a Python program in a sandbox and return what it printed.

    Only the standard library is available; there is no network and no file access outside the
    working directory. Print the values you need.

    Args:
        code: The complete Python program to run.
        timeout_s: Wall-clock limit of the run, in seconds.
        memory_mb: Memory limit of the whole sandbox, in MiB.
        isolation: The sandbox: bwrap, rlimits or auto (see rewards.sandbox).
        output_chars: At most this many characters kept of stdout and of stderr, each.
    """
    from rewards.sandbox import run_python

    result = run_python(code, limits=_limits(timeout_s, memory_mb, output_chars), isolation=isolation)
    parts = [result.stdout.rstrip("\n")] if result.stdout else []
    if result.stderr:
        parts.append(result.stderr.rstrip("\n"))
    if not result.ok:
        parts.append(_status(result, timeout_s, memory_mb))
    return "\n".join(parts)
