"""Structured-output rewards: the completion is JSON that validates against a JSON Schema, or tool
calls that name a known tool with arguments that validate against its parameter schema.

Validation uses the ``jsonschema`` package (the ``structured`` extra: ``pip install -e
'.[structured]'``), imported when the reward is configured, so a missing package fails at setup.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rewards.registry import register
from rewards.text import completion_text

_JSON_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError as e:
        raise ImportError(
            "the json_schema and tool_calls rewards need the jsonschema package: "
            "pip install -e '.[structured]' (or pip install jsonschema)"
        ) from e
    return jsonschema


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    jsonschema = _jsonschema()
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)  # a broken schema is a data/config error, not a wrong answer
    return cls(schema)


def _schema_key(schema: Any) -> str | None:
    """A hashable form of a schema given as a dict or a JSON string; ``None`` for no schema."""
    if schema is None or schema == "" or schema == {}:
        return None
    if isinstance(schema, (str, bytes)):
        schema = json.loads(schema)
    if not isinstance(schema, Mapping):
        raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
    return json.dumps(schema, sort_keys=True)


def _is_valid(instance: Any, schema_key: str) -> bool:
    return _validator(schema_key).is_valid(instance)


def extract_json(text: str) -> Any:
    """Parse the completion as JSON: the last ```json fenced block if there is one, else the whole
    text (surrounding whitespace ignored). Raises ``ValueError`` when it is not JSON."""
    blocks = _JSON_FENCE.findall(text)
    return json.loads(blocks[-1] if blocks else text.strip())


def _check_json(schema: Any = None, schema_column: str = "schema", partial: float = 0.0) -> None:
    _jsonschema()
    if schema is not None:
        if not isinstance(schema, (Mapping, str)):
            raise ValueError("schema must be a JSON Schema object (or its JSON text)")
        try:
            _validator(_schema_key(schema))
        except Exception as e:
            raise ValueError(f"schema is not a valid JSON Schema: {e}") from e
    if not isinstance(schema_column, str) or not schema_column:
        raise ValueError(f"schema_column must be a column name, got {schema_column!r}")
    if isinstance(partial, bool) or not isinstance(partial, (int, float)) or not 0 <= partial <= 1:
        raise ValueError(f"partial must be in [0, 1], got {partial!r}")


@register("json_schema", check=_check_json)
def json_schema(
    completions: Sequence[Any],
    schema: Any = None,
    schema_column: str = "schema",
    partial: float = 0.0,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 if the completion parses as JSON (see :func:`extract_json`) and validates against the
    schema; ``partial`` if it parses but does not validate; 0.0 if it does not parse.

    The schema is ``kwargs.schema`` (one for every example) or, when that is not set, the
    example's ``schema_column`` column (default ``schema``; a dict or a JSON string per example); an
    example without a schema gives ``None``."""
    n = len(completions)
    if isinstance(schema, Sequence) and not isinstance(schema, (str, bytes)):
        # The dataset's own "schema" column lands on this parameter (trl passes columns by name).
        keys = [_schema_key(s) for s in schema]
    elif schema is not None:
        keys = [_schema_key(schema)] * n
    elif schema_column in kwargs:
        keys = [_schema_key(s) for s in kwargs[schema_column]]
    else:
        raise KeyError(
            f"json_schema needs kwargs.schema or the dataset column {schema_column!r}; columns "
            f"passed: {sorted(k for k in kwargs if not k.startswith('log_'))}"
        )
    scores: list[float | None] = []
    for completion, key in zip(completions, keys, strict=True):
        if key is None:
            scores.append(None)
            continue
        try:
            instance = extract_json(completion_text(completion))
        except ValueError:
            scores.append(0.0)
            continue
        scores.append(1.0 if _is_valid(instance, key) else float(partial))
    return scores


# ------------------------------------------------------------------------------ tool calls


def extract_tool_calls(completion: Any) -> list[Any]:
    """The tool calls of a completion, as ``{"name", "arguments"}`` dicts (or whatever failed to
    parse, which then scores as invalid).

    Conversational completions: the ``tool_calls`` of its assistant messages (OpenAI / transformers
    chat format, ``{"type": "function", "function": {"name", "arguments"}}``, arguments a dict or
    a JSON string). Plain text (and assistant messages without ``tool_calls``): each
    ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block (Hermes/Qwen format).
    """
    calls: list[Any] = []
    if isinstance(completion, Sequence) and not isinstance(completion, str):
        for message in completion:
            if message.get("role") not in (None, "assistant"):
                continue
            for call in message.get("tool_calls") or []:
                calls.append(call.get("function", call) if isinstance(call, Mapping) else call)
    if not calls:
        for block in _TOOL_CALL_TAG.findall(completion_text(completion)):
            try:
                calls.append(json.loads(block))
            except json.JSONDecodeError:
                calls.append(block)  # kept so it counts as an invalid call
    return calls


def _tool_schemas(tools: Any) -> dict[str, str]:
    """name -> parameter schema key, from a ``tools`` column: a list (or JSON string) of
    ``{"type": "function", "function": {"name", "parameters"}}`` or bare ``{"name", "parameters"}``."""
    if isinstance(tools, (str, bytes)):
        tools = json.loads(tools)
    schemas: dict[str, str] = {}
    for tool in tools or []:
        spec = tool.get("function", tool)
        schemas[spec["name"]] = _schema_key(spec.get("parameters") or {"type": "object"}) or "{}"
    return schemas


def _call_ok(call: Any, schemas: Mapping[str, str]) -> bool:
    if not isinstance(call, Mapping) or call.get("name") not in schemas:
        return False
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return False
    key = schemas[call["name"]]
    return key == "{}" or _is_valid(arguments, key)


def _check_tools(tools_column: str = "tools", require_call: bool = True) -> None:
    _jsonschema()
    if not isinstance(tools_column, str) or not tools_column:
        raise ValueError(f"tools_column must be a column name, got {tools_column!r}")
    if not isinstance(require_call, bool):
        raise ValueError(f"require_call must be true or false, got {require_call!r}")


@register("tool_calls", check=_check_tools)
def tool_calls(
    completions: Sequence[Any],
    tools_column: str = "tools",
    require_call: bool = True,
    **kwargs: Any,
) -> list[float | None]:
    """Fraction of the completion's tool calls (see :func:`extract_tool_calls`) that name a tool of
    the example's ``tools_column`` column and whose arguments validate against its ``parameters``
    schema. A completion with no call scores 0.0 (``require_call: false``: 1.0, for examples where
    answering directly is also right). An example without tools gives ``None``."""
    if tools_column not in kwargs:
        raise KeyError(
            f"tool_calls needs the dataset column {tools_column!r} (the tools offered to the "
            f"model); columns passed: {sorted(k for k in kwargs if not k.startswith('log_'))}"
        )
    scores: list[float | None] = []
    for completion, tools in zip(completions, kwargs[tools_column], strict=True):
        schemas = _tool_schemas(tools)
        if not schemas:
            scores.append(None)
            continue
        calls = extract_tool_calls(completion)
        if not calls:
            scores.append(0.0 if require_call else 1.0)
            continue
        scores.append(sum(_call_ok(c, schemas) for c in calls) / len(calls))
    return scores
