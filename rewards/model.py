"""Reward-model reward: a sequence-classification model scores prompt + completion.

    rewards:
      rm:
        fn: reward_model
        kwargs: {model: Skywork/Skywork-Reward-V2-Qwen3-0.6B, batch_size: 16}

``model`` is a local folder or a hub id, loaded once per process with
``AutoModelForSequenceClassification`` and kept (one copy per ``(model, device, dtype)``). The
reward is the logit ``label`` (default 0) for the whole conversation: conversational prompts and
completions go through the reward model's own chat template (as trl does for a model passed in
``reward_funcs``), plain text is ``prompt + completion``. Inputs are right-padded in batches of
``batch_size`` and truncated to ``max_length`` tokens; the score of a sample does not depend on the
batch it lands in.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from rewards.registry import register


@functools.lru_cache(maxsize=4)
def load_reward_model(model: str, device: str = "auto", dtype: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) for ``model``, in eval mode on ``device``; cached per process."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model)
    kwargs = {"dtype": dtype} if dtype else {}
    net = AutoModelForSequenceClassification.from_pretrained(model, **kwargs).to(device).eval()
    if tokenizer.pad_token_id is None:
        # The classifier reads the last non-pad token; without a pad token it cannot find it.
        tokenizer.pad_token = tokenizer.eos_token
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, net


def _texts(tokenizer: Any, prompts: Sequence[Any] | None, completions: Sequence[Any]) -> list[str]:
    from rewards.text import completion_text

    texts = []
    for i, completion in enumerate(completions):
        prompt = prompts[i] if prompts is not None else None
        chat = isinstance(completion, Sequence) and not isinstance(completion, str)
        if chat and getattr(tokenizer, "chat_template", None):
            messages = [*(prompt if isinstance(prompt, Sequence) and not isinstance(prompt, str)
                          else ([{"role": "user", "content": prompt}] if prompt else [])),
                        *completion]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            head = "" if prompt is None else (
                prompt if isinstance(prompt, str)
                else "".join(str(m.get("content", "")) for m in prompt if isinstance(m, Mapping))
            )
            texts.append(head + completion_text(completion))
    return texts


def _check_rm(
    model: str | None = None,
    batch_size: int = 16,
    max_length: int = 2048,
    label: int = 0,
    device: str = "auto",
    dtype: str | None = None,
) -> None:
    if not isinstance(model, str) or not model:
        raise ValueError("reward_model needs kwargs.model, a local folder or a hub model id")
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise ValueError(f"label must be an int >= 0, got {label!r}")


@register("reward_model", check=_check_rm)
def reward_model(
    completions: Sequence[Any],
    model: str,
    prompts: Sequence[Any] | None = None,
    batch_size: int = 16,
    max_length: int = 2048,
    label: int = 0,
    device: str = "auto",
    dtype: str | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """The reward model's logit ``label`` for each prompt + completion (see the module docstring)."""
    import torch

    tokenizer, net = load_reward_model(model, device, dtype)
    if label >= net.config.num_labels:
        raise ValueError(f"label {label} but {model} has {net.config.num_labels} output(s)")
    texts = _texts(tokenizer, prompts, completions)
    scores: list[float | None] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True,
            padding_side="right", truncation=True, max_length=max_length,
            add_special_tokens=False,
        ).to(net.device)
        with torch.inference_mode():
            logits = net(**batch).logits[:, label]
        scores.extend(float(x) for x in logits.float().cpu())
    return scores
