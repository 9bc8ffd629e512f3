"""The tool registry: names -> functions, references -> functions, config -> trl's ``tools=[...]``.

A tool is a plain Python function the policy calls during a GRPO rollout. trl 1.16's GRPOTrainer
calls it as ``fn(**arguments)`` with the arguments of the model's tool call, names it by
``fn.__name__``, shows the model the JSON schema ``transformers.utils.get_json_schema(fn)`` builds
from its type hints and its Google-style docstring, and turns an exception into
``{"error": str(e)}`` for the model (counted in its ``tools/failure_frequency`` metric).

A tool is referenced from config like a reward: a registered name (``calculator``), an import path
(``my_pkg.my_tools:fn``) or a file path (``path/to/my_tools.py:fn``). :func:`build_tools` turns the
``tools:`` section into the functions trl takes; each is a new plain function that:

- is named by its config entry (the name the model sees), with the original's signature,
  annotations and docstring minus the *configuration* parameters: those bound in ``kwargs`` and
  all keyword-only ones (after ``*``). The model never sees or sets configuration: a call that
  passes one is refused, so a policy cannot raise its own time limit or weaken a sandbox;
- runs the call under a deadline (``timeout_s``) and cuts its text to ``max_output_chars``;
- raises one-line errors (trl shows ``str(e)`` to the model; a traceback would waste its context);
- counts calls, errors, timeouts and cut outputs (:func:`stats`, :func:`reset_stats`).

Everything that can be checked is checked at setup (:func:`build_tools`): the reference, the entry's
keys and values, the bound kwargs (and the tool's own ``check``), and the schema the model will see
(a description, a type hint and an ``Args:`` line per visible parameter, no ``*args``/``**kwargs``).

Environments (trl's ``environment_factory``) are classes whose public methods are tools; see
:func:`resolve_environment` and :func:`check_environment`.
"""

from __future__ import annotations

import inspect
import json
import keyword
import math
import re
import threading
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rewards.registry import _closest, _plain, check_spec_keys, load_reference

ToolFn = Callable[..., Any]

REGISTRY: dict[str, ToolFn] = {}

SPEC_KEYS = ("fn", "kwargs", "timeout_s", "max_output_chars")
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_OUTPUT_CHARS = 4000
#: Characters of an exception message shown to the model.
ERROR_CHARS = 500
#: Methods of an environment that trl does not expose as tools.
ENVIRONMENT_HOOKS = ("reset", "get_reward")


class ToolConfigError(ValueError):
    """A tool or environment is configured wrongly (unknown key, bad value, bad kwarg ...)."""


class UnknownToolError(ToolConfigError):
    """A tool name is neither registered nor an import path."""


class ToolImportError(ToolConfigError):
    """An import-path or file-path reference could not be loaded."""


class ToolSchemaError(ToolConfigError):
    """The model could not be shown how to call the tool: no docstring, a missing type hint or
    ``Args:`` entry, ``*args``/``**kwargs``, or a type transformers cannot turn into JSON schema."""


class ToolCallError(RuntimeError):
    """A tool call failed (bad arguments from the model, or the tool raised); one line."""


def register(name: str, *, check: Callable[..., None] | None = None) -> Callable[[ToolFn], ToolFn]:
    """Register ``fn`` under ``name``. ``check``, if given, is called with the bound kwargs at
    setup and raises ``ValueError`` for values the signature cannot reject; it is stored as
    ``fn.check_kwargs`` (a user's tool may carry the same attribute), as for rewards."""

    def decorator(fn: ToolFn) -> ToolFn:
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise ToolConfigError(f"tool name {name!r} is already registered to {REGISTRY[name]!r}")
        if check is not None:
            fn.check_kwargs = check  # type: ignore[attr-defined]
        REGISTRY[name] = fn
        return fn

    return decorator


def resolve(ref: str) -> ToolFn:
    """The tool function for ``ref``: a registered name, ``"pkg.module:function"`` or
    ``"path/to/file.py:function"`` (loaded as rewards load theirs, see
    :func:`rewards.registry.load_reference`)."""
    if not isinstance(ref, str) or not ref:
        raise ToolConfigError(f"a tool reference must be a non-empty string, got {ref!r}")
    if ref in REGISTRY:
        return REGISTRY[ref]
    if ":" not in ref:
        raise UnknownToolError(
            f"unknown tool {ref!r}{_closest(ref, REGISTRY)}. Registered tools: "
            f"{', '.join(sorted(REGISTRY))}. For your own function use 'pkg.module:function' "
            "or 'path/to/file.py:function'."
        )
    obj = load_reference(ref, "tool", config_error=ToolConfigError, import_error=ToolImportError)
    if not callable(obj):
        raise ToolConfigError(f"tool {ref!r} resolved to a {type(obj).__name__}, which is not callable")
    return obj


