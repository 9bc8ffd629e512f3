"""Bad input, the way users type it: one line, exit status 2, nothing left behind, in seconds.

Each row is a command line that must fail before any data is loaded, W&B starts or a model
is built (bad data itself fails after the config is checked, before the run folder exists).
The table runs in-process through the same path as the command line (align.run.cli); a
sample of it also runs as real commands, from another working directory, with the script's
relative path.
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from align import dpo, grpo, sft
from align.errors import AlignError
from align.run import cli
from align.run.conf import CONF_DIR, register

REPO = Path(__file__).resolve().parent.parent
RUNS = {"sft": sft.run, "dpo": dpo.run, "grpo": grpo.run}
register()

# (stage, command-line overrides, what the one line must name)
BAD = [
    ("sft", ["tools=calculator"], "'tools' is not a key of the sft config: it holds the tools"),
    ("sft", ["stop_grace_s=nan"], "stop_grace_s=nan: a positive number of seconds"),
    ("grpo", ["stop_grace_s=0"], "stop_grace_s=0: a positive number of seconds"),
    ("dpo", ["stop_grace_s=soon"], "stop_grace_s='soon': a positive number of seconds"),
    ("grpo", ["trainer.learning_rate=abc"], "trainer.learning_rate='abc': expected a number"),
    ("grpo", ["trainer.learning_rate=-1e-5"], "trainer.learning_rate=-1e-05: must be"),
    ("grpo", ["trainer.per_device_train_batch_size=0"], "per_device_train_batch_size=0"),
    ("grpo", ["trainer.max_steps=-5"], "trainer.max_steps=-5"),
    ("grpo", ["trainer.max_steps=0"], "trainer.max_steps=0"),
    ("grpo", ["trainer.temperature=-1"], "trainer.temperature=-1"),
    ("grpo", ["trainer.temperature=0"], "trainer.temperature=0"),
    ("grpo", ["trainer.num_generations=1"], "trainer.num_generations=1"),
    ("grpo", ["trainer.num_generations=3"], "divisible by num_generations (3)"),
    ("grpo", ["trainer.loss_type=foo"], "'foo' is not a GRPO loss"),
    ("grpo", ["trainer.loss_type=luspo"], "luspo needs trainer.importance_sampling_level"),
    ("grpo", ["trainer.beta=-0.1"], "trainer.beta=-0.1"),
    ("grpo", ["trainer.max_completion_length=0"], "trainer.max_completion_length=0"),
    ("grpo", ["trainer.top_p=1.5"], "trainer.top_p=1.5"),
    ("grpo", ["trainer.gradient_accumulation_steps=0"], "gradient_accumulation_steps=0"),
    ("grpo", ["trainer.lr_scheduler_type=foo"], "trainer.lr_scheduler_type='foo'"),
    ("grpo", ["trainer.optim=foo"], "trainer.optim='foo'"),
    ("grpo", ["trainer.logging_steps=0"], "trainer.logging_steps=0"),
    ("grpo", ["trainer.fp16=true"], "trainer.fp16=true needs a CUDA GPU"),
    ("grpo", ["trainer.use_vllm=maybe"], "trainer.use_vllm='maybe': expected true or false"),
    ("grpo", ["trainer.report_to=wandb"], "the `logger` group"),
    ("grpo", ["trainr.learning_rate=1e-4"], "unknown config key 'trainr.learning_rate'"),
    ("grpo", ["seed=abc"], "seed='abc'"),
    ("grpo", ["seed=-1"], "seed=-1"),
    ("grpo", ["peft=lora", "peft.r=0"], "peft.r=0"),
    ("grpo", ["peft=lora", "peft.lora_alpha=abc"], "peft.lora_alpha='abc'"),
    ("grpo", ["peft=lora", "peft.lora_dropout=1.5"], "peft.lora_dropout=1.5"),
    ("grpo", ["peft=lora", "peft.target_modules=[nope]"], "'nope' is not a module of"),
    ("grpo", ["peft=lora", "peft.target_modules=nope.*"], "matches no module of"),
    ("grpo", ["peft.method=lorra"], "Did you mean: lora"),
    ("grpo", ["model.name_or_path=/nonexistent/model"], "/nonexistent/model: no such folder"),
    ("grpo", ["model.name_or_path=./missing_folder"], "./missing_folder: no such folder"),
    ("grpo", ["model.name_or_path=some-org/some-model"], "not in the local Hugging Face cache"),
    ("grpo", ["model.name_or_path=tiny://nope"], "tiny://nope"),
    ("grpo", ["model.dtype=float8"], "model.dtype='float8'"),
    ("grpo", ["model.gradient_checkpointing=sometimes"], "model.gradient_checkpointing"),
    ("grpo", ["model=qwen"], "model=qwen: there is no such model config"),
    ("grpo", ["rewards=null"], "'rewards' is a config group"),
    ("grpo", ["rewards={}"], "'rewards' is a config group"),
    ("grpo", ["rewards.accuracy.weight=abc"], "weight must be a finite number"),
    ("grpo", ["+rewards.mine.fn=nope"], "nope"),
    ("grpo", ["data=local"], "config key 'data.path' is required but not set"),
    ("grpo", ["data=local", "data.path=missing.jsonl"], "missing.jsonl: no such file"),
    ("grpo", ["data.eval_fraction=1.5"], "data.eval_fraction=1.5"),
    ("grpo", ["data.max_samples=0"], "data.max_samples=0"),
    ("grpo", ["heldout.max_samples=0"], "heldout.max_samples=0"),
    ("grpo", ["heldout.batch_size=0"], "heldout.batch_size=0"),
    ("grpo", ["logger.mode=sometimes"], "logger.mode='sometimes'"),
    ("grpo", ["resume=checkpoint-999"], "resume=checkpoint-999"),
    ("grpo", ["objective=accuracy"], "objective='accuracy'"),
    ("grpo", ["callbacks=[nope:Nope]"], "callbacks='nope:Nope'"),
    ("dpo", ["trainer.loss_type=foo"], "'foo' is not a DPO loss"),
    ("dpo", ["trainer.beta=0"], "trainer.beta=0"),
    ("dpo", ["trainer.loss_type=[sigmoid,sft]", "trainer.loss_weights=[1]"], "loss_weights"),
    ("dpo", ["trainer.loss_type=exo_pair"], "exo_pair needs trainer.label_smoothing"),
    ("dpo", ["trainer.max_length=0"], "trainer.max_length=0"),
    ("sft", ["trainer.loss_type=foo"], "trainer.loss_type='foo'"),
    ("sft", ["trainer.num_train_epochs=-1"], "trainer.num_train_epochs=-1"),
    ("sft", ["trainer.packing=maybe"], "trainer.packing='maybe'"),
    ("sft", ["data.format=foo"], "data.format='foo'"),
]


def test_the_table_is_big_and_covers_every_stage():
    assert len(BAD) >= 40 and {stage for stage, *_ in BAD} == set(RUNS)


def run_like_the_command_line(stage, overrides, out):
    """What `python align/<stage>.py <overrides>` does, in this process: the command-line
    check, Hydra's composition, then the task wrapped as the CLI wraps it."""
    argv = [*overrides, f"output_dir={out}"]
    try:
        cli.check_command_line(stage, argv)
    except AlignError as exc:
        cli.exit_user_error(exc)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(stage, overrides=argv)
    cli._reporting_user_errors(RUNS[stage])(cfg)


