"""Numbers computed from scored completions: pass@k, length statistics, preference accuracy.

Pure python except `preference_accuracy`, `reward_accuracy` and `heldout_loss`, which run the
model (torch, imported lazily).

pass@k uses the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
Trained on Code"): with n samples of which c are correct, the chance that at least one of k
samples drawn without replacement is correct is 1 - C(n-c, k) / C(n, k). Averaging 1{any of the
first k correct} instead is biased and noisier.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: n samples, c of them correct, k <= n."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): the product form of C(n-c, k)/C(n, k), which stays
    # exact in floating point where the binomials themselves would overflow.
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over problems, each with n samples and correct_counts[i] correct."""
    if not correct_counts:
        return float("nan")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)


def length_stats(lengths: Sequence[int], limit: int | None = None) -> dict[str, float]:
    """Mean, median, max of completion lengths (tokens) and the share that reached `limit`."""
    if not lengths:
        return {"completion_tokens_mean": float("nan")}
    stats = {
        "completion_tokens_mean": sum(lengths) / len(lengths),
        "completion_tokens_median": float(statistics.median(lengths)),
        "completion_tokens_max": float(max(lengths)),
    }
    if limit is not None:
        stats["truncated_rate"] = sum(n >= limit for n in lengths) / len(lengths)
    return stats


def mean(values: Sequence[float | None]) -> tuple[float, int]:
    """(mean of the values that are not None, how many there were); nan when none."""
    scored = [float(v) for v in values if v is not None]
    return (sum(scored) / len(scored) if scored else math.nan), len(scored)


def sequence_logps(model, tokenizer, prompts: list[str], completions: list[str],
                   batch_size: int = 64) -> list[float]:
    """Sum of the model's log-probabilities of each completion given its prompt (both plain
    text, already rendered); the completion's tokens are those after the prompt's tokens."""
    import torch

    device = next(model.parameters()).device
    results: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                ids, masks = [], []
                for p, c in zip(prompts[start:start + batch_size],
                                completions[start:start + batch_size]):
                    p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
                    c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
                    ids.append(p_ids + c_ids)
                    masks.append([0] * len(p_ids) + [1] * len(c_ids))
                width = max(len(x) for x in ids)
                pad = tokenizer.pad_token_id or 0
                input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
                attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids],
                                         device=device)
                loss_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks],
                                         device=device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
                logps = torch.log_softmax(logits[:, :-1], dim=-1)
                token_logps = logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                results.extend((token_logps * loss_mask[:, 1:]).sum(-1).tolist())
    finally:
        if was_training:
            model.train()
    return results


def preference_margins(model, tokenizer, pairs, max_samples: int | None = None,
                       batch_size: int = 64) -> list[float]:
    """log p(chosen) - log p(rejected) under the model, per pair (see preference_accuracy)."""
    from trl.data_utils import maybe_apply_chat_template

    rows = list(pairs)[:max_samples] if max_samples else list(pairs)
    rendered = [maybe_apply_chat_template({k: r[k] for k in ("prompt", "chosen", "rejected")},
                                          tokenizer) for r in rows]
    prompts = [r["prompt"] for r in rendered]
    chosen = sequence_logps(model, tokenizer, prompts, [r["chosen"] for r in rendered], batch_size)
    rejected = sequence_logps(model, tokenizer, prompts, [r["rejected"] for r in rendered],
                              batch_size)
    return [c - r for c, r in zip(chosen, rejected)]


def preference_accuracy(model, tokenizer, pairs, max_samples: int | None = None,
                        batch_size: int = 64, reference_margins: list[float] | None = None
                        ) -> dict[str, float]:
    """Share of preference pairs whose chosen answer the model ranks above the rejected one.

    `pairs` is a dataset (or list of rows) with prompt/chosen/rejected, plain or
    conversational; conversational rows are rendered with trl's `apply_chat_template`, exactly
    as DPOTrainer renders them for training (so the end-of-turn token is part of the answer).
    Ranking is by the sum of log-probabilities of the answer tokens under the model itself;
    the mean margin (log p(chosen) - log p(rejected)) is reported too.

    With `reference_margins` (the same pairs' margins under the reference model, e.g. the model
    before DPO training) also `implicit_reward_accuracy`: the share of pairs whose DPO implicit
    reward, beta * (log pi/pi_ref (chosen) - log pi/pi_ref (rejected)), is positive -- what
    trl logs as rewards/accuracies on training batches, here on pairs never trained on. Before
    any training it is 0 (every pair ties); chance is 0.5.
    """
    margins = preference_margins(model, tokenizer, pairs, max_samples, batch_size)
    n = max(len(margins), 1)
    figures = {
        "preference_accuracy": sum(m > 0 for m in margins) / n,
        "preference_margin": sum(margins) / n,
        "preference_pairs": len(margins),
    }
    if reference_margins is not None:
        if len(reference_margins) != len(margins):
            raise ValueError("reference_margins must hold one margin per pair")
        # 1e-6: a margin unchanged up to float noise is a tie, not a win.
        figures["implicit_reward_accuracy"] = sum(
            m - r > 1e-6 for m, r in zip(margins, reference_margins)) / n
    return figures


def reward_accuracy(model, tokenizer, pairs, max_samples: int | None = None,
                    batch_size: int = 64) -> dict[str, float]:
    """A reward model's held-out pairwise accuracy: the share of preference pairs whose chosen
    answer it scores above the rejected one, and the mean margin score(chosen) - score(rejected).

    `model` is a sequence classifier with one output (a peft model too). Each side is rendered
    and scored by the `reward_model` reward's own code (rewards.model.score_completions), which
    renders it as trl's RewardTrainer does for training: what is measured here is what a GRPO run
    rewarded by the saved model will see.
    """
    from rewards.model import score_completions

    rows = list(pairs)[:max_samples] if max_samples else list(pairs)
    prompts = [r["prompt"] for r in rows]
    chosen = score_completions(model, tokenizer, prompts, [r["chosen"] for r in rows], batch_size)
    rejected = score_completions(model, tokenizer, prompts, [r["rejected"] for r in rows],
                                 batch_size)
    n = max(len(rows), 1)
    return {"pairwise_accuracy": sum(c > r for c, r in zip(chosen, rejected)) / n,
            "reward_margin": sum(c - r for c, r in zip(chosen, rejected)) / n,
            "reward_pairs": len(rows)}


def heldout_loss(model, dataset, collator, batch_size: int = 16) -> float:
    """Mean token loss of the model on `dataset` as the trainer feeds it (`collator`: the
    trainer's data collator, so the same labels and completion masks as training), averaged over
    the labelled tokens of every batch. Runs the model alone, in this process: no collective
    call, nothing prepared by the trainer's accelerator (an evaluation through the trainer before
    training left a 2-process run unsynchronised)."""
    import torch

    was_training = model.training
    model.eval()
    total = tokens = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = collator([dataset[i] for i in
                                  range(start, min(start + batch_size, len(dataset)))])
                batch = {k: v.to(model.device) if hasattr(v, "to") else v
                         for k, v in batch.items()}
                labels = batch["labels"]
                # the loss is the mean over the tokens whose next-token label is set
                n = int((labels[..., 1:] != -100).sum())
                if n == 0:
                    continue
                loss = model(**batch).loss
                total += float(loss) * n
                tokens += n
    finally:
        model.train(was_training)
    return total / tokens if tokens else float("nan")