# ------------------------------------------------------------------------------ docstrings

_SECTION = re.compile(r"(Args|Returns|Raises|Yields|Examples?|Notes?):\s*$")
_ARG_LINE = re.compile(r"\s*(\*{0,2}\w+)\s*(\([^()\n]*\))?\s*:")


def _doc_parts(doc: str) -> tuple[str, list[tuple[str | None, list[str]]]]:
    """Split a cleaned Google-style docstring into its description and the entries of its
    ``Args:`` section, ``[(name or None for a non-entry line, lines), ...]`` with the Args header
    and every other line kept in order (name ``""``), so entries can be dropped and the rest
    rebuilt. Only ``Args:`` counts, as in transformers' parser."""
    lines = doc.splitlines()
    out: list[tuple[str | None, list[str]]] = []
    in_args, section_indent, entry_indent = False, 0, None
    for line in lines:
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        if _SECTION.fullmatch(stripped):
            in_args, section_indent, entry_indent = stripped == "Args:", indent, None
            out.append(("", [line]))
            continue
        if in_args and stripped and indent <= section_indent:
            in_args = False
        match = _ARG_LINE.match(line) if in_args and stripped else None
        if match and (entry_indent is None or indent <= entry_indent):
            entry_indent = indent
            out.append((match.group(1), [line]))
        elif in_args and out and out[-1][0] and (not stripped or indent > (entry_indent or 0)):
            out[-1][1].append(line)  # the continuation of an entry (or a blank line after it)
        else:
            out.append(("", [line]))
    head = re.split(r"^\s*(?:Args|Returns|Raises):\s*$", doc, maxsplit=1, flags=re.MULTILINE)[0]
    return head.strip(), out


def documented_args(doc: str) -> set[str]:
    """The parameter names of a docstring's ``Args:`` section."""
    return {name for name, _ in _doc_parts(doc)[1] if name}


def _without_args(doc: str, hidden: set[str]) -> str:
    """``doc`` without the ``Args:`` entries of ``hidden`` (and without an emptied Args header)."""
    _, parts = _doc_parts(doc)
    kept = [(name, lines) for name, lines in parts if name not in hidden]
    if not any(name for name, _ in kept):  # no entry left: drop the header too
        kept = [(n, lines) for n, lines in kept if not (n == "" and lines[0].strip() == "Args:")]
    return "\n".join(line for _, lines in kept for line in lines).strip()


# ------------------------------------------------------------------------------ schema checks


def _hints(fn: Callable[..., Any], where: str) -> dict[str, Any]:
    """Type hints with string annotations (``from __future__ import annotations``) resolved in the
    function's own module: the built tool lives in this one, where they would not resolve."""
    try:
        return typing.get_type_hints(fn)
    except Exception as e:
        raise ToolSchemaError(f"{where}: its type hints cannot be resolved ({type(e).__name__}: {e})") from e


def check_schema(fn: Callable[..., Any], where: str, params: list[inspect.Parameter] | None = None) -> dict:
    """Fail unless the model can be shown how to call ``fn``: a docstring with a description, a
    type hint and an ``Args:`` entry for every parameter in ``params`` (default: the signature's,
    without an unannotated ``self``/``cls``), no ``*args``/``**kwargs``, and a JSON schema from
    ``transformers.utils.get_json_schema`` (imported here: it drags in transformers). Returns it."""
    if params is None:
        params = list(inspect.signature(fn).parameters.values())
        if params and params[0].name in ("self", "cls") and params[0].annotation is inspect.Parameter.empty:
            params = params[1:]
    doc = inspect.getdoc(fn) or ""
    description, _ = _doc_parts(doc)
    if not description:
        raise ToolSchemaError(
            f"{where}: no docstring description; the model reads it to decide when to call the tool. "
            "Add a Google-style docstring: a one-line description, then 'Args:' with one line per parameter"
        )
    var = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if var:
        raise ToolSchemaError(
            f"{where}: *{var[0]} cannot be described to the model; name every parameter the model may pass"
        )
    hints = _hints(fn, where)
    for p in params:
        if p.name not in hints:
            raise ToolSchemaError(
                f"{where}: parameter {p.name!r} has no type hint; add one (e.g. {p.name}: str) so the "
                "model's JSON schema can say what to pass"
            )
    documented = documented_args(doc)
    for p in params:
        if p.name not in documented:
            raise ToolSchemaError(
                f"{where}: parameter {p.name!r} is not described in the docstring's 'Args:' section"
                f"{_closest(p.name, documented)}; add a line '{p.name}: what it is'"
            )
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(fn)
    except Exception as e:
        message = " ".join(str(e).split())
        raise ToolSchemaError(
            f"{where}: transformers cannot build its JSON schema ({type(e).__name__}: {message})"
        ) from e


