"""Row formats: which format a dataset is in (from its columns), and one pure function per
format, `row -> {column: new value}`, that both checks a row (raising RowError) and normalises it.
One datasets map applies it to every row (align/data/load.py), so what was checked is what is
trained on; after a RowError, the report of bad rows runs it again over the rows as written."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from align.data.config import (
    FORMAT_COLUMNS,
    FORMAT_HELP,
    ROLES,
    SHAREGPT_ROLES,
    STAGE_FORMATS,
    STAGES,
    DataError,
)


def detect_format(column_names: list[str], stage: str, label: str = "dataset", forced: str = "auto") -> str:
    """The format of a dataset for `stage`, from its column names (see the module docstring)."""
    names = set(column_names)
    if forced != "auto":
        if forced not in STAGE_FORMATS[stage]:
            raise DataError(
                f"data.format={forced!r} is not a {stage} format; {stage} accepts: {', '.join(STAGE_FORMATS[stage])}"
            )
        missing = [c for c in FORMAT_COLUMNS[forced] if c not in names]
        if missing:
            raise DataError(
                f"{label}: data.format={forced!r} needs the columns {list(FORMAT_COLUMNS[forced])}, "
                f"missing {missing}; columns found: {sorted(column_names)}. Rename with data.columns={{source: target}}."
            )
        return forced
    for fmt in STAGE_FORMATS[stage]:
        if all(c in names for c in FORMAT_COLUMNS[fmt]):
            return fmt
    accepted = "; ".join(FORMAT_HELP[f] for f in STAGE_FORMATS[stage])
    hints = []
    if stage == "grpo" and "question" in names:
        hints.append("the prompts look like they are in 'question': set data.columns={question: prompt}")
    other = [
        f"{s} ({f})"
        for s in STAGES
        if s != stage
        for f in STAGE_FORMATS[s]
        if f != "prompt" and all(c in names for c in FORMAT_COLUMNS[f])
    ]
    if other:
        hints.append(f"these columns fit another stage: {', '.join(other)}")
    hint = "".join(f" Hint: {h}." for h in hints)
    raise DataError(
        f"{label}: cannot tell the {stage} format from the columns {sorted(column_names)}. "
        f"{stage} accepts: {accepted}. Rename columns with data.columns={{source: target}} "
        f"or force a format with data.format=<{'|'.join(STAGE_FORMATS[stage])}>.{hint}"
    )


class RowError(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field, self.problem = field, problem


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _required(row: Mapping, name: str, *, expected: str) -> Any:
    if row.get(name) is None:
        raise RowError(name, f"missing or null; expected {expected}")
    value = row[name]
    if isinstance(value, str) and not value.strip():
        raise RowError(name, f"empty string; expected {expected}")
    return value


def _check_messages(value: Any, name: str, *, expected: str) -> list[dict]:
    """Check a list of {role, content} messages; returns it unchanged."""
    if not isinstance(value, list):
        raise RowError(name, f"expected {expected}, got {type_name(value)}")
    if not value:
        raise RowError(name, "empty list of messages")
    for j, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowError(
                name,
                f"message {j}: expected a {{role, content}} object, got {type_name(message)}",
            )
        role = message.get("role")
        if role is None:
            extra = (
                " (ShareGPT {from, value} messages go in a 'conversations' column)"
                if "from" in message
                else ""
            )
            raise RowError(name, f"message {j} has no 'role'{extra}")
        if role not in ROLES:
            raise RowError(
                name,
                f"message {j}: unknown role {role!r}; expected one of {', '.join(ROLES)}",
            )
        content = message.get("content")
        calls = message.get("tool_calls")
        if calls is not None:
            _check_tool_calls(calls, name, j, role)
        if role == "tool" and not (j and (value[j - 1].get("tool_calls")
                                          or value[j - 1].get("role") == "tool")):
            raise RowError(name, f"message {j} (tool) answers no tool call: a tool turn follows "
                                 "an assistant turn with tool_calls (or another tool turn)")
        if content is None:
            if role == "assistant" and calls:
                continue  # an assistant turn that only calls tools has no content
            raise RowError(name, f"message {j} ({role}) has no 'content'")
        if isinstance(content, str):
            if not content.strip() and role not in ("system", "tool") and not calls:
                raise RowError(name, f"message {j} ({role}) has empty content")
        elif not (isinstance(content, list) and all(isinstance(p, dict) for p in content)):
            # A list of typed parts ({type: text|image, ...}) is how multimodal content is written.
            raise RowError(
                name,
                f"message {j} ({role}): content must be a string or a list of parts, got {type_name(content)}",
            )
    return value


def _check_tool_calls(calls: Any, name: str, j: int, role: str) -> None:
    """An assistant turn's tool calls, in the chat-template shape (OpenAI's, as transformers and
    trl use it): ``[{"type": "function", "function": {"name": ..., "arguments": {...}}}]``;
    arguments may also be a JSON object as a string."""
    import json

    where = f"message {j} ({role})"
    if role != "assistant":
        raise RowError(name, f"{where} has tool_calls; only assistant turns call tools")
    if not isinstance(calls, list) or not calls:
        raise RowError(name, f"{where}: tool_calls must be a non-empty list, got {type_name(calls)}")
    for k, call in enumerate(calls):
        shape = ('expected {"type": "function", "function": {"name": ..., "arguments": '
                 '{...}}}')
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise RowError(name, f"{where}: tool call {k}: {shape}, got {call!r:.120}")
        if call.get("type", "function") != "function":
            raise RowError(name, f"{where}: tool call {k}: type {call.get('type')!r}; only "
                                 "'function' calls are supported")
        function = call["function"]
        if not isinstance(function.get("name"), str) or not function["name"].strip():
            raise RowError(name, f"{where}: tool call {k} has no function name")
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise RowError(name, f"{where}: tool call {k} ({function['name']}): arguments "
                                     f"are not valid JSON ({exc.msg})") from None
        if not isinstance(arguments, dict):
            raise RowError(name, f"{where}: tool call {k} ({function['name']}): arguments must "
                                 f"be an object of parameter values, got {type_name(arguments)}")


def _text_or_messages(row: Mapping, name: str) -> Any:
    expected = "a string or a list of {role, content} messages"
    value = _required(row, name, expected=expected)
    if isinstance(value, str):
        return value
    return _check_messages(value, name, expected=expected)


def _check_prompt_messages(prompt: list[dict], name: str = "prompt") -> None:
    if prompt[-1].get("role") == "assistant":
        raise RowError(
            name,
            "the conversational prompt ends with an assistant turn; the prompt must end with the turn the "
            "model answers (move the final assistant turn to the completion/chosen/rejected)",
        )


def _has_assistant(messages: list[dict]) -> bool:
    return any(m.get("role") == "assistant" for m in messages)


def _plain_prompt(prompt: str, system_prompt: str | None, name: str = "prompt") -> str:
    if system_prompt is not None:
        raise RowError(
            name,
            "data.system_prompt needs a conversational prompt, but this one is a plain string; remove "
            "data.system_prompt or write the prompt as a list of {role, content} messages",
        )
    return prompt


def _with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    # Only where the conversation has no system turn yet: most chat templates reject two.
    if system_prompt is None or messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _norm_messages(row: Mapping, system_prompt: str | None) -> dict:
    expected = "a list of {role, content} messages"
    messages = _check_messages(_required(row, "messages", expected=expected), "messages", expected=expected)
    if not _has_assistant(messages):
        raise RowError(
            "messages",
            "the conversation has no assistant turn, so there is nothing to train on",
        )
    return {"messages": _with_system(messages, system_prompt)}


def _norm_sharegpt(row: Mapping, system_prompt: str | None) -> dict:
    value = _required(row, "conversations", expected="a list of {from, value} messages")
    if not isinstance(value, list) or not value:
        raise RowError(
            "conversations",
            f"expected a non-empty list of {{from, value}} messages, got {type_name(value)}",
        )
    messages = []
    for j, turn in enumerate(value):
        if not isinstance(turn, dict) or turn.get("from") is None:
            raise RowError(
                "conversations",
                f"message {j}: expected a {{from, value}} object"
                + (
                    " ({role, content} messages go in a 'messages' column: data.columns={conversations: messages})"
                    if isinstance(turn, dict) and "role" in turn
                    else ""
                ),
            )
        speaker = turn["from"]
        if speaker not in SHAREGPT_ROLES:
            raise RowError(
                "conversations",
                f"message {j}: unknown 'from' value {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}",
            )
        text = turn.get("value")
        if not isinstance(text, str) or not text.strip():
            raise RowError(
                "conversations",
                f"message {j} ({speaker}): 'value' must be a non-empty string, got "
                + ("an empty string" if isinstance(text, str) else type_name(text)),
            )
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": text})
    if not _has_assistant(messages):
        raise RowError(
            "conversations",
            "the conversation has no gpt/assistant turn, so there is nothing to train on",
        )
    return {"messages": _with_system(messages, system_prompt)}


def _norm_prompt_completion(row: Mapping, system_prompt: str | None) -> dict:
    prompt = _text_or_messages(row, "prompt")
    completion = _text_or_messages(row, "completion")
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise RowError(
                "completion",
                "is a list of messages but 'prompt' is a string; use strings for both or message lists for both",
            )
        return {
            "prompt": _plain_prompt(prompt, system_prompt),
            "completion": completion,
        }
    _check_prompt_messages(prompt)
    if isinstance(completion, str):  # trl needs both sides conversational or both plain
        completion = _assistant(completion)
    elif not _has_assistant(completion):
        raise RowError("completion", "the completion messages have no assistant turn")
    return {"prompt": _with_system(prompt, system_prompt), "completion": completion}


def _norm_alpaca(row: Mapping, system_prompt: str | None) -> dict:
    instruction = _required(row, "instruction", expected="a non-empty string")
    output = _required(row, "output", expected="a non-empty string")
    extra = row.get("input")
    for name, value in (
        ("instruction", instruction),
        ("output", output),
        ("input", extra),
    ):
        if value is not None and not isinstance(value, str):
            raise RowError(name, f"expected a string, got {type_name(value)}")
    user = instruction + ("\n\n" + extra if extra and extra.strip() else "")
    return {
        "prompt": _with_system([{"role": "user", "content": user}], system_prompt),
        "completion": _assistant(output),
    }


def _norm_text(row: Mapping, system_prompt: str | None) -> dict:
    text = _required(row, "text", expected="a non-empty string")
    if not isinstance(text, str):
        raise RowError("text", f"expected a string, got {type_name(text)}")
    return {"text": text}


def _norm_preference(row: Mapping, system_prompt: str | None) -> dict:
    chosen = _text_or_messages(row, "chosen")
    rejected = _text_or_messages(row, "rejected")
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise RowError(
            "rejected",
            "'chosen' and 'rejected' must both be strings or both be message lists",
        )
    prompt = _text_or_messages(row, "prompt") if "prompt" in row else None
    conversational = not isinstance(chosen, str)
    # Implicit prompt, as trl's maybe_extract_prompt reads it: no prompt column, or a plain-text prompt
    # next to full conversations that start with the user turn (e.g. UltraFeedback binarized).
    if prompt is None or (
        isinstance(prompt, str) and conversational and chosen[0].get("role") != "assistant"
    ):
        from trl.data_utils import extract_prompt

        extracted = extract_prompt({"chosen": chosen, "rejected": rejected})
        prompt, chosen, rejected = (
            extracted["prompt"],
            extracted["chosen"],
            extracted["rejected"],
        )
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise RowError(
                "chosen",
                "there is no 'prompt' and 'chosen'/'rejected' share no start to extract it from; add a 'prompt' column",
            )
    if conversational:
        if isinstance(prompt, str):  # chosen/rejected are assistant turns only: the prompt is the user turn
            prompt = [{"role": "user", "content": prompt}]
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not _has_assistant(value):
                raise RowError(name, "has no assistant turn after the prompt")
    elif not isinstance(prompt, str):  # conversational prompt, plain answers: make both conversational
        chosen, rejected = _assistant(chosen), _assistant(rejected)
    if isinstance(prompt, str):
        prompt = _plain_prompt(prompt, system_prompt, "prompt" if "prompt" in row else "chosen")
    else:
        _check_prompt_messages(prompt)
        prompt = _with_system(prompt, system_prompt)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _norm_unpaired(row: Mapping, system_prompt: str | None) -> dict:
    """KTO's row: a prompt/completion (as SFT's) and whether the completion is desirable."""
    label = row.get("label")
    if label is None:
        raise RowError("label", "missing or null; expected true (desirable) or false (undesirable)")
    if not isinstance(label, bool):
        # Not coerced: "false" is truthy, and 0/1 or "yes"/"no" columns are often something
        # else (a score, a rating) that a threshold should turn into labels, not align.
        kind = "the string" if isinstance(label, str) else f"{type_name(label)}"
        raise RowError("label", f"{kind} {label!r}; expected the boolean true or false "
                                "(a JSON boolean, not a string or a number)")
    return {**_norm_prompt_completion(row, system_prompt), "label": label}


def _norm_prompt(row: Mapping, system_prompt: str | None) -> dict:
    prompt = _text_or_messages(row, "prompt")
    if isinstance(prompt, str):
        return {"prompt": _plain_prompt(prompt, system_prompt)}
    _check_prompt_messages(prompt)
    return {"prompt": _with_system(prompt, system_prompt)}


NORMALISERS: dict[str, Callable[[Mapping, str | None], dict]] = {
    "messages": _norm_messages,
    "sharegpt": _norm_sharegpt,
    "prompt_completion": _norm_prompt_completion,
    "alpaca": _norm_alpaca,
    "text": _norm_text,
    "preference": _norm_preference,
    "unpaired": _norm_unpaired,
    "prompt": _norm_prompt,
}


#: Columns a format's normaliser replaces (removed from the output).
REMOVED_COLUMNS = {
    "sharegpt": ["conversations"],
    "alpaca": ["instruction", "input", "output"],
}


#: Columns the row check reads (the others, e.g. images, are never decoded for the check).
READ_COLUMNS = {
    **FORMAT_COLUMNS,
    "alpaca": ("instruction", "input", "output"),
    "preference": ("prompt", "chosen", "rejected"),
}
