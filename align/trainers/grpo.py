"""trl's GRPOTrainer with DAPO's dynamic sampling (`trainer.dynamic_sampling=true`).

A group whose completions all got the same reward (all right, or all wrong) has zero advantage
at every token: it costs a backward pass and teaches nothing, and as a policy improves more of
its groups are like that. DAPO (Yu et al., 2025) drops those groups and samples more prompts
until the batch is full of groups that carry a signal; trl 1.16 does not have it.

How it works here. trl generates, scores and computes advantages for a whole generation batch
in `_generate_and_score_completions`. After that call, each process counts its groups whose
rewards do not vary. While any process is short of informative groups, and fewer than
`dynamic_sampling_max_rounds` extra rounds ran, every process generates groups for fresh
prompts drawn at random from the training set (the same number on every process: trl gathers
rewards across processes), as many as the rate of informative groups so far says it needs
(at most one batch's worth per round). Its batch is then refilled, group by group, with
informative groups; a batch still short after the last round keeps some zero-spread groups,
so the batch size never changes. Each extra round's advantages are computed by trl within
that round, per group as always (with `scale_rewards=batch`, over that round's batch). The
fresh prompts are a function of (seed, process, step, round), so a run resumed from a
checkpoint trains on what the uninterrupted run trained on. On by default
(conf/trainer/grpo.yaml); vision models train without it.

Logged per step (W&B, trainer_state.json; averaged over the logging window):
  dynamic_sampling/extra_rounds           extra generation rounds
  dynamic_sampling/generated_groups       groups generated / groups trained on (oversampling)
  dynamic_sampling/zero_spread_generated  share of the generated groups with zero spread
  dynamic_sampling/zero_spread_kept       share of the trained groups with zero spread
trl's own `reward`, `frac_reward_zero_std`, completion lengths ... cover every generated group.

Needs whole groups on each process: per_device_train_batch_size x steps_per_generation must be
a multiple of num_generations (align's spec checks it). Text models only: the rows of vision
batches (pixel values per image) are not joined here.

trl internals used, each pinned by tests/test_dynamic_sampling.py so that a trl upgrade fails
loudly: `_generate_and_score_completions(inputs)` returning per-row tensors (the keys below),
`_calculate_rewards(...)` returning every process's rewards gathered in process order,
`reward_weights`, `num_generations`, `_metrics`. For environments (the GRPOTrainer class
docstring), pinned by tests/test_nonfinite_rewards.py: `environment_factories`,
`_environment_pool` ({name: [instances]}) and `reward_func_names` (an environment's reward
appended after the configured ones, named after its class).
"""

from __future__ import annotations

import inspect
import math

import torch
from trl import GRPOTrainer as TrlGRPOTrainer
from trl.trainer.utils import nanstd

from align.errors import RolloutError
from rewards.registry import RewardError
from tools.registry import environment_failure, environment_reward

#: trl's per-row outputs joined across rounds, with the side and value they are padded with
#: (None: the tokenizer's pad token).
PAD_LEFT = {"prompt_ids": None, "prompt_mask": 0}
PAD_RIGHT = {"completion_ids": None, "completion_mask": 0, "old_per_token_logps": 0.0,
             "ref_per_token_logps": 0.0, "sampling_per_token_logps": 0.0,
             "importance_sampling_ratio": 0.0, "tool_mask": 1}
PER_ROW = ("advantages",)
#: recomputed for the joined batch (the loss normaliser: completion tokens on all processes)
RECOMPUTED = ("num_items_in_batch",)
JOINABLE = set(PAD_LEFT) | set(PAD_RIGHT) | set(PER_ROW) | set(RECOMPUTED)