# ------------------------------------------------------------------------------ counters

_STATS_KEYS = ("calls", "errors", "timeouts", "cut")
_stats: dict[str, dict[str, int]] = {}
_stats_lock = threading.Lock()


def _count(name: str, key: str) -> None:
    with _stats_lock:
        _stats.setdefault(name, dict.fromkeys(_STATS_KEYS, 0))[key] += 1


def stats() -> dict[str, dict[str, int]]:
    """Per tool name since the last :func:`reset_stats`: ``calls``, ``errors`` (the call raised:
    bad arguments or the tool failed), ``timeouts`` (no answer within ``timeout_s``), ``cut``
    (output longer than ``max_output_chars``). A copy, safe to keep."""
    with _stats_lock:
        return {name: dict(counts) for name, counts in _stats.items()}


def reset_stats() -> None:
    with _stats_lock:
        _stats.clear()


# ------------------------------------------------------------------------------ building


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


def as_text(value: Any) -> str:
    """What the model reads: a string as it is, a dict/list/tuple as JSON, anything else ``str``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def cut(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` with a visible marker (the model should know it saw a part)."""
    if len(text) <= max_chars:
        return text, False
    return f"{text[:max_chars]}\n... [output cut: {len(text) - max_chars} more characters]", True


def _wrap(
    fn: ToolFn,
    name: str,
    bound: dict[str, Any],
    signature: inspect.Signature,
    doc: str,
    annotations: dict[str, Any],
    timeout_s: float,
    max_output_chars: int,
) -> ToolFn:
    accepted = ", ".join(signature.parameters) or "(no arguments)"

    def tool(*args: Any, **arguments: Any) -> str:
        _count(name, "calls")
        try:
            call = signature.bind(*args, **arguments)
        except TypeError as e:
            _count(name, "errors")
            raise ToolCallError(f"bad arguments for tool {name}: {e}; it takes: {accepted}") from None
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(**call.arguments, **bound)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = e

        # A daemon thread, abandoned on timeout: Python cannot kill a thread, and the trainer must
        # not wait for a stuck tool (nor for it at exit). A tool that can hang for good should
        # bound itself too (the python tool's sandbox is killed at its own timeout).
        worker = threading.Thread(target=run, name=f"tool-{name}", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            _count(name, "timeouts")
            raise TimeoutError(f"tool {name} did not answer within {timeout_s:g}s")
        if "error" in box:
            _count(name, "errors")
            raise ToolCallError(_one_line(box["error"])) from box["error"]
        text, was_cut = cut(as_text(box.get("value")), max_output_chars)
        if was_cut:
            _count(name, "cut")
        return text

    tool.__name__ = tool.__qualname__ = name
    tool.__doc__ = doc
    tool.__module__ = getattr(fn, "__module__", __name__)
    tool.__signature__ = signature  # type: ignore[attr-defined]
    tool.__annotations__ = annotations
    tool.tool_fn = fn  # type: ignore[attr-defined]
    tool.tool_kwargs = bound  # type: ignore[attr-defined]
    return tool


def _positive(name: str, key: str, value: Any, kind: type) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int)
    # Finite too: threading's join() refuses an infinite timeout, and a tool must end.
    if not ok or not 0 < value < math.inf:
        what = "a positive number of seconds" if kind is float else "a positive int"
        raise ToolConfigError(f"tool {name!r}: {key} must be {what}, got {value!r}")


