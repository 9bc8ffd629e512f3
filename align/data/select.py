"""From scored samples to training data: rejection sampling (SFT rows), preference pairs
(DPO, KTO and reward-model rows) and what was kept or dropped, with the reasons counted.

A *group* is every sample drawn for one prompt: a list of dicts, each with

    prompt       the prompt as the data layer gives it (a string or a list of chat messages)
    completion   the sampled text (or an assistant message list)
    reward       the weighted total of the rewards, or None when no reward applied
    rewards      {name: score or None}, each reward on its own (optional)

plus any other columns of the prompt's row (``solution`` ...), which are carried into the rows
made from the group, so a reward that reads them works on the output as it did on the input.
Pure functions, no model and no I/O: align/generate.py writes what they return, and iterative
on-policy DPO builds each round's pairs with them.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: the keys a sample has that are not columns of its prompt's row
SAMPLE_KEYS = ("prompt", "completion", "reward", "rewards", "prompt_index", "sample_index")


#: how preference_pairs picks among samples of equal reward
PAIR_TIES = ("first", "most_drawn")


def completion_text(completion: Any) -> str:
    """The text of a completion: itself, or its messages' contents joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return "\n".join(str(m.get("content", "")) if isinstance(m, Mapping) else str(m)
                         for m in completion)
    return str(completion)


_SPACE = re.compile(r"\s+")


def _normalised(completion: Any) -> str:
    """The text compared for duplicates: case and runs of whitespace do not count."""
    return _SPACE.sub(" ", completion_text(completion)).strip().lower()


def _carried(sample: Mapping) -> dict:
    return {k: v for k, v in sample.items() if k not in SAMPLE_KEYS}


def _score(sample: Mapping) -> float | None:
    value = sample.get("reward")
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def rejection_sample(groups: Iterable[Sequence[Mapping]], threshold: float,
                     max_per_prompt: int = 1,
                     near_duplicate: float | None = 0.9) -> tuple[list[dict], dict[str, int]]:
    """SFT rows ``{prompt, completion, reward, ...columns}``: per prompt, the best samples whose
    reward is >= ``threshold``, at most ``max_per_prompt`` of them, without duplicates.

    Samples are taken best first (ties in drawing order). A sample whose text equals a kept one
    (ignoring case and whitespace) is an exact duplicate; one whose similarity to a kept one
    (difflib's ratio over the normalised text) is >= ``near_duplicate`` is a near duplicate
    (``None``: only exact duplicates are dropped). An empty (or all-whitespace) completion is
    never kept: no training row can hold it. Counts: ``kept``, ``empty``, ``unscored``,
    ``below_threshold``, ``exact_duplicates``, ``near_duplicates``, ``over_limit``,
    ``prompts``, ``prompts_kept``.
    """
    if not math.isfinite(threshold):  # nan would keep every sample: `score < nan` is false
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if max_per_prompt < 1:
        raise ValueError(f"max_per_prompt must be >= 1, got {max_per_prompt}")
    if near_duplicate is not None and not 0.0 < near_duplicate <= 1.0:
        raise ValueError(f"near_duplicate must be in (0, 1] or None, got {near_duplicate}")
    counts: Counter = Counter()
    rows: list[dict] = []
    for group in groups:
        counts["prompts"] += 1
        scored = []
        for order, sample in enumerate(group):
            score = _score(sample)
            if not _normalised(sample["completion"]):
                counts["empty"] += 1
            elif score is None:
                counts["unscored"] += 1
            elif score < threshold:
                counts["below_threshold"] += 1
            else:
                scored.append((-score, order, sample))
        kept_texts: list[str] = []
        for _, _, sample in sorted(scored, key=lambda item: item[:2]):
            text = _normalised(sample["completion"])
            if text in kept_texts:
                counts["exact_duplicates"] += 1
                continue
            if near_duplicate is not None and any(
                    difflib.SequenceMatcher(None, text, kept).ratio() >= near_duplicate
                    for kept in kept_texts):
                counts["near_duplicates"] += 1
                continue
            if len(kept_texts) >= max_per_prompt:
                counts["over_limit"] += 1
                continue
            kept_texts.append(text)
            rows.append({"prompt": sample["prompt"], "completion": sample["completion"],
                         "reward": _score(sample), **_carried(sample)})
        counts["kept"] += len(kept_texts)
        counts["prompts_kept"] += bool(kept_texts)
    return rows, _all_counts(counts, ("prompts", "prompts_kept", "kept", "empty", "unscored",
                                      "below_threshold", "exact_duplicates", "near_duplicates",
                                      "over_limit"))