class GRPOTrainer(TrlGRPOTrainer):
    """trl's GRPOTrainer; with `args.dynamic_sampling` (align.trainers.config.GRPOConfig) it
    trains on groups whose rewards vary (see the module docstring). Without it, trl's own.

    Environments (trl's `environment_factory`): the reward trl builds from each environment
    class's `get_reward` is replaced by the same function behind the rewards' gate
    (tools.registry.environment_reward: a NaN, an infinity or a non-number stops the run naming
    the environment and the sample, as any reward under `on_error: raise` does). An
    environment's `__init__`, `reset` or `get_reward` that raises, and a reward's broken
    contract, end the run with one line (align.errors.RolloutError, exit status 2 from
    the entry point) naming the environment and method or the reward, instead of trl's
    traceback. A tool method that raises is trl's business: the model gets the error."""

    def __init__(self, *args, **kwargs):
        funcs = kwargs.get("reward_funcs", args[1] if len(args) > 1 else None)
        # counted before trl appends the environments' rewards (to this very list)
        configured = len(funcs) if isinstance(funcs, (list, tuple)) else int(funcs is not None)
        factories = kwargs.get("environment_factory")
        factories = list(factories.values()) if isinstance(factories, dict) else \
            [factories] if factories is not None else []
        try:
            super().__init__(*args, **kwargs)  # trl constructs one instance of each environment
        except Exception as e:
            line = environment_failure(e, [f for f in factories if inspect.isclass(f)], factories)
            if line is None:
                raise
            raise RolloutError(line) from e
        self._gate_environment_rewards(configured)
        self._dynamic = bool(getattr(self.args, "dynamic_sampling", False))
        self._last_rewards: torch.Tensor | None = None
        # Fresh prompts: the draws of one generation are a function of (seed, process, step,
        # round) alone, so a run resumed from a checkpoint draws what the uninterrupted run drew
        # (a generator seeded once would start over at the resume).
        self._draw_key: tuple[int, int] = (-1, 0)  # (global step, extra round at that step)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards  # every process's rows, in process order
        return rewards

    def _generate_and_score_completions(self, inputs):
        try:
            output = super()._generate_and_score_completions(inputs)
            if not self._dynamic or not self.model.training:
                return output
            return self._fill_with_informative_groups(inputs, output)
        except RewardError as e:  # the gate's message names the reward and the sample
            raise RolloutError(str(e)) from e
        except Exception as e:
            line = environment_failure(e, self._environment_classes(),
                                       (self.environment_factories or {}).values())
            if line is None:
                raise
            raise RolloutError(line) from e

    # ------------------------------------------------------------------ environments

    def _environment_classes(self) -> list[type]:
        """The classes of the environment instances trl has made so far (its pool)."""
        pools = getattr(self, "_environment_pool", None) or {}
        return list({type(i): None for pool in pools.values() for i in pool})

    def _gate_environment_rewards(self, configured: int) -> None:
        """Put the rewards trl appended for environments (after the `configured` ones, named
        after their class) behind the gate; an async get_reward stays trl's (the gate is
        synchronous)."""
        classes = {cls.__name__: cls for cls in self._environment_classes()}
        for i in range(configured, len(self.reward_funcs)):
            cls = classes.get(self.reward_func_names[i])
            if cls is not None and not inspect.iscoroutinefunction(cls.get_reward):
                self.reward_funcs[i] = environment_reward(cls)

    # ------------------------------------------------------------------ dynamic sampling

    def _informative_groups(self, rows: int) -> torch.Tensor:
        """Per group of this process's last generation (`rows` completions): whether its
        weighted total reward varies, as trl's `frac_reward_zero_std` counts it (a group
        no reward function could score has no spread)."""
        rewards = self._last_rewards
        weights = self.reward_weights.to(rewards.device)
        total = (rewards * weights.unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(rewards).all(dim=1)] = torch.nan
        start = self.accelerator.process_index * rows
        local = total[start:start + rows].view(-1, self.num_generations)
        spread = torch.nan_to_num(nanstd(local, dim=1), nan=0.0)
        return ~torch.isclose(spread, torch.zeros_like(spread))

    def _totals(self, *values: int) -> torch.Tensor:
        """The values of every process: shape (processes, len(values))."""
        local = torch.tensor(values, dtype=torch.long, device=self.accelerator.device)
        return self.accelerator.gather(local).view(-1, len(values))

    def _fresh_rows(self, groups: int) -> list[dict]:
        """`groups` random training prompts, each repeated num_generations times as trl's
        sampler repeats them (a fresh dict per row, as the dataloader gives)."""
        step, round_ = self._draw_key
        step, round_ = self.state.global_step, (round_ + 1 if step == self.state.global_step else 0)
        self._draw_key = (step, round_)
        seed = ((self.args.seed * 1009 + self.accelerator.process_index) * 1_000_003
                + step * 4096 + round_)
        picks = torch.randint(len(self.train_dataset), (groups,),
                              generator=torch.Generator().manual_seed(seed))
        return [self.train_dataset[int(i)] for i in picks.tolist()
                for _ in range(self.num_generations)]

    def _fill_with_informative_groups(self, inputs: list, output: dict) -> dict:
        need = len(inputs) // self.num_generations
        rounds = [(output, self._informative_groups(len(inputs)))]
        useful = int(rounds[0][1].sum())  # informative groups generated on this process
        drawn = need  # groups generated on this process
        extra = 0
        while True:
            totals = self._totals(need - useful, useful, drawn)
            short = int(totals[:, 0].max())
            if short <= 0 or extra >= self.args.dynamic_sampling_max_rounds:
                break
            rate = int(totals[:, 1].sum()) / int(totals[:, 2].sum())
            groups = need if rate == 0 else min(need, math.ceil(short / rate))
            rows = self._fresh_rows(groups)
            more = super()._generate_and_score_completions(rows)
            informative = self._informative_groups(len(rows))
            rounds.append((more, informative))
            useful += int(informative.sum())
            drawn += groups
            extra += 1

        chosen = [(r, g) for r, (_, informative) in enumerate(rounds)
                  for g in informative.nonzero().flatten().tolist()][:need]
        zero_kept = need - len(chosen)
        if zero_kept:  # the cap was reached: keep the first batch's other groups
            chosen += [(0, g) for g in (~rounds[0][1]).nonzero().flatten().tolist()[:zero_kept]]
        chosen.sort()  # the first batch's rows first, in their order

        totals = self._totals(need, drawn, drawn - useful, zero_kept).sum(dim=0)
        need_all, drawn_all, zero_all, kept_all = (int(v) for v in totals)
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/extra_rounds"].append(float(extra))
        metrics["dynamic_sampling/generated_groups"].append(drawn_all / need_all)
        metrics["dynamic_sampling/zero_spread_generated"].append(zero_all / drawn_all)
        metrics["dynamic_sampling/zero_spread_kept"].append(kept_all / need_all)
        if extra == 0:
            return output
        return self._join([out for out, _ in rounds], chosen)

    def _join(self, outputs: list[dict], chosen: list[tuple[int, int]]) -> dict:
        """One batch of the `chosen` (round, group) rows of trl's outputs, padded to the widest
        round; the loss normaliser recomputed."""
        unknown = set(outputs[0]) - JOINABLE
        if unknown:
            raise RuntimeError(
                f"trainer.dynamic_sampling cannot join trl's generation output key(s) "
                f"{sorted(unknown)} (vision inputs, or a trl version align does not know); "
                "turn dynamic_sampling off for this run")
        size = self.num_generations
        joined = {}
        for key in outputs[0]:
            if key in RECOMPUTED:
                joined[key] = outputs[0][key]
                continue
            tensors = [out[key] for out in outputs]
            if key in PAD_LEFT or key in PAD_RIGHT:
                left = key in PAD_LEFT
                value = (PAD_LEFT if left else PAD_RIGHT)[key]
                tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
                value = tokenizer.pad_token_id if value is None else value
                width = max(t.size(1) for t in tensors)
                tensors = [torch.nn.functional.pad(
                    t, (width - t.size(1), 0) if left else (0, width - t.size(1)), value=value)
                    for t in tensors]
            joined[key] = torch.cat([tensors[r][g * size:(g + 1) * size] for r, g in chosen])
        mask = joined["completion_mask"]
        if joined.get("tool_mask") is not None:
            mask = mask * joined["tool_mask"]
        joined["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        return joined