@pytest.mark.parametrize("stage,overrides,named", BAD, ids=[" ".join(o) for _, o, _ in BAD])
def test_bad_input_fails_in_one_line_before_anything_heavy(stage, overrides, named, tmp_path,
                                                           monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths in the table are relative to here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here: an uncached id fails at once
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # logger=wandb (offline): must not start
    out = tmp_path / "run"
    # The bound below is on align's work before it stops, not on Python's first import of trl (in
    # a fresh virtualenv that compiles its bytecode: 30 s and more on a loaded 2-core machine).
    import peft  # noqa: F401
    import trl  # noqa: F401

    started = time.monotonic()
    with pytest.raises(SystemExit) as stop:
        run_like_the_command_line(stage, overrides, out)
    seconds = time.monotonic() - started
    assert stop.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and named in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.iterdir()), "a failed run left files behind"
    assert seconds < 30, f"{seconds:.1f} s"  # bounded: seconds, not minutes


def test_a_bad_value_found_by_trl_builds_no_model_first(tmp_path, monkeypatch, capsys):
    """The library checks come before any model is built: on a machine where the tiny model is
    not built yet, a value trl rejects still fails in seconds (it built the model first: 2.5
    minutes and 100 lines of progress bars)."""
    import peft  # noqa: F401  (the first import of trl is not what is bounded here)
    import trl  # noqa: F401

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cold-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_like_the_command_line("grpo", ["trainer.num_generations=3"], tmp_path / "run")
    assert stop.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    assert len(lines) == 1 and "num_generations" in lines[0], lines[:5]
    assert not (tmp_path / "cold-cache" / "tiny").exists()


# A sample, as real commands: from another directory, the script by its relative path.
COMMANDS = [
    ("grpo", ["seed=abc"]),
    ("grpo", ["trainer.learning_rate=abc"]),
    ("grpo", ["trainer.num_generations=3"]),
    ("grpo", ["rewards=null"]),
    ("grpo", ["data=local"]),
    ("dpo", ["peft.target_modules=[nope]"]),
    ("sft", ["model.name_or_path=some-org/some-model"]),
    ("sft", ["trainr.max_steps=3"]),
]


@pytest.mark.slow
def test_bad_commands_as_users_type_them(tmp_path):
    script = {stage: os.path.relpath(REPO / "align" / f"{stage}.py", tmp_path) for stage in RUNS}
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env["HF_HUB_OFFLINE"] = "1"

    def one(case):
        stage, overrides = case
        started = time.monotonic()
        proc = subprocess.run([sys.executable, script[stage], *overrides], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path, env=env)
        return proc, time.monotonic() - started

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, COMMANDS))
    for (stage, overrides), (proc, seconds) in zip(COMMANDS, results):
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert proc.returncode == 2, (overrides, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (overrides, lines)
        assert seconds < 60, (overrides, seconds)
    assert not list(tmp_path.iterdir()), "a failed command left a folder behind"