def preference_pairs(groups: Iterable[Sequence[Mapping]], min_margin: float = 0.0,
                     pairs_per_prompt: int = 1,
                     ties: str = "first") -> tuple[list[dict], dict[str, int]]:
    """DPO rows ``{prompt, chosen, rejected, chosen_reward, rejected_reward, ...columns}``:
    per prompt, chosen = the best-scored sample and rejected = the worst, kept when their
    reward margin is > 0 and >= ``min_margin``. With ``pairs_per_prompt`` k > 1, the best is also
    paired with the next-worst samples, worst first, up to k pairs of distinct rejected texts,
    each pair under the same margin rule (``pairs`` then counts rows, not prompts).

    Among samples of equal reward, ``ties="first"`` takes the first drawn; ``"most_drawn"`` takes
    the text drawn most often (ignoring case and whitespace; then the first drawn): the policy's
    likeliest answer at that reward, so the rejected side is the mistake it makes most, the one
    greedy decoding is likeliest to give. Dropped groups are counted by reason:
    ``too_few_scored`` (fewer than two samples with a reward), ``all_equal`` (every scored
    sample has the same reward), ``below_margin``, ``same_text`` (best and worst read the same,
    ignoring case and whitespace: no preference to learn). Empty completions (no training row
    can hold them) take no part and are counted as ``empty`` (samples, not prompts). Counts also
    hold ``prompts`` and ``pairs``.
    """
    if not (math.isfinite(min_margin) and min_margin >= 0):  # nan would pass `gap < nan`
        raise ValueError(f"min_margin must be a finite number >= 0, got {min_margin}")
    if isinstance(pairs_per_prompt, bool) or pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt must be an integer >= 1, got {pairs_per_prompt}")
    if ties not in PAIR_TIES:
        raise ValueError(f"ties must be one of {', '.join(PAIR_TIES)}, got {ties!r}")
    counts: Counter = Counter()
    rows: list[dict] = []
    for group in groups:
        counts["prompts"] += 1
        counts["empty"] += sum(1 for sample in group if not _normalised(sample["completion"]))
        scored = [(score, sample) for sample in group
                  if (score := _score(sample)) is not None and _normalised(sample["completion"])]
        if len(scored) < 2:
            counts["too_few_scored"] += 1
            continue
        if ties == "most_drawn":  # the stable sort keeps the draw order among equal counts
            drawn = Counter(_normalised(sample["completion"]) for _, sample in scored)
            scored.sort(key=lambda item: -drawn[_normalised(item[1]["completion"])])
        best = max(scored, key=lambda item: item[0])  # max/min keep the first of equal items
        worst = min(scored, key=lambda item: item[0])
        margin = best[0] - worst[0]
        if margin == 0:
            counts["all_equal"] += 1
        elif margin < min_margin:
            counts["below_margin"] += 1
        elif _normalised(best[1]["completion"]) == _normalised(worst[1]["completion"]):
            counts["same_text"] += 1
        else:
            chosen_text, taken = _normalised(best[1]["completion"]), set()
            # worst first; sorted() keeps the draw order among equal rewards, as min() does
            for score, sample in sorted(scored, key=lambda item: item[0]):
                gap = best[0] - score
                if len(taken) == pairs_per_prompt or not gap > 0 or gap < min_margin:
                    break
                text = _normalised(sample["completion"])
                if text == chosen_text or text in taken:
                    continue
                taken.add(text)
                counts["pairs"] += 1
                rows.append({"prompt": best[1]["prompt"], "chosen": best[1]["completion"],
                             "rejected": sample["completion"], "chosen_reward": best[0],
                             "rejected_reward": score, **_carried(best[1])})
    return rows, _all_counts(counts, ("prompts", "pairs", "too_few_scored", "all_equal",
                                      "below_margin", "same_text", "empty"))


