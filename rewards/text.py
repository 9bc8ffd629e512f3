"""Turn a completion, in either of the shapes trl passes, into the text a reward reads.

trl's GRPOTrainer passes plain strings when the prompts are plain text, and a list of message
dicts (``[{"role": "assistant", "content": "..."}]``) when the prompts are conversational. Every
built-in reward goes through :func:`completion_text` so that both shapes behave identically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Completion = str | Sequence[Mapping[str, Any]]


def _content_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # Multimodal chat format: content is a list of parts; only the text parts carry an answer.
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise TypeError(
        f"message content must be a string or a list of parts, got {type(content).__name__}"
    )


def completion_text(completion: Completion) -> str:
    """Return the text of one completion.

    - a string is returned as is;
    - a list of messages gives the content of its *last assistant* message (with tool calls a
      completion can hold assistant, tool, assistant ...; the final answer is in the last one);
    - a list of messages without any ``role: assistant`` (trl's own tests use ``[{"content": ...}]``)
      gives the concatenated content of all messages.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):  # a single message dict, tolerated
        return _content_text(completion)
    if not isinstance(completion, Sequence):
        raise TypeError(
            "a completion must be a string or a list of message dicts, got "
            f"{type(completion).__name__}"
        )
    assistant = [m for m in completion if m.get("role") == "assistant"]
    if assistant:
        return _content_text(assistant[-1])
    return "".join(_content_text(m) for m in completion)
