"""Agentic GRPO: tools and environments from the config, the tiny tool-use task, and what trl's
multi-turn rollouts train on (the masks and the token ids), checked on real rollouts of the tiny
tool-use model."""

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from align import grpo
from align.errors import ConfigError
from align.run.conf import CONF_DIR, register
from align.run.spec import decide

register()
REPO = Path(__file__).resolve().parent.parent
# trl's rollouts as they are (dynamic sampling's extra rounds would change the counts below)
FAST = ["trainer.max_steps=2", "trainer.logging_steps=1", "trainer.save_strategy=no",
        "trainer.per_device_train_batch_size=16", "trainer.num_generations=4", "logger=none",
        "heldout.max_samples=32", "trainer.dynamic_sampling=false"]


def compose_grpo(tmp_path, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("grpo", overrides=[f"output_dir={tmp_path}", *overrides])


# --------------------------------------------------------------------------- trl's internals


def test_trl_internals_the_tool_path_relies_on():
    """A trl upgrade that renames or reshapes these fails here, not in a user's run."""
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import is_chat_template_prefix_preserving, parse_response

    init = inspect.signature(GRPOTrainer.__init__).parameters
    assert {"tools", "environment_factory", "rollout_func"} <= set(init)
    assert "max_tool_calling_iterations" in {f.name for f in
                                             __import__("dataclasses").fields(GRPOConfig)}
    assert list(inspect.signature(GRPOTrainer._get_tool_suffix_ids).parameters) == [
        "self", "tool_messages"]
    assert list(inspect.signature(GRPOTrainer._generate_single_turn).parameters)[:5] == [
        "self", "prompt_ids", "images", "multimodal_fields", "num_generations"]
    loop = inspect.getsource(GRPOTrainer._tool_call_loop)
    # ids are concatenated (prompt + generated + tool suffix), never decoded and re-encoded ...
    assert "prompt_ids[idx_with_tool] + completion_ids[idx_with_tool] + suffix_ids" in loop
    # ... and the tool's tokens are masked out of the loss
    assert "tool_mask[idx_with_tool] += [0] * tool_length + [1] * post_tool_length" in loop
    score = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "loss_mask = completion_mask if tool_mask is None else completion_mask * tool_mask" \
        in score
    assert 'output["tool_mask"] = tool_mask' in score
    assert 'completion_mask * inputs["tool_mask"]' in inspect.getsource(GRPOTrainer._compute_loss)
    # align's held-out tool loop calls these with a stand-in trainer (align.measure.agent)
    assert callable(parse_response) and callable(is_chat_template_prefix_preserving)
    suffix = inspect.getsource(GRPOTrainer._get_tool_suffix_ids)
    for attribute in ("self.processing_class", "self.chat_template", "self.chat_template_kwargs",
                      "self._is_vlm", "self._tokenizer"):
        assert attribute in suffix, attribute


# --------------------------------------------------------------------------- the tiny tool model


def test_tiny_tool_model_speaks_trls_tool_protocol(tiny_tools_path):
    from transformers import AutoTokenizer
    from trl.chat_template_utils import is_chat_template_prefix_preserving, parse_response

    from align.data.synthetic import CALCULATOR_SCHEMA, build_synthetic

    tok = AutoTokenizer.from_pretrained(tiny_tools_path)
    assert tok.response_template is not None  # saved with it: trl needs no schema of its own
    assert is_chat_template_prefix_preserving(tok)  # trl keeps the template as it is
    warmup = json.loads((tiny_tools_path / "warmup.json").read_text())
    assert warmup["reached_target"] and 0.5 <= warmup["final_accuracy"] < 1.0
    # a trace renders with the tool's answer outside the trained (generation) part
    row = build_synthetic("multiplication", "sft", "train", n_train=1)[0]
    out = tok.apply_chat_template(row["messages"], tools=json.loads(row["tools"]),
                                  return_dict=True, return_assistant_tokens_mask=True)
    trained = tok.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    answer = row["messages"][2]["content"]
    assert trained == (f"<tool_call>calculator expression={row['messages'][0]['content'][:-1]}"
                       f"</tool_call><|im_end|>{answer}<|im_end|>")
    # the schema used for SFT traces is what transformers builds from the registered tool
    from transformers.utils import get_json_schema

    import tools

    assert get_json_schema(tools.build_tools({"calculator": {"fn": "calculator"}})[0]) \
        == CALCULATOR_SCHEMA
    prompt = tok.apply_chat_template([{"role": "user", "content": "1*2="}],
                                      tools=[CALCULATOR_SCHEMA], add_generation_prompt=True,
                                      return_dict=False)
    reply = tok("<tool_call>calculator expression=1*2</tool_call><|im_end|>",
                add_special_tokens=False)["input_ids"]
    parsed = parse_response(tok, reply, prefix=prompt, tools=[CALCULATOR_SCHEMA])
    assert parsed["tool_calls"] == [{"type": "function", "function": {
        "name": "calculator", "arguments": {"expression": "1*2"}}}]


class Recorder:
    """Keeps every id sequence the model generated and every batch the loss saw (observes,
    changes nothing)."""

    def _generate_single_turn(self, *args, **kwargs):
        ids, logprobs = super()._generate_single_turn(*args, **kwargs)
        self.generated.extend(tuple(x) for x in ids)
        return ids, logprobs

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in output.items()})
        return output