def reward_histogram(values: Iterable[float | None], bins: int = 10) -> dict[str, Any]:
    """``{n, unscored, mean, min, max, edges, counts}`` of the rewards (None: unscored), with
    ``bins`` equal-width bins between the smallest and the largest (one bin when all equal)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    values = list(values)
    scored = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    out: dict[str, Any] = {"n": len(scored), "unscored": len(values) - len(scored)}
    if not scored:
        return {**out, "mean": None, "min": None, "max": None, "edges": [], "counts": []}
    low, high = min(scored), max(scored)
    if low == high:
        edges, hist = [low, high], [len(scored)]
    else:
        width = (high - low) / bins
        edges = [low + i * width for i in range(bins)] + [high]
        hist = [0] * bins
        for v in scored:
            hist[min(int((v - low) / width), bins - 1)] += 1
    return {**out, "mean": sum(scored) / len(scored), "min": low, "max": high,
            "edges": edges, "counts": hist}


def score_groups(rows: Sequence[Mapping], completions: Sequence[Sequence[Any]],
                 reward_funcs: Sequence[Any], weights: Sequence[float] | None = None,
                 ) -> list[list[dict]]:
    """Score every completion of every row and return the groups the functions above take.

    ``rows[i]`` is a prompt's row (``prompt`` plus the columns its rewards read, e.g.
    ``solution``) and ``completions[i]`` the samples drawn for it. Each reward is called once
    over all samples, the way trl calls it (``completions=``, ``prompts=``, each column as a
    keyword list), so a reward behaves here as in GRPO. ``reward`` is the weighted sum of the
    rewards that scored the sample, as trl combines them (a reward's None is left out; all None
    gives None).
    """
    if len(rows) != len(completions):
        raise ValueError(f"{len(completions)} completion lists for {len(rows)} rows")
    weights = list(weights) if weights is not None else [1.0] * len(reward_funcs)
    if len(weights) != len(reward_funcs):
        raise ValueError(f"{len(weights)} weights for {len(reward_funcs)} rewards")
    flat = [(i, j, row, c) for i, (row, samples) in enumerate(zip(rows, completions))
            for j, c in enumerate(samples)]
    names = sorted({k for row in rows for k in row if k not in SAMPLE_KEYS})
    columns = {k: [row.get(k) for _, _, row, _ in flat] for k in names}
    prompts = [row["prompt"] for _, _, row, _ in flat]
    texts = [c for _, _, _, c in flat]
    scores = {}
    for fn in reward_funcs:
        values = list(fn(completions=texts, prompts=prompts, **columns))
        if len(values) != len(texts):
            raise ValueError(f"reward {fn.__name__!r} returned {len(values)} scores for "
                             f"{len(texts)} completions")
        scores[fn.__name__] = values
    groups: list[list[dict]] = [[] for _ in rows]
    for k, (i, j, row, completion) in enumerate(flat):
        each = {name: (None if v[k] is None else float(v[k])) for name, v in scores.items()}
        parts = [w * s for w, s in zip(weights, each.values())
                 if s is not None and not math.isnan(s)]
        groups[i].append({**{c: row[c] for c in names if c in row}, "prompt": row["prompt"],
                          "completion": completion, "reward": sum(parts) if parts else None,
                          "rewards": each, "prompt_index": i, "sample_index": j})
    return groups


def _all_counts(counts: Counter, keys: Sequence[str]) -> dict[str, int]:
    return {k: int(counts.get(k, 0)) for k in keys}
