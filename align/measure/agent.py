"""Greedy generation with tool calls, for held-out measurement of tool-using policies.

The loop is trl's (``GRPOTrainer._tool_call_loop``) run greedily outside a trainer: render the
prompt with the tools, generate, parse the reply with the tokenizer's response template
(``trl.chat_template_utils.parse_response``), run the calls, append the tool turns' tokens as trl
does (``GRPOTrainer._get_tool_suffix_ids``: the ids are concatenated, never re-tokenised) and
generate again, until the reply calls no tool, ``max_iterations`` rounds ran or the token budget
``max_new_tokens`` (the whole multi-turn completion, as trl's ``max_completion_length``) is spent.
A tool that raises, or a call to a tool that does not exist, gives the model ``{"error": ...}``
as trl does, and is counted. Environments (trl's ``environment_factory``) as trl runs them: one
instance per prompt, ``reset(**row)`` (its text appended to the last user turn), its public
methods added to the prompt's tools, ``get_reward()`` read when the rollout ends.

Completions come back as trl gives them to rewards: a list of messages (assistant, tool,
assistant ...), so the same reward functions score training and held-out samples.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

from align.errors import RolloutError


def environment_failure_line(e: BaseException, classes, factories=()) -> str:
    """The one line for an exception raised while running an environment (see
    :func:`tools.registry.environment_failure`), with a fallback that names the call."""
    from tools.registry import _one_line, _raised_at, environment_failure

    return (environment_failure(e, classes, factories)
            or f"environment: {_one_line(e)} (at {_raised_at(e)})")


@dataclass
class ToolRollouts:
    """What :func:`generate_with_tools` produced: one message list per prompt, and counts."""

    completions: list[list[dict]]
    completion_ids: list[list[int]]
    #: per prompt: tool calls made, and how many of them failed (raised, unknown tool, bad args)
    calls: list[int] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    #: tool name -> failed calls
    failures_by_tool: dict[str, int] = field(default_factory=dict)
    #: per prompt: (its environment's class name, get_reward()), or None (no environment, or no
    #: get_reward)
    environment_rewards: list = field(default_factory=list)


def environment_tools(instance) -> list[Callable]:
    """An environment instance's tools: its public methods but reset and get_reward (trl's rule,
    read on the class so that properties are not evaluated)."""
    return [getattr(instance, name) for name, _ in inspect.getmembers(type(instance),
                                                                      inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


def reset_environments(environment, rows: list[dict], prompts: list[list[dict]]):
    """(instances, prompts with each reset's observation appended) for `environment`: a factory,
    or {name: factory} with each row's `environment` column choosing (not passed to reset)."""
    instances, out = [], []
    for row, prompt in zip(rows, prompts, strict=True):
        if hasattr(environment, "keys"):
            factory = environment[row["environment"]]
            kwargs = {k: v for k, v in row.items() if k != "environment"}
        else:
            factory, kwargs = environment, row
        instance = None
        try:
            instance = factory()
            observation = instance.reset(**kwargs)
        except Exception as e:
            classes = [type(instance)] if instance is not None else (
                [factory] if inspect.isclass(factory) else [])
            raise RolloutError(environment_failure_line(e, classes, [factory])) from e
        if isinstance(observation, str):
            prompt = prompt[:-1] + [{**prompt[-1], "content": prompt[-1]["content"] + observation}]
        instances.append(instance)
        out.append(prompt)
    return instances, out


def _suffix_ids(tokenizer, tool_messages: list[dict]) -> list[int]:
    """The tokens trl appends after a tool turn (its own function, on a stand-in trainer)."""
    from trl import GRPOTrainer

    stand_in = SimpleNamespace(processing_class=tokenizer, _tokenizer=tokenizer,
                               chat_template=None, chat_template_kwargs={}, _is_vlm=False)
    return GRPOTrainer._get_tool_suffix_ids(stand_in, tool_messages)


def run_tool_calls(calls: Sequence[dict],
                   tools_by_name: dict[str, Callable]) -> tuple[list[dict], list[str]]:
    """Run one reply's tool calls as trl does: each gives a ``tool`` message; a tool that raises
    (or is unknown) gives ``{"error": ...}``. Returns the messages and the names that failed."""
    messages, failed = [], []
    for call in calls:
        function = call.get("function", {}) if call.get("type") == "function" else {}
        name = function.get("name", call.get("name", "unknown"))
        try:
            if call.get("type") != "function":
                raise ValueError(f"Unsupported tool call type: {call.get('type')}")
            if name not in tools_by_name:
                raise ValueError(f"Tool {name} not found.")
            result = tools_by_name[name](**function.get("arguments", {}))
        except Exception as exc:  # what the model sees, as in trl's loop
            failed.append(name)
            result = {"error": str(exc)}
        messages.append({"role": "tool", "name": name,
                         "content": result if isinstance(result, list) else str(result)})
    return messages, failed


def _most_on_any_rank(value: int, device) -> int:
    """The largest `value` any rank of the process group has."""
    import torch
    import torch.distributed as dist

    box = torch.tensor([value], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


def _continue(model, tokenizer, sequences: list[list[int]], budgets: list[int],
              batch_size: int, temperature: float = 0.0, synced: bool = False
              ) -> list[list[int]]:
    """Continuation of each id sequence (greedy, or sampled at ``temperature``), at most
    ``budgets[i]`` new tokens, cut after the first end-of-turn token (kept, as trl keeps it).
    ``synced``: every rank of the process group calls this in lockstep (sharded weights): each
    makes as many ``generate`` calls as the rank with the most batches (a rank with fewer runs
    one-token stand-ins, whose output is dropped), with transformers' ``synced_gpus``."""
    import torch

    pad_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
              else tokenizer.eos_token_id)
    eos_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[list[int]] = []
    starts = list(range(0, len(sequences), batch_size))
    if synced:
        starts += [None] * (_most_on_any_rank(len(starts), device) - len(starts))
    for start in starts:
        if start is None:  # a stand-in, so that this rank takes part in the others' generation
            model.generate(input_ids=torch.tensor([[pad_id]], device=device),
                           attention_mask=torch.ones(1, 1, dtype=torch.long, device=device),
                           max_new_tokens=1, pad_token_id=pad_id, eos_token_id=eos_id,
                           do_sample=False, temperature=None, top_p=None, top_k=None,
                           synced_gpus=True)
            continue
        batch = sequences[start:start + batch_size]
        budget = budgets[start:start + batch_size]
        width = max(len(s) for s in batch)
        ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in batch], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch], device=device)
        sampling = ({"do_sample": True, "temperature": temperature} if temperature > 0 else
                    {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        if synced:
            sampling["synced_gpus"] = True
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(budget),
                                   pad_token_id=pad_id, eos_token_id=eos_id,
                                   **sampling)[:, width:].tolist()
        for row, limit in zip(generated, budget):
            row = row[:limit]
            if eos_id in row:
                row = row[:row.index(eos_id) + 1]
            out.append(row)
    return out


def generate_with_tools(model, tokenizer, prompts: list[list[dict]], tools: Sequence[Callable],
                        max_new_tokens: int, batch_size: int = 64,
                        max_iterations: int | None = None, temperature: float = 0.0,
                        seed: int | None = None, continuation=None, environment=None,
                        rows: list[dict] | None = None, synced: bool = False) -> ToolRollouts:
    """Multi-turn completions of chat ``prompts`` with ``tools`` (callables, as trl takes them):
    greedy, or sampled at ``temperature`` (seeded in a forked RNG with ``seed``, so the caller's
    RNG is untouched). ``max_iterations``: tool rounds per prompt (None: until the budget ends
    them). ``continuation(sequences, budgets) -> ids``: another generation backend for the
    steps (vLLM: align.eval.vllm_continuation); ``model`` is then unused. ``environment``: a
    factory or {name: factory}, reset with each prompt's dataset ``rows`` (see the module doc).
    ``synced``: every rank of the process group calls this on its own prompts in lockstep, as
    weights sharded by ZeRO-3 or FSDP need (align.device.Placement.synced): the ranks go on
    round after round while any rank has a rollout going, each generating as many batches as
    the busiest (HF generate only)."""
    import contextlib

    import torch
    from trl.chat_template_utils import parse_response

    n = len(prompts)
    instances = [None] * n
    if environment is not None:
        instances, prompts = reset_environments(environment, rows, prompts)
    tool_lists = [list(tools) + (environment_tools(e) if e is not None else []) for e in instances]
    prompt_ids = [list(tokenizer.apply_chat_template(p, tools=t or None, tokenize=True,
                                                     add_generation_prompt=True, return_dict=False))
                  for p, t in zip(prompts, tool_lists)]
    completion_ids: list[list[int]] = [[] for _ in range(n)]
    completions: list[list[dict]] = [[] for _ in range(n)]
    calls, failures, by_tool = [0] * n, [0] * n, {}
    active = list(range(n))
    rounds = 0
    if continuation is None:
        def continuation(sequences, budgets):
            return _continue(model, tokenizer, sequences, budgets, batch_size, temperature,
                             synced)

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
    else:  # the backend owns its model and its seeds
        if synced:
            raise ValueError("synced generation runs HF generate on sharded weights; a "
                             "continuation backend owns its model")
        was_training, device, seed = None, None, None
    rng = contextlib.nullcontext() if seed is None else torch.random.fork_rng(
        devices=[device] if device.type == "cuda" else [])
    try:
        with rng, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            # in lockstep, a rank whose rollouts have all ended keeps taking part while any
            # other rank's go on (the check is itself a collective: every rank makes it)
            while (_most_on_any_rank(len(active), device) > 0) if synced else active:
                contexts = [prompt_ids[i] + completion_ids[i] for i in active]
                budgets = [max_new_tokens - len(completion_ids[i]) for i in active]
                replies = continuation(contexts, budgets)
                still = []
                for i, context, reply in zip(active, contexts, replies):
                    completion_ids[i] += reply
                    message = parse_response(tokenizer, reply, prefix=context,
                                             tools=tool_lists[i]) if reply else {}
                    if message:
                        completions[i].append(message)
                    requested = message.get("tool_calls") if message else None
                    if not requested or (max_iterations is not None and rounds >= max_iterations):
                        continue
                    tool_messages, failed = run_tool_calls(
                        requested, {t.__name__: t for t in tool_lists[i]})
                    calls[i] += len(requested)  # counted as trl counts: every call made
                    failures[i] += len(failed)
                    for name in failed:
                        by_tool[name] = by_tool.get(name, 0) + 1
                    suffix = _suffix_ids(tokenizer, tool_messages)
                    if len(completion_ids[i]) + len(suffix) > max_new_tokens:
                        continue  # trl drops a tool result that does not fit, and stops there
                    completions[i] += tool_messages
                    completion_ids[i] += suffix
                    if len(completion_ids[i]) < max_new_tokens:
                        still.append(i)
                active = still
                rounds += 1
    finally:
        if was_training is not None:
            model.train(was_training)
    rewards = environment_rewards(instances, completions)
    return ToolRollouts(completions, completion_ids, calls, failures, by_tool, rewards)


def environment_rewards(instances: list, completions: list) -> list:
    """Per rollout, (its environment's class name, get_reward()) or None (no environment, or no
    get_reward), each class's scores through the rewards' gate as in training
    (:func:`tools.registry.environment_reward`): a get_reward that raises or returns NaN, an
    infinity or a non-number is a :class:`RolloutError`."""
    from rewards.registry import RewardError
    from tools.registry import environment_reward

    out: list = [None] * len(instances)
    classes = {type(e) for e in instances
               if e is not None and inspect.isfunction(getattr(type(e), "get_reward", None))}
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        try:
            scores = environment_reward(cls)(completions=completions, environments=instances)
        except RewardError as e:
            raise RolloutError(str(e)) from e
        except Exception as e:
            raise RolloutError(environment_failure_line(e, [cls])) from e
        for i, (instance, score) in enumerate(zip(instances, scores)):
            if type(instance) is cls:
                out[i] = (cls.__name__, score)
    return out


def environment_reward_figures(rollouts: ToolRollouts) -> dict[str, float]:
    """The mean of each environment class's get_reward() over its prompts, named after the class
    (as trl logs it); none without an environment or get_reward."""
    by_class: dict[str, list[float]] = {}
    for scored in rollouts.environment_rewards:
        if scored is not None and scored[1] is not None:
            by_class.setdefault(scored[0], []).append(float(scored[1]))
    return {name: sum(values) / len(values) for name, values in by_class.items()}