def runs(mask_row):
    """(value, start, end) of each run of equal values in a 0/1 row."""
    out, start = [], 0
    for i in range(1, len(mask_row) + 1):
        if i == len(mask_row) or mask_row[i] != mask_row[start]:
            out.append((mask_row[start], start, i))
            start = i
    return out


def test_rollouts_train_on_generated_ids_only(tmp_path, tiny_tools_path):
    """On real tool-calling rollouts: the tokens the loss sees are exactly the ids the model
    generated (no decode/re-encode across turns), and the tool's answer is in the sequence but
    masked out of the loss."""
    from align.data import load_stage_data
    from align.run.spec import parse_spec
    from align.trainers.grpo import GRPOTrainer

    spec = parse_spec(compose_grpo(tmp_path, "experiment=tiny_tools", *FAST), "grpo")
    data = load_stage_data(spec.data, "grpo")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tools_path)
    cls = type("Recording", (Recorder, GRPOTrainer), {})
    trainer = cls(model=str(tiny_tools_path), reward_funcs=list(spec.rewards), args=spec.trainer,
                  train_dataset=data.train.select(range(64)), processing_class=tok,
                  tools=list(spec.tools))
    trainer.generated, trainer.batches = [], []
    trainer.train()

    generated = set(trainer.generated)
    tool_turns = 0
    for batch in trainer.batches:
        assert "tool_mask" in batch
        ids, mask, tool = batch["completion_ids"], batch["completion_mask"], batch["tool_mask"]
        # the loss normaliser counts model-written tokens only
        assert int(batch["num_items_in_batch"]) == int((mask * tool).sum())
        for i in range(ids.size(0)):
            length = int(mask[i].sum())
            row, tool_row = ids[i, :length].tolist(), tool[i, :length].tolist()
            for value, start, end in runs(tool_row):
                segment = row[start:end]
                if value == 1:  # written by the model: one of its generations, id for id
                    assert tuple(segment) in generated, tok.decode(segment)
                else:  # the tool's turn: ChatML around the calculator's exact answer
                    tool_turns += 1
                    text = tok.decode(segment)
                    assert text.startswith("\n<|im_start|>tool\n"), text
                    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n"), text
                    # the call this turn answers: the last one before it. The tokenizer's parser
                    # also takes a call the model left unclosed (`...expression=2*3<|im_end|>`)
                    call = tok.decode(row[:start]).rsplit("<tool_call>", 1)[1]
                    expression = re.match(r"\w+ expression=(.*?)(</tool_call>|<\|im_end\|>|$)",
                                          call).group(1)
                    import tools

                    expected = tools.REGISTRY["calculator"](expression)
                    assert text == f"\n<|im_start|>tool\n{expected}<|im_end|>\n" \
                                   "<|im_start|>assistant\n"
    assert tool_turns >= 16  # the warmed-up model calls the tool on most prompts


