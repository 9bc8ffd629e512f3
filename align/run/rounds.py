"""Iterative on-policy DPO: rounds of sample -> score -> pair -> DPO (the `on_policy:` section,
align.run.onpolicy), each round from the previous round's weights.

    python align/dpo.py experiment=iterative_dpo                       # 3 rounds, tiny model
    python align/dpo.py experiment=iterative_dpo on_policy.rounds=5 trainer.loss_weights=[1,0.5]

Round k (1..rounds):
  1. the policy the round starts from (the configured model in round 1, then the previous
     round's weights) samples `on_policy.samples_per_prompt` completions at
     `on_policy.temperature` for the k-th slice of `on_policy.prompts_per_round` training prompts
     (the DPO data's prompts with their other columns, e.g. `solution`, shuffled with `seed`;
     HF generate, seeded per round);
  2. the `rewards:` section scores them as GRPO would (align.data.select.score_groups: weighted,
     dataset columns as keyword arguments);
  3. per prompt, chosen = the best-scored sample, rejected = the worst, kept when the margin is
     > 0 and >= `on_policy.min_margin` (align.data.select.preference_pairs);
  4. trl's DPOTrainer trains on those pairs, as `align/dpo.py` trains on any pairs (the
     `trainer:` section: loss types, beta, loss weights, steps per round), with the starting
     policy as the reference. With an adapter the reference is the base with the adapter
     disabled, so the round's adapter is then merged into its base (`round-k/merged/`): the next
     round starts a fresh adapter on it, and "adapter disabled" is the previous round's policy.
     With full fine-tuning trl's reference copy is the starting weights, and the next round
     starts from `round-k/final/`.

The run folder:
  config.yaml    the whole run's config
  round-k/       a DPO run folder (align.run.job): config.yaml (model.name_or_path: the weights
                 the round started from), final/, merged/ (with an adapter), pairs.jsonl (the
                 round's pairs with both rewards and the prompt's columns), metrics.json
                 (held-out figures before and after the round, and under `on_policy` the
                 sampling: prompts, samples, pairs kept and dropped by reason, the reward
                 histogram), log_history.jsonl, doctor.json
  rounds.json    per round: held-out accuracy before -> after, pairs, weights
  compare.md/csv `python -m align.compare` over the rounds

Under several processes (DDP, ZeRO-1/2) every rank samples its share of the round's prompts on
its own device (align.device.placement), the main process scores them and pairs them, and every
rank trains on the pairs it wrote. Weights sharded by ZeRO-3 or FSDP are whole on no rank
before the round's trainer is built, so sampling cannot run there: refused at the start.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

from align.data import DataConfig, DataError, load_stage_data
from align.data.select import preference_pairs, reward_histogram, score_groups
from align.device import Placement, check_placement
from align.errors import AlignError, ConfigError
from align.files import write_atomic, write_json, write_jsonl
from align.run.job import Job
from align.run.spec import RunSpec

log = logging.getLogger(__name__)

#: the columns of a DPO row that are answers, not the prompt's own
ANSWER_COLUMNS = ("chosen", "rejected")


def prompt_rows(train, spec: RunSpec) -> list[dict]:
    """The training prompts the rounds sample from: the DPO data's rows without their answers,
    shuffled with `seed`; as many as the rounds take, or a DataError saying how many there are."""
    op = spec.on_policy
    needed = op.rounds * op.prompts_per_round
    if len(train) < needed:
        raise DataError(f"on_policy: {op.rounds} rounds x {op.prompts_per_round} prompts need "
                        f"{needed} training prompts, the data has {len(train)}: lower "
                        "on_policy.prompts_per_round or on_policy.rounds, or give more data")
    rows = train.shuffle(seed=spec.seed).select(range(needed))
    rows = rows.remove_columns([c for c in ANSWER_COLUMNS if c in rows.column_names])
    return list(rows)


def sample_pairs(model, tokenizer, rows: list[dict], spec: RunSpec, seed: int,
                 place: Placement | None = None) -> tuple[list[dict], dict] | None:
    """The round's preference pairs from `model`'s own samples for `rows`, and what happened
    (prompts, samples, pair counts by reason, reward histogram). With `place` ranks="all" every
    rank calls it and samples its share (each with its own seed); the main process scores and
    returns the pairs, the others None."""
    from align.measure.generation import (
        generate_completions,
        rank_and_world,
        share_across_ranks,
    )

    op = spec.on_policy
    n = op.samples_per_prompt
    ranks = place.ranks if place is not None else "main"
    if place is not None:
        check_placement(model, place, "on-policy sampling")
    rank = rank_and_world()[0] if ranks == "all" else 0

    def sample(prompts):
        return generate_completions(model, tokenizer, prompts, max_new_tokens=op.max_new_tokens,
                                    batch_size=op.batch_size, do_sample=True,
                                    temperature=op.temperature, seed=seed + 7919 * rank)

    texts = share_across_ranks([row["prompt"] for row in rows for _ in range(n)], sample, ranks)
    if rank != 0:
        return None
    # A chat prompt's completion is an assistant turn, as trl hands it to rewards in GRPO. An
    # empty completion (the end token first) is scored but never paired (preference_pairs
    # leaves it out: no training row can hold it).
    chat = not isinstance(rows[0]["prompt"], str)
    samples = [[[{"role": "assistant", "content": t}] if chat else t
                for t in texts[i * n:(i + 1) * n]] for i in range(len(rows))]
    groups = score_groups(rows, samples, list(spec.rewards), list(spec.reward_weights))
    pairs, counts = preference_pairs(groups, op.min_margin, op.pairs_per_prompt, op.ties)
    stats = {"prompts": len(rows), "samples": len(texts), "empty_samples": counts["empty"],
             "sampling_seed": seed,
             "temperature": op.temperature, "pairs": counts,
             "rewards": reward_histogram(s["reward"] for g in groups for s in g)}
    return pairs, stats


def round_spec(spec: RunSpec, k: int, model) -> RunSpec:
    """Round k's spec: its own folder under the run's, starting from `model` (a ModelConfig)."""
    out = spec.out_dir / f"round-{k}"
    trainer = copy.copy(spec.trainer)
    trainer.output_dir = str(out)
    config = copy.deepcopy(dict(spec.config))
    config["output_dir"] = str(out)
    config["model"] = {**config["model"], "name_or_path": model.name_or_path,
                       "tokenizer": model.tokenizer}
    return dataclasses.replace(
        spec, out_dir=out, model=model, trainer=trainer,
        trainer_kwargs=MappingProxyType({**spec.trainer_kwargs, "output_dir": str(out)}),
        config=MappingProxyType(config))


def run_rounds(job: Job) -> dict:
    """Train `job.spec.on_policy.rounds` rounds; returns the first round's held-out figures
    before training, the last round's after, and every round's summary."""
    from align.trainers.dpo import DPOTrainer  # heavy (trl): once the config is known valid

    from align.models import build_model

    spec = job.spec
    op = spec.on_policy
    place = job.placement
    if place.before_at_train_begin:
        raise ConfigError("on_policy.enabled=true samples from the policy before each round's "
                          "trainer is built, and weights sharded by ZeRO-3 or FSDP are whole on "
                          "no rank then: launch with launch/ddp.yaml, zero1.yaml or zero2.yaml")
    data = load_stage_data(spec.data, "dpo", vision=spec.model.is_vision)
    rows = prompt_rows(data.train, spec)
    root = spec.out_dir
    if job.is_main:
        root.mkdir(parents=True, exist_ok=True)
        from omegaconf import OmegaConf

        write_atomic(root / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(dict(spec.config))))
    start = spec.model
    summary: list[dict] = []
    first: dict = {}
    for k in range(1, op.rounds + 1):
        rjob = Job(round_spec(spec, k, start))
        model, tokenizer, peft_config = build_model(rjob.spec.model, spec.peft, place)
        seed = spec.seed * 1000 + k  # each round (and each run seed) samples its own
        part = rows[(k - 1) * op.prompts_per_round:k * op.prompts_per_round]
        # every rank gets the main process's pairs: they all stop, or all train on the same file
        pairs, stats = from_main(sample_pairs(model, tokenizer, part, spec, seed, place))
        log.info("on-policy round %d/%d: %d prompts x %d samples -> %d pairs (%s)", k,
                 op.rounds, len(part), op.samples_per_prompt, len(pairs),
                 ", ".join(f"{key} {v}" for key, v in stats["pairs"].items()))
        if not pairs:
            raise AlignError(f"on-policy round {k}: no pair from {len(part)} prompts "
                             f"({stats['pairs']}): every prompt's samples scored alike; raise "
                             "on_policy.samples_per_prompt or on_policy.temperature")
        rjob.begin()
        pairs_file = rjob.out_dir / "pairs.jsonl"
        if rjob.is_main:
            write_jsonl(pairs_file, pairs)
        barrier()  # the file is whole before any rank reads it
        # Through the data layer, as `align/dpo.py data=local data.path=<pairs.jsonl>` reads
        # them: every row checked and normalised the same way.
        train = load_stage_data(DataConfig(name="on_policy", path=str(pairs_file)), "dpo").train
        rjob.metrics["on_policy"] = {"round": k, "rounds": op.rounds,
                                     "start": rjob.spec.model.name_or_path, **stats}
        rjob.measure("before", model, tokenizer, data.heldout, pairs=data.eval)
        trainer = DPOTrainer(model=model, ref_model=None, args=rjob.args, train_dataset=train,
                             eval_dataset=rjob.trl_eval_dataset(data), processing_class=tokenizer,
                             peft_config=peft_config,
                             callbacks=rjob.callbacks(tokenizer, data.heldout))
        rjob.train(trainer)
        after = rjob.measure("after", trainer.model, tokenizer, data.heldout, pairs=data.eval)
        rjob.save(trainer)
        before = rjob.metrics.get("heldout_before")
        first = first or dict(before or {})
        start = next_start(trainer, tokenizer, rjob, peft_config is not None)
        barrier()  # the next round's weights are written before any rank loads them
        summary.append({"round": k, "folder": rjob.out_dir.name,
                        "start": rjob.spec.model.name_or_path, "pairs": len(pairs),
                        "accuracy_before": (before or {}).get("accuracy"),
                        "accuracy_after": (after or {}).get("accuracy"),
                        "ends": start.name_or_path})
        del model, trainer
    metrics = {"heldout_before": first, "heldout_after": dict(after or {}), "rounds": summary}
    if job.is_main:
        write_json(root / "rounds.json", metrics)
        compare_rounds(root, [root / s["folder"] for s in summary])
        for s in summary:
            if s["accuracy_before"] is not None:
                print(f"round {s['round']}: held-out accuracy {s['accuracy_before']:.3f} -> "
                      f"{s['accuracy_after']:.3f}, {s['pairs']} pairs")
        print(f"run folder: {root}")
    return metrics


def from_main(value):
    """The main process's `value` on every rank of the process group (itself without one)."""
    from align.measure.generation import rank_and_world

    if rank_and_world()[1] == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank of the process group (nothing without one)."""
    from align.measure.generation import rank_and_world

    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def next_start(trainer, tokenizer, rjob: Job, adapter: bool):
    """The ModelConfig of the weights the next round starts from: the round's adapter merged
    into its base (`merged/`), or its fully fine-tuned `final/`."""
    if not adapter:
        folder = rjob.out_dir / "final"
    else:
        folder = rjob.out_dir / "merged"
        if rjob.is_main:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(folder))
            tokenizer.save_pretrained(str(folder))
    return dataclasses.replace(rjob.spec.model, name_or_path=str(folder), tokenizer=None)


def compare_rounds(root: Path, folders: list[Path]) -> None:
    """align.compare's table across the rounds (compare.md, compare.csv in the run folder), run
    as the user would run it: `python -m align.compare round-1 round-2 ... --out <run>`."""
    command = [sys.executable, "-m", "align.compare", *map(str, folders), "--out", str(root)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log.warning("the rounds' comparison failed (%s): %s", " ".join(command),
                    done.stderr.strip().splitlines()[-1:] or done.returncode)
        return
    # its table is compare.md; the terminal gets the best round and where the table is
    sys.stdout.write("".join(line + "\n" for line in done.stdout.splitlines()
                             if line.startswith(("best:", "table:"))))
