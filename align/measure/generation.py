"""Batched generation with Hugging Face ``generate``, for held-out evaluation.

Supports any causal LM that ``generate`` supports, including peft-wrapped models. Prompts are
plain strings (tokenised as they are) or chat message lists (rendered with the tokenizer's chat
template and its generation prompt). Greedy by default; sampling with ``do_sample=True``.

Vision-language models: pass the processor as ``tokenizer`` and each prompt's images as
``images`` (one list per prompt, PIL images, as the data layer's ``images`` column holds them);
image parts of the prompt messages are filled in order, as trl does in training.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def _render(tokenizer, prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and "role" in m for m in prompt
    ):
        return tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )
    raise TypeError(
        f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}: {prompt!r}"
    )


def generate_completions(
    model,
    tokenizer,
    prompts: list,
    max_new_tokens: int,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: bool = False,
    images: list | None = None,
    top_p: float | None = None,
    synced: bool | None = None,
) -> list[str]:
    """Generate one completion per prompt and return the decoded new text, stripped.

    Args:
        model: a causal LM (``transformers`` or ``peft``); left in the train/eval mode it came in.
        tokenizer: its tokenizer; its padding side is restored afterwards.
        prompts: strings (used as-is) or message lists (chat template + generation prompt).
        max_new_tokens: the most tokens generated per prompt.
        batch_size: prompts per ``generate`` call.
        do_sample, temperature, top_p: greedy decoding unless ``do_sample`` is True (``top_p``
            None: the model's generation config decides).
        seed: seeds sampling in a forked RNG, so the caller's global RNG state is untouched.
        progress: show a tqdm bar over batches.
        images: vision-language models only: one list of images per prompt (``tokenizer`` is
            then the model's processor).
        synced: transformers' ``synced_gpus``: every rank generates in lockstep, as sharded
            weights (ZeRO-3, FSDP) need (align.device.Placement.synced); None: transformers
            decides.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    is_chat = [not isinstance(p, str) for p in prompts]
    if any(is_chat) and not all(is_chat):
        raise TypeError("prompts mix strings and message lists; pass one kind per call")
    processor = tokenizer if hasattr(tokenizer, "image_processor") else None
    if images is not None and processor is None:
        raise TypeError("images were given but the processing class has no image processor")
    if images is not None and len(images) != len(prompts):
        raise ValueError(f"{len(images)} image lists for {len(prompts)} prompts")
    if processor is not None:
        tokenizer = processor.tokenizer
        texts = [processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 if not isinstance(p, str) else p for p in prompts]
    else:
        texts = [_render(tokenizer, p) for p in prompts]
    # A rendered chat template already holds the special tokens (BOS etc.) the model expects;
    # plain strings get the tokenizer's usual ones.
    add_special_tokens = not is_chat[0]
    pad_id = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id
    )
    if pad_id is None:
        raise ValueError(
            "the tokenizer has neither a pad token nor an eos token; set tokenizer.pad_token first"
        )

    device = next(model.parameters()).device
    starts = range(0, len(texts), batch_size)
    batches = [(texts[i : i + batch_size], images[i : i + batch_size] if images is not None else None)
               for i in starts]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generating", unit="batch")

    gen_kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": pad_id,
    }
    if synced is not None:
        gen_kwargs["synced_gpus"] = synced
    if do_sample:
        gen_kwargs["temperature"] = temperature
        if top_p is not None:
            gen_kwargs["top_p"] = top_p
    else:
        # Explicitly neutral sampling settings, so a generation_config that asks for sampling
        # (temperature/top_p/top_k) does not warn or leak into greedy decoding.
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)

    was_training = model.training
    padding_side = tokenizer.padding_side
    # Decoder-only models continue from the last position: padding must be on the left.
    tokenizer.padding_side = "left"
    model.eval()
    rng = contextlib.nullcontext()
    if seed is not None:
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    completions: list[str] = []
    try:
        with rng, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            for batch, batch_images in batches:
                if processor is not None:
                    # processors take None, not a list of empty lists, for text-only batches
                    has_images = batch_images is not None and any(batch_images)
                    enc = processor(
                        text=batch,
                        images=[list(i) for i in batch_images] if has_images else None,
                        return_tensors="pt",
                        padding=True,
                        padding_side="left",
                        add_special_tokens=add_special_tokens,
                    ).to(device)
                else:
                    enc = tokenizer(
                        batch,
                        return_tensors="pt",
                        padding=True,
                        add_special_tokens=add_special_tokens,
                    ).to(device)
                out = model.generate(**enc, **gen_kwargs)
                new_tokens = out[:, enc["input_ids"].shape[1] :]
                completions.extend(
                    t.strip()
                    for t in tokenizer.batch_decode(
                        new_tokens, skip_special_tokens=True
                    )
                )
    finally:
        tokenizer.padding_side = padding_side
        if was_training:
            model.train()
    return completions


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process's torch.distributed group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share_across_ranks(items: list, work, ranks: str = "all") -> list:
    """`work(items)` (one result per item, in order) spread over the ranks of the process
    group: each rank takes an equal share (the last ones padded with copies of the first item,
    so that every rank makes the same number of calls: lockstep generation needs it), and the
    results come back whole, in order, on every rank. `ranks="main"` or a single process: the
    caller's rank does all of it."""
    rank, world = rank_and_world()
    if ranks == "main" or world == 1 or not items:
        return list(work(items))
    import torch.distributed as dist

    size = -(-len(items) // world)
    mine = items[rank * size:(rank + 1) * size]
    log.info("rank %d of %d: %d of %d items, each rank generates its share", rank, world,
             len(mine), len(items))
    padded = mine + [items[0]] * (size - len(mine))
    results = list(work(padded))[:len(mine)]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, results)
    return [r for part in gathered for r in part]