# --------------------------------------------------------------------------- config and runs


ENV_FILE = '''
import json, os


class Calc:
    """A calculator environment; writes what trl did with it to $ALIGN_TEST_ENV_LOG."""

    def reset(self, **kwargs) -> None:
        self.calls = 0
        with open(os.environ["ALIGN_TEST_ENV_LOG"], "a") as f:
            f.write(json.dumps({"reset": sorted(kwargs)}) + "\\n")

    def calculator(self, expression: str) -> str:
        """Multiply two numbers.

        Args:
            expression: two numbers joined by *.
        """
        self.calls += 1
        a, b = expression.split("*")
        return str(int(a) * int(b))

    def get_reward(self) -> float:
        return float(self.calls == 1)


class NoReset:
    def calculator(self, expression: str) -> str:
        """Multiply.

        Args:
            expression: a*b.
        """
        return expression
'''

TRAJECTORY_REWARD = '''
import json, os


def roles(completions, **kwargs):
    """Records the roles of each completion it is given, and the environments trl passes."""
    envs = [type(e).__name__ for e in kwargs.get("environments") or []]
    with open(os.environ["ALIGN_TEST_REWARD_LOG"], "a") as f:
        for i, c in enumerate(completions):
            f.write(json.dumps({"roles": [m["role"] for m in c],
                                "environment": envs[i] if envs else None}) + "\\n")
    return [0.0] * len(completions)
'''