def build_tool(name: str, spec: Mapping[str, Any]) -> ToolFn:
    """One tool from its config entry (see :func:`build_tools`)."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ToolConfigError(
            f"tool name {name!r} is not a valid identifier; the model calls the tool by this name "
            "(letters, digits and _, not starting with a digit)"
        )
    check_spec_keys(spec, f"tool {name!r}", SPEC_KEYS, ToolConfigError)
    timeout_s = spec.get("timeout_s", DEFAULT_TIMEOUT_S)
    _positive(name, "timeout_s", timeout_s, float)
    max_output_chars = spec.get("max_output_chars", DEFAULT_MAX_OUTPUT_CHARS)
    _positive(name, "max_output_chars", max_output_chars, int)
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ToolConfigError(f"tool {name!r}: kwargs must be a mapping, got {type(kwargs).__name__}")
    bound = _plain(dict(kwargs))

    try:
        fn = resolve(spec["fn"])
    except ToolConfigError as e:
        raise type(e)(f"tool {name!r}: {e}") from e
    where = f"tool {name!r} ({spec['fn']})"
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        raise ToolConfigError(f"{where} is async; build_tools wraps synchronous tools only")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise ToolSchemaError(f"{where}: has no inspectable signature ({e})") from e
    params = signature.parameters
    settable = [p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in bound:
        if key not in settable:
            raise ToolConfigError(
                f"{where}: unknown kwarg {key!r}{_closest(key, settable)}. It accepts: "
                f"{', '.join(settable) or '(no kwargs)'}."
            )
    for p in params.values():
        if p.kind is p.POSITIONAL_ONLY:
            raise ToolSchemaError(f"{where}: parameter {p.name!r} is positional-only; trl passes arguments by name")
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in bound:
            raise ToolConfigError(f"{where}: configuration parameter {p.name!r} has no default; set kwargs.{p.name}")
    check = getattr(fn, "check_kwargs", None)
    if callable(check):
        try:
            check(**bound)
        except (TypeError, ValueError) as e:
            raise ToolConfigError(f"{where}: {e}") from e

    # Configuration is what config binds plus every keyword-only parameter: never the model's.
    hidden = {p.name for p in params.values() if p.name in bound or p.kind is p.KEYWORD_ONLY}
    hints = _hints(fn, where)
    visible = [
        p.replace(annotation=hints.get(p.name, p.empty)) for p in params.values() if p.name not in hidden
    ]
    returns = hints.get("return", signature.return_annotation)
    annotations = {p.name: p.annotation for p in visible if p.annotation is not p.empty}
    if returns is not inspect.Signature.empty:
        annotations["return"] = returns
    doc = _without_args(inspect.getdoc(fn) or "", hidden)
    tool = _wrap(
        fn, name, bound, signature.replace(parameters=visible, return_annotation=returns),
        doc, annotations, float(timeout_s), int(max_output_chars),
    )
    check_schema(tool, where)
    return tool


def build_tools(entries: Mapping[str, Mapping[str, Any]]) -> list[ToolFn]:
    """trl's ``tools=[...]`` from the ``tools:`` config section.

    ``entries`` maps the tool name the model sees to ``{fn: REF, kwargs: {...}, timeout_s: 30,
    max_output_chars: 4000}``; only ``fn`` is required, any other key is an error. ``kwargs`` bind
    configuration parameters (hidden from the model; see the module docstring)."""
    return [build_tool(name, spec) for name, spec in (entries or {}).items()]


# ------------------------------------------------------------------------------ environments


def resolve_environment(ref: str) -> Callable[[], Any]:
    """The environment class or factory ``ref`` names (``"pkg.module:Cls"`` or ``"file.py:Cls"``).
    Environments are not registered by name: each is a task of its own."""
    if not isinstance(ref, str) or ":" not in ref:
        raise ToolConfigError(
            f"an environment reference must look like 'pkg.module:Class' or 'path/to/file.py:Class', got {ref!r}"
        )
    obj = load_reference(ref, "environment", config_error=ToolConfigError, import_error=ToolImportError)
    if not callable(obj):
        raise ToolConfigError(f"environment {ref!r} resolved to a {type(obj).__name__}, which is not callable")
    return obj


def environment_tools(cls: type) -> dict[str, Callable[..., Any]]:
    """The methods of an environment class that trl exposes as tools: its public functions (listed
    on the class, as trl does, so properties are not evaluated), less ``reset`` and ``get_reward``."""
    return {
        n: f
        for n, f in inspect.getmembers(cls, inspect.isfunction)
        if not n.startswith("_") and n not in ENVIRONMENT_HOOKS
    }


def check_environment(factory: Callable[[], Any], name: str, tool_names: Iterable[str] = ()) -> None:
    """Fail at setup unless trl can use ``factory`` as an ``environment_factory``.

    Checked, each failure one line naming the environment:

    - one instance is constructed here, as trl constructs one per rollout (with no arguments):
      an ``__init__`` (or factory) that raises would otherwise stop the run at its first step,
      after the model loaded. It should be cheap and free of side effects;
    - ``reset`` is a method defined on the class (trl lists the class's functions: a classmethod,
      a callable object or a value under that name is not found by it), and so is ``get_reward``
      when the class has one (trl would drop a ``get_reward`` it cannot list, and the
      environment's reward with it, without a word);
    - every tool method passes the tools' schema check (:func:`check_schema`);
    - no tool method has the name of a tool of the ``tools:`` section (``tool_names``): trl keys
      a rollout's tools by name, so one would silently hide the other from the model.
    """
    try:
        instance = factory()
    except Exception as e:
        raise ToolConfigError(
            f"environment {name!r}: constructing one raised {_one_line(e)} (at {_raised_at(e)}); "
            "trl constructs one instance per rollout with no arguments, so it must construct"
        ) from e
    cls = type(instance)
    for hook, required in (("reset", True), ("get_reward", False)):
        problem = _hook_problem(cls, hook, required)
        if problem:
            raise ToolConfigError(f"environment {name!r}: {problem}")
    tools = environment_tools(cls)
    for method, fn in tools.items():
        check_schema(fn, f"environment {name!r} method {method!r}")
    clash = sorted(set(tools) & set(tool_names))
    if clash:
        raise ToolConfigError(
            f"environment {name!r}: method {clash[0]!r} of {cls.__name__} has the name of the tool "
            f"tools.{clash[0]}; the model calls tools by name and would reach only one of them. "
            "Rename the method or the tools entry"
        )


def _hook_problem(cls: type, hook: str, required: bool) -> str | None:
    """What is wrong with ``cls``'s ``reset``/``get_reward`` for trl, or None."""
    usage = ("trl calls reset(**row) before every rollout. Add 'def reset(self, **kwargs) -> "
             "str | None'" if hook == "reset" else
             "trl calls get_reward() when a rollout ends. Define 'def get_reward(self) -> float'")
    if inspect.getattr_static(cls, hook, _MISSING) is _MISSING:
        if not required:
            return None
        public = [n for n in dir(cls) if not n.startswith("_")]
        return f"{cls.__name__} has no callable {hook}(){_closest(hook, public)}; {usage}"
    value = getattr(cls, hook)
    if not callable(value):
        return f"{cls.__name__}.{hook} is a {type(value).__name__}, which is not callable; {usage}"
    if not inspect.isfunction(value):
        return (f"{cls.__name__}.{hook} is a {type(value).__name__}, not a method defined on the "
                f"class (trl looks for functions on the class and would not find it); {usage}")
    return None


_MISSING = object()


def _raised_at(e: BaseException) -> str:
    """file:line where ``e`` was raised (its innermost frame)."""
    tb = e.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"


def environment_failure(e: BaseException, classes: Iterable[type],
                        factories: Iterable[Callable[..., Any]] = ()) -> str | None:
    """One line naming the environment and method ``e`` was raised in, or None when it was not
    raised inside one of ``classes``' methods (or a factory function of ``factories``).

    The environment's code is called by trl itself (``reset`` and ``__init__`` inside its
    generation step), where align cannot wrap the call; the traceback says which method was
    running. The outermost such frame names the hook trl called; the innermost frame, where it
    was raised."""
    codes: dict[Any, str] = {}
    for cls in classes:
        for attr, fn in inspect.getmembers(cls, inspect.isfunction):
            codes.setdefault(fn.__code__, f"{cls.__name__}.{attr}")
    for factory in factories:
        if inspect.isfunction(factory):
            codes.setdefault(factory.__code__, f"the factory {factory.__name__}()")
    tb = e.__traceback__
    while tb is not None:
        where = codes.get(tb.tb_frame.f_code)
        if where is not None:
            owner = where.split(".")[0]
            return (f"environment {owner}: {where} raised {_one_line(e)} (at {_raised_at(e)}); "
                    "fix the environment (its tool methods may raise: the model gets the error, "
                    "but its __init__, reset and get_reward must not)")
        tb = tb.tb_next
    return None


def environment_reward(cls: type) -> Any:
    """The reward of environment class ``cls`` (its ``get_reward()``, one score per rollout of
    this class, None for the others), behind the rewards' gate
    (:class:`rewards.registry.GatedReward`, ``on_error: raise``): a NaN or infinite score, or a
    non-number, stops the run with one line naming the environment and the sample, as any
    reward's would. Named after the class, as trl logs it."""
    from rewards.registry import GatedReward

    def get_reward(completions: Any, environments: Any = None, **kwargs: Any) -> list:
        if environments is None or len(environments) != len(completions):
            raise ValueError(f"environment {cls.__name__}: get_reward needs one environment "
                             "instance per completion (trl passes them as environments=)")
        return [e.get_reward() if type(e) is cls else None for e in environments]

    return GatedReward(get_reward, cls.__name__, "raise",
                       ref=f"environment {cls.__qualname__}.get_reward")
