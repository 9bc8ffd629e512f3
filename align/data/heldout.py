"""The held-out split in RL prompt form (`prompt` + `solution`), for measuring a model before
and after training, whatever format the stage's data is in."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

def message_text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a multimodal part list."""
    if isinstance(content, str):
        return content
    return "".join(
        p.get("text") or "" for p in content or [] if isinstance(p, dict) and p.get("type", "text") == "text"
    )


def _final_assistant_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return message_text([m for m in value if m.get("role") == "assistant"][-1].get("content"))


def _heldout_from_messages(row: Mapping) -> dict:
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
    return {
        "prompt": messages[:last],
        "solution": message_text(messages[last].get("content")),
    }


def _heldout_batch(batch: dict, *, answer: str | None, keep_solution: bool, code: str) -> dict:
    """datasets' batched map function (module-level, so its cache hits on the next launch):
    `answer` is None for conversations (`messages`), else the column with the answer; `code`
    only keys the cache (see align.data.load)."""
    if answer is None:
        out = [_heldout_from_messages({"messages": m}) for m in batch["messages"]]
        columns = {"prompt": [o["prompt"] for o in out]}
        if not keep_solution:
            columns["solution"] = [o["solution"] for o in out]
        return columns
    return {} if keep_solution else {"solution": [_final_assistant_text(v) for v in batch[answer]]}


def _is_desirable(batch: dict) -> list[bool]:
    return list(batch["label"])


def _has_prompt(batch: dict) -> list[bool]:
    return [len(p) > 0 for p in batch["prompt"]]


def build_heldout(eval_dataset: datasets.Dataset | None, fmt: str, num_proc: int | None = None,
                  code: str = ""):
    """The eval split in RL prompt form: `prompt`, `solution` and the other columns.

    An existing `solution` column (synthetic tasks have one: the exact answer) is kept; otherwise the
    solution is the final assistant text of the reference answer (SFT), of `chosen` (DPO) or of
    a desirable completion (KTO's unpaired rows: those labelled false are no answer to score).
    """
    if eval_dataset is None or fmt == "text":
        return None
    if fmt == "prompt":
        return eval_dataset
    if fmt == "unpaired":
        eval_dataset = eval_dataset.filter(_is_desirable, batched=True, desc="Desirable rows")
        eval_dataset = eval_dataset.remove_columns("label")
    names = eval_dataset.column_names
    keep_solution = "solution" in names
    conversations = fmt in ("messages", "sharegpt")
    if conversations:
        answer, removed = None, ["messages"]
    else:
        answer = "completion" if fmt in ("prompt_completion", "alpaca", "unpaired") else "chosen"
        removed = [c for c in ("completion", "chosen", "rejected") if c in names]
    num_proc = num_proc if num_proc and num_proc > 1 else None
    heldout = eval_dataset.map(
        _heldout_batch,
        batched=True,
        fn_kwargs={"answer": answer, "keep_solution": keep_solution, "code": code},
        remove_columns=removed,
        num_proc=num_proc,
        desc="Building held-out prompts",
    )
    if conversations:
        # A conversation that opens with the assistant has no prompt to generate from.
        before = len(heldout)
        heldout = heldout.filter(_has_prompt, batched=True, num_proc=num_proc)
        if len(heldout) < before:
            logger.warning(
                "held-out: dropped %d eval rows whose first turn is the assistant's",
                before - len(heldout),
            )
    return heldout