@pytest.mark.slow
def test_tiny_tools_experiment_as_the_readme_runs_it(tmp_path):
    """The command as users type it, from another folder: trains with the tool and measures
    held-out accuracy with it."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "align" / "grpo.py"), "experiment=tiny_tools",
         *FAST, f"output_dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    assert before["tool_call_rate"] >= 0.9 and 0.3 <= before["accuracy"] <= 0.9
    assert {"tool_calls_mean", "tool_failure_rate"} <= set(after)
    history = [json.loads(line) for line in (run_dir / "log_history.jsonl").read_text().splitlines()]
    assert any(h.get("tools/call_frequency", 0) > 0.5 for h in history)
    assert "held-out accuracy" in proc.stdout + proc.stderr


def test_the_no_tool_control_cannot_multiply(tmp_path):
    cfg = compose_grpo(tmp_path / "run", "experiment=tiny_tools", "tools=none", *FAST,
                       "trainer.max_steps=1")
    metrics = grpo.run(cfg)
    assert metrics["heldout_before"]["accuracy"] <= 0.02  # its tool calls go unanswered
    assert "tool_call_rate" not in metrics["heldout_before"]


def test_environment_and_trajectory_reward_from_files_outside_the_repo(tmp_path, monkeypatch):
    """A user's environment (trl's environment_factory) and reward, plugged by path: trl resets
    one instance per rollout, its method is the tool, and the reward sees the whole trajectory."""
    user = tmp_path / "user_code"
    user.mkdir()
    (user / "envs.py").write_text(ENV_FILE)
    (user / "traj.py").write_text(TRAJECTORY_REWARD)
    env_log, reward_log = tmp_path / "env.jsonl", tmp_path / "reward.jsonl"
    monkeypatch.setenv("ALIGN_TEST_ENV_LOG", str(env_log))
    monkeypatch.setenv("ALIGN_TEST_REWARD_LOG", str(reward_log))
    cfg = compose_grpo(tmp_path / "run", "experiment=tiny_tools", "tools=none", *FAST,
                       f"environment={user / 'envs.py'}:Calc",
                       f"+rewards.roles.fn={user / 'traj.py'}:roles")
    metrics = grpo.run(cfg)
    resets = [json.loads(line) for line in env_log.read_text().splitlines()]
    assert len(resets) >= 2 * 16 and all("solution" in r["reset"] for r in resets[1:])
    calls = [json.loads(line) for line in reward_log.read_text().splitlines()]
    trained = [c for c in calls if c["environment"] == "Calc"]  # trl passes environments=
    assert len(trained) == 2 * 16, calls[:3]
    trajectories = [c["roles"] for c in calls]
    assert trajectories.count(["assistant", "tool", "assistant"]) >= 8, trajectories[:5]
    # held-out measurement runs the environment as training does: its method is the tool, its
    # get_reward a figure under the class name
    before = metrics["heldout_before"]
    assert before["tool_call_rate"] >= 0.9 and 0.3 <= before["accuracy"] and 0 <= before["Calc"]
    history = [json.loads(line) for line in
               (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    assert any("rewards/Calc/mean" in h for h in history)  # get_reward: the env's own reward


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("overrides,expected", [
    (["tools=calculator", "tools.calculator.timeout_s=0"], "timeout_s"),
    (["+tools.calc.fn=calculater"], "did you mean 'calculator'"),
    (["+tools.calc.fn=calculator", "+tools.calc.timout_s=3"], "timout_s"),
    (["+tools.calc.fn=no_such_pkg.mod:fn"], "no_such_pkg"),
    (["environment=no_such_pkg.envs:Env"], "no_such_pkg"),
])
def test_bad_tools_fail_before_anything_loads(tmp_path, overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        decide(compose_grpo(tmp_path, *overrides), "grpo")


def test_tool_and_environment_files_are_checked_at_setup(tmp_path):
    undocumented = write(tmp_path, "bad_tool.py", "def mul(a: int, b: int) -> int:\n"
                                                 "    return a * b\n")
    envs = write(tmp_path, "envs.py", ENV_FILE)
    for overrides, expected in [
        ([f"+tools.mul.fn={undocumented}:mul"], "docstring"),
        ([f"environment={envs}:NoReset"], "reset"),
        ([f"environment={envs}:Calk"], "did you mean 'Calc'"),
        # Calc's method `calculator` and the tool would share one name: the model reaches one
        ([f"environment={envs}:Calc", "tools=calculator"], "name of the tool tools.calculator"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            decide(compose_grpo(tmp_path, *overrides), "grpo")
    good = decide(compose_grpo(tmp_path, f"environment={envs}:Calc", "+tools.calc.fn=calculator",
                               "trainer.max_tool_calling_iterations=3"), "grpo")
    assert good.environment.__name__ == "Calc" and good.tools[0].__name__ == "calc"
    assert good.trainer_kwargs["max_tool_calling_iterations"] == 3


@pytest.mark.slow
def test_a_bad_tool_exits_2_in_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "align" / "grpo.py"), "+tools.c.fn=calculater",
         f"output_dir={run_dir}", "logger=none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "calculator" in errors[0], proc.stderr[-2000:]
    assert not run_dir.exists()


def test_tools_are_grpos_only(tmp_path):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sft", overrides=[f"output_dir={tmp_path}", "+tools.c.fn=calculator"])
    with pytest.raises(ConfigError, match="applies to GRPO"):
        decide(cfg, "sft")


def test_sft_on_tool_traces_must_mask_the_tool_turns(tmp_path):
    """SFT on conversations with tool turns: refused unless only assistant turns are trained,
    and then it trains (the data layer accepts and checks tool calls)."""
    from align import sft

    def cfg(*extra):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("sft", overrides=[
                f"output_dir={tmp_path / 'run'}", "model=tiny_tools", "data=multiplication",
                "data.synthetic.n_train=64", "trainer.max_steps=2", "logger=none",
                "heldout.enabled=false", "trainer.per_device_train_batch_size=16", *extra])
    from align.data.config import DataError

    with pytest.raises(DataError, match="assistant_only_loss"):
        sft.run(cfg())
    assert not (tmp_path / "run").exists()
    metrics = sft.run(cfg("trainer.assistant_only_loss=true"))
    assert metrics["train"]["train_loss"] < 2.0  # the warmed-up model already knows the traces


def test_eval_runs_an_environment_per_sample(tmp_path, monkeypatch):
    from align import eval as evaluation

    envs = write(tmp_path, "envs.py", ENV_FILE)
    monkeypatch.setenv("ALIGN_TEST_ENV_LOG", str(tmp_path / "env.jsonl"))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[
            f"output_dir={tmp_path / 'out'}", "model=tiny_tools", "data=multiplication",
            "rewards=multiplication", f"environment={envs}:Calc", "eval.max_samples=16",
            "eval.max_new_tokens=40"])
    summary = evaluation.run(cfg)
    assert summary["tool_call_rate"] >= 0.9 and summary["accuracy"] > 0.2
    assert summary["rewards"]["Calc"] == 1.0  # get_reward: exactly one call per sample
    resets = (tmp_path / "env.jsonl").read_text().splitlines()
    assert len(resets) == 16  # one instance, one reset per sample


def test_eval_compares_a_candidate_with_and_without_its_tools(tmp_path):
    """align/eval.py runs the tool loop on held-out prompts: pass@k, tool-call counts, failures
    per tool; the same model without the tool answers nothing."""
    from align import eval as evaluation

    def summary(*extra):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("eval", overrides=[
                f"output_dir={tmp_path / str(len(extra))}", "model=tiny_tools",
                "data=multiplication", "rewards=multiplication", "eval.max_samples=24",
                "eval.max_new_tokens=40", "eval.n=4", "eval.k=[1,4]", "eval.temperature=0.7",
                *extra])
        return evaluation.run(cfg)

    with_tool = summary("tools=calculator")
    without = summary()
    assert with_tool["tool_call_rate"] >= 0.8 and with_tool["pass@4"] >= with_tool["pass@1"] > 0.2
    assert isinstance(with_tool["tool_failures_by_tool"], dict)
    assert without["accuracy"] == 0.0 and "tool_call_rate" not in without
    rows = [json.loads(line) for line in
            (tmp_path / "1" / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 * 4 and all(isinstance(r["completion"], list) for r in rows)
    assert sum(r["tool_calls"] for r in rows) >= 0.8 * len(rows)


def test_held_out_tool_loop_budget_rounds_and_failures(tiny_tools_path):
    """align's held-out loop follows trl's rules: no tool round past max_iterations, a tool
    answer that does not fit the token budget is dropped (the rollout ends at its call), and a
    tool that raises or does not exist answers {"error": ...}, counted per tool."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.measure.agent import generate_with_tools, run_tool_calls

    tok = AutoTokenizer.from_pretrained(tiny_tools_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_tools_path)
    prompts = [[{"role": "user", "content": "123*456="}], [{"role": "user", "content": "700*800="}]]

    def calculator(expression: str) -> str:
        """Fails on purpose.

        Args:
            expression: ignored.
        """
        raise RuntimeError("the calculator is broken")

    again = generate_with_tools(model, tok, prompts, [calculator], max_new_tokens=120)
    assert min(again.calls) >= 2  # told the tool failed, the model calls again
    full = generate_with_tools(model, tok, prompts, [calculator], 120, max_iterations=1)
    assert full.calls == [1, 1] and full.failures == [1, 1]
    assert full.failures_by_tool == {"calculator": 2}
    assert [m["role"] for m in full.completions[0]][:2] == ["assistant", "tool"]
    assert "the calculator is broken" in full.completions[0][1]["content"]
    no_rounds = generate_with_tools(model, tok, prompts, [calculator], 120, max_iterations=0)
    assert no_rounds.calls == [0, 0] and [len(c) for c in no_rounds.completions] == [1, 1]
    call_tokens = len(no_rounds.completion_ids[0])
    tight = generate_with_tools(model, tok, prompts[:1], [calculator], call_tokens + 2)
    # the call ran (and counts), but its answer did not fit: the rollout ends at the call
    assert tight.calls == [1] and [m["role"] for m in tight.completions[0]] == ["assistant"]
    assert tight.completion_ids[0] == no_rounds.completion_ids[0]
    messages, failed = run_tool_calls(
        [{"type": "function", "function": {"name": "search", "arguments": {}}},
         {"type": "other"}], {})
    assert failed == ["search", "unknown"] and "Tool search not found" in messages[0]["content"]
