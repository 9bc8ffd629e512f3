"""Tools for GRPO with tool calling, and the registry that turns the ``tools:`` config into trl's
``GRPOTrainer(tools=[...])``.

Contract: a tool is a plain, synchronous Python function with a type hint on every parameter and
a Google-style docstring (a description, then ``Args:`` with one line per parameter). trl calls it
as ``fn(**arguments)`` with the arguments of the model's tool call, names it by ``__name__``, and
shows the model the JSON schema ``transformers.utils.get_json_schema`` builds from it; an exception
becomes ``{"error": str(e)}`` for the model and counts in trl's ``tools/failure_frequency``.
Keyword-only parameters (after ``*``) and those bound in config are configuration, hidden from
the model. The result is text for the model (a dict or list is sent as JSON).

Built-ins: ``calculator`` (exact arithmetic, evaluated with ``ast``, bounded against hostile
input), ``python`` (the code runs in :mod:`rewards.sandbox`, bubblewrap by default). Your own
tool: reference it as ``"my_pkg.my_tools:fn"`` or ``"path/to/my_tools.py:fn"``.

Each config entry is ``{name: {fn, kwargs, timeout_s, max_output_chars}}``; the name is what the
model calls. :func:`build_tools` checks everything at setup (reference, keys, values, kwargs,
schema) and wraps each tool with a deadline, an output bound, one-line errors and counters
(:func:`stats`). Environments (trl's ``environment_factory``, classes whose public methods are
tools): :func:`resolve_environment`, :func:`check_environment`.

This package does not import ``align`` (it may import ``rewards``, never the reverse), and
importing it does not import torch, trl or transformers.
"""

from tools.registry import (
    REGISTRY,
    ToolCallError,
    ToolConfigError,
    ToolImportError,
    ToolSchemaError,
    UnknownToolError,
    build_tool,
    build_tools,
    check_environment,
    check_schema,
    register,
    reset_stats,
    resolve,
    resolve_environment,
    stats,
)

# Imported for their @register side effect; after the registry so they can import it.
from tools import calculator, python  # isort: skip

__all__ = [
    "REGISTRY",
    "ToolCallError",
    "ToolConfigError",
    "ToolImportError",
    "ToolSchemaError",
    "UnknownToolError",
    "build_tool",
    "build_tools",
    "calculator",
    "check_environment",
    "check_schema",
    "python",
    "register",
    "reset_stats",
    "resolve",
    "resolve_environment",
    "stats",
]
