"""Reward-model reward: a sequence-classification model scores prompt + completion.

    rewards:
      rm:
        fn: reward_model
        kwargs: {model: Skywork/Skywork-Reward-V2-Qwen3-0.6B, batch_size: 16}

``model`` is a hub id or a local folder: a full model, a peft adapter of a sequence classifier
(its base is loaded and the adapter, with its trained score head, merged into it; needs peft), or
a training run folder whose ``final/`` holds either (what ``python align/rm.py`` writes). It is
loaded once per process with ``AutoModelForSequenceClassification`` and kept (one copy per
``(model, device, dtype)``).

The reward is the logit ``label`` (default 0) for the whole sequence, rendered as trl's
RewardTrainer renders a pair's side for training, so that a model trained there scores what it
learnt on: conversational prompts and completions go through the reward model's own chat template
(tokenised by it, as trl does), plain text is ``prompt + completion`` with the tokenizer's eos
token appended when missing (trl's RewardTrainer appends it to every plain chosen/rejected) and
the tokenizer's special tokens added. Inputs are right-padded in batches of ``batch_size`` and
cut to ``max_length`` tokens; the score of a sample does not depend on the batch it lands in.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewards.registry import register

_MODEL_FILES = ("config.json", "adapter_config.json")


def resolve_reward_model(model: str) -> str:
    """The folder (or hub id) to load for ``model``: a training run folder stands for its
    ``final/`` model."""
    path = Path(model)
    if path.is_dir() and not any((path / f).is_file() for f in _MODEL_FILES):
        final = path / "final"
        if any((final / f).is_file() for f in _MODEL_FILES):
            return str(final)
        raise ValueError(f"reward_model: {model} holds no model (no config.json or "
                         "adapter_config.json, here or in final/)")
    return model


@functools.lru_cache(maxsize=4)
def load_reward_model(model: str, device: str = "auto", dtype: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) for ``model``, in eval mode on ``device``; cached per process."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = resolve_reward_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype else {}
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():
        config = json.loads(adapter.read_text())
        if config.get("task_type") != "SEQ_CLS":
            raise ValueError(f"reward_model: the adapter in {path} is a {config.get('task_type')} "
                             "adapter, not a sequence classifier's (task_type SEQ_CLS)")
        from peft import PeftModel  # only adapters need peft

        base = AutoModelForSequenceClassification.from_pretrained(
            config["base_model_name_or_path"], num_labels=1, **kwargs)
        # The adapter carries the trained score head (peft's modules_to_save) and replaces the
        # base's new one; merged, it runs as fast as a full model.
        net = PeftModel.from_pretrained(base, path).merge_and_unload()
    else:
        net = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    net = net.to(device).eval()
    if tokenizer.pad_token_id is None:
        # The classifier reads the last non-pad token; without a pad token it cannot find it.
        tokenizer.pad_token = tokenizer.eos_token
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, net


def _is_chat(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def reward_input_ids(tokenizer: Any, prompt: Any, completion: Any) -> list[int]:
    """The token ids a reward model scores for ``prompt`` + ``completion``: what trl's
    RewardTrainer tokenises for one side of a training pair (see the module docstring)."""
    from rewards.text import completion_text

    if _is_chat(completion) and getattr(tokenizer, "chat_template", None):
        messages = [*(prompt if _is_chat(prompt)
                      else ([{"role": "user", "content": prompt}] if prompt else [])),
                    *completion]
        return list(tokenizer.apply_chat_template(messages, tokenize=True,
                                                  return_dict=True)["input_ids"])
    head = "" if prompt is None else (
        prompt if isinstance(prompt, str)
        else "".join(str(m.get("content", "")) for m in prompt if isinstance(m, Mapping)))
    text = head + completion_text(completion)
    eos = tokenizer.eos_token
    if eos and not text.endswith(eos):
        text += eos
    return list(tokenizer(text)["input_ids"])


def score_completions(net: Any, tokenizer: Any, prompts: Sequence[Any] | None,
                      completions: Sequence[Any], batch_size: int = 16, max_length: int = 2048,
                      label: int = 0) -> list[float]:
    """The logit ``label`` of ``net`` (a loaded sequence classifier, a peft model too) for each
    prompt + completion, in eval mode, batched with right padding."""
    import torch

    ids = [reward_input_ids(tokenizer, prompts[i] if prompts is not None else None, c)[:max_length]
           for i, c in enumerate(completions)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    scores: list[float] = []
    try:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            width = max(len(x) for x in chunk)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunk], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk],
                                device=device)
            with torch.inference_mode():
                logits = net(input_ids=input_ids, attention_mask=mask).logits[:, label]
            scores.extend(float(x) for x in logits.float().cpu())
    finally:
        net.train(was_training)
    return scores


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
    resolve_reward_model(model)  # a folder without a model fails here, at setup


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
    tokenizer, net = load_reward_model(model, device, dtype)
    if label >= net.config.num_labels:
        raise ValueError(f"label {label} but {model} has {net.config.num_labels} output(s)")
    return list(score_completions(net, tokenizer, prompts, completions, batch_size, max_length,
                                  label))
