"""The `align` console command, as users type it: `align <command> [arguments]` from any folder
runs what `python align/<command>.py [arguments]` runs (the same composed config, run folder, job
log, `.hydra/`, one-line errors and exit statuses, sweeps, help); `align` alone, `align --help` and
an unknown command print the list of align/commands.py. README's "Layout" section lists the same
commands with the same summaries.

The command is the console script `pip install -e .` puts beside the interpreter.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from align.commands import COMMANDS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def align(*args: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    """`align ARGS` typed in `cwd`."""
    assert (BIN / "align").is_file(), (
        f"no `align` command in {BIN}: install the package with `pip install -e .`")
    return subprocess.run(["align", *args], check=False, capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=_env(**env))


def script(command: str, *args: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    """`python <relative path to align/<command>.py> ARGS` typed in `cwd`."""
    path = os.path.relpath(REPO / "align" / f"{command}.py", cwd)
    return subprocess.run([sys.executable, path, *args], check=False, capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=_env(**env))


def _listed(text: str) -> dict[str, str]:
    return dict(re.findall(r"^  (\S+) +(.+)$", text, flags=re.MULTILINE))


@pytest.mark.parametrize("args", [(), ("--help",), ("-h",)])
def test_alone_or_help_lists_every_command(tmp_path, args):
    proc = align(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: align <command>")
    assert _listed(proc.stdout) == {c.name: c.summary for c in COMMANDS.values()}


def test_an_unknown_command_names_the_closest_and_exits_2(tmp_path):
    proc = align("gpro", "trainer.max_steps=1", cwd=tmp_path)
    assert proc.returncode == 2
    first, *rest = proc.stderr.splitlines()
    assert first == "error: align has no command 'gpro'. Did you mean: grpo?"
    assert _listed("\n".join(rest)) == {c.name: c.summary for c in COMMANDS.values()}
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command, overrides", [
    ("grpo", ["trainr.max_steps=3"]),  # a key Hydra rejects
    ("sft", ["trainer.learning_rate=-1"]),  # a value align's check rejects
])
def test_bad_input_is_the_same_one_line_as_the_script(tmp_path, command, overrides):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mine = align(command, *overrides, cwd=tmp_path / "a")
    theirs = script(command, *overrides, cwd=tmp_path / "b")
    assert theirs.returncode == 2 and theirs.stderr.startswith("error: "), theirs.stderr
    assert (mine.returncode, mine.stdout, mine.stderr) == \
           (theirs.returncode, theirs.stdout, theirs.stderr)
    assert len(mine.stderr.splitlines()) == 1
    assert not list((tmp_path / "a").iterdir())


def test_the_hydra_config_is_the_scripts(tmp_path):
    """Hydra's own settings as composed (job name, run and sweep folders, config name and
    search path): the same for `align grpo` and `python align/grpo.py`."""
    mine = align("grpo", "trainer.max_steps=2", "--cfg", "hydra", cwd=tmp_path,
                 ALIGN_RUN_ID="same")
    theirs = script("grpo", "trainer.max_steps=2", "--cfg", "hydra", cwd=tmp_path,
                    ALIGN_RUN_ID="same")
    assert mine.returncode == theirs.returncode == 0, mine.stderr + theirs.stderr
    assert "    name: grpo\n" in mine.stdout and "config_name: grpo\n" in mine.stdout
    assert mine.stdout == theirs.stdout


def test_a_commands_own_help(tmp_path):
    mine, theirs = align("dpo", "--help", cwd=tmp_path), script("dpo", "--help", cwd=tmp_path)
    assert mine.returncode == theirs.returncode == 0
    assert mine.stdout.startswith("dpo is powered by Hydra.")
    assert mine.stdout == theirs.stdout


def test_a_command_with_arguments_of_its_own(tmp_path):
    """The commands that take a folder (doctor, merge, compare, plots): the same refusal as
    `python -m align.doctor`."""
    mine = align("doctor", "no_such_run", cwd=tmp_path)
    theirs = subprocess.run([sys.executable, "-m", "align.doctor", "no_such_run"],
                            check=False, capture_output=True, text=True, cwd=tmp_path,
                            env=_env())
    assert mine.returncode == theirs.returncode == 2
    assert mine.stderr == theirs.stderr and "no training log here" in mine.stderr


def _same_after(a: Path, b: Path, name: str, cwd_a: Path, cwd_b: Path) -> None:
    assert (a / name).read_text().replace(str(cwd_a), "<cwd>") == \
           (b / name).read_text().replace(str(cwd_b), "<cwd>"), name


@pytest.mark.slow
def test_a_sweep_is_the_scripts(tmp_path):
    """`-m`: Hydra's multirun, its sweep folder and the first job's one-line error."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = ("sft", "-m", "trainer.learning_rate=-1,-2")
    mine = align(*args, cwd=tmp_path / "a", ALIGN_RUN_ID="sweep")
    theirs = script(*args, cwd=tmp_path / "b", ALIGN_RUN_ID="sweep")
    assert mine.returncode == theirs.returncode == 2
    untimed = [re.sub(r"^\[[^]]+\]", "", proc.stdout, flags=re.MULTILINE)
               for proc in (mine, theirs)]
    assert "[HYDRA] Launching 2 jobs locally" in untimed[0] and untimed[0] == untimed[1]
    assert mine.stderr == theirs.stderr == \
           "error: invalid config: trainer.learning_rate=-1: must be a positive number\n"
    sweeps = [tmp_path / side / "multirun" / "sft" / "sweep" for side in "ab"]
    assert [p.name for p in sweeps[0].iterdir()] == ["multirun.yaml"]
    _same_after(*sweeps, "multirun.yaml", tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_a_tiny_run_is_the_scripts(tmp_path):
    """One SFT step each way, from two folders, same run id: the same run folder, the same
    files in it (the job log sft.log, .hydra/), the same configs and the same loss."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = ("sft", "trainer.max_steps=1", "heldout.enabled=false", "logger=none")
    mine = align(*args, cwd=tmp_path / "a", ALIGN_RUN_ID="tiny")
    theirs = script(*args, cwd=tmp_path / "b", ALIGN_RUN_ID="tiny")
    assert mine.returncode == theirs.returncode == 0, mine.stderr[-2000:] + theirs.stderr[-2000:]
    runs = [tmp_path / side / "outputs" / "sft" / "tiny" for side in "ab"]
    files = [sorted(str(p.relative_to(run)) for p in run.rglob("*")) for run in runs]
    assert files[0] == files[1]
    assert {"sft.log", ".hydra/hydra.yaml", "config.yaml", "metrics.json"} <= set(files[0])
    for name in (".hydra/hydra.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml",
                 "config.yaml"):
        _same_after(*runs, name, tmp_path / "a", tmp_path / "b")
    losses = [re.search(r'"train_loss": ([0-9.]+)', (run / "metrics.json").read_text()).group(1)
              for run in runs]
    assert losses[0] == losses[1]


def test_readme_layout_lists_the_commands():
    """README's "Layout" section names every command, in the list's order, with its summary."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^ {2}(\w+)\.py +(.+)$", section, flags=re.MULTILINE)
    assert listed == [(c.name, c.summary) for c in COMMANDS.values()], (
        "README's layout lists the commands of align/commands.py, one line each:\n"
        + "\n".join(f"  {c.name + '.py':<13} {c.summary}" for c in COMMANDS.values()))
