"""Candidate comparison on real runs, the objective a sweep optimises, and the Optuna sweeper."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from align import sft
from align.compare import compare, main
from align.errors import ConfigError
from align.run.cli import _objective
from align.run.conf import CONF_DIR, register

register()
REPO = Path(__file__).resolve().parent.parent
RUN = ["model=tiny_sft", "trainer.max_steps=4", "trainer.logging_steps=1",
       "trainer.warmup_steps=0", "trainer.save_strategy=no",
       "trainer.per_device_train_batch_size=16",
       "logger=none", "heldout.max_samples=40", "heldout.max_new_tokens=5"]


def train(out, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sft", overrides=[*RUN, f"output_dir={out}", *overrides])
    return sft.run(cfg)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidates")
    # A harmless and a destructive learning rate: the tables must tell them apart.
    metrics = {lr: train(root / f"lr{lr}", f"trainer.learning_rate={lr}")
               for lr in ("1e-5", "0.05")}
    return root, metrics


def test_table_ranks_candidates_with_base_first_and_config_differences(two_runs, tmp_path):
    root, metrics = two_runs
    result = compare([str(root / "lr1e-5"), str(root / "lr0.05")], out=str(tmp_path),
                     show=False)
    rows = result["rows"]
    header = result["header"]
    accuracy = {lr: m["heldout_after"]["accuracy"] for lr, m in metrics.items()}
    base = metrics["1e-5"]["heldout_before"]["accuracy"]
    assert rows[0][0] == "base" and "tiny://sft" in rows[0][1] and rows[0][2] == base
    ranked = sorted(accuracy, key=accuracy.get, reverse=True)
    assert [r[1] for r in rows[1:]] == [f"lr{lr}" for lr in ranked]
    assert [r[0] for r in rows[1:]] == [1, 2]
    for row in rows[1:]:
        lr = row[1][2:]
        assert row[2] == accuracy[lr]
        assert row[3] == pytest.approx(accuracy[lr] - base)
        assert row[-1] == f"trainer.learning_rate={float(lr)}"  # only the key that differs
    assert result["best_name"] == f"lr{ranked[0]}"
    assert accuracy["1e-5"] > accuracy["0.05"]  # the premise: lr 0.05 wrecks the model

    md = (tmp_path / "compare.md").read_text()
    assert md.splitlines()[0].startswith("| rank | candidate | heldout_after.accuracy | gain")
    assert f"best: lr{ranked[0]}" in md
    with open(tmp_path / "compare.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == header and len(table) == 4 and table[1][0] == "base"


def test_compare_on_a_parent_folder_finds_every_run_and_bad_input_is_named(two_runs, tmp_path,
                                                                           capsys):
    root, _ = two_runs
    assert main([str(root), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "lr1e-5" in printed and "lr0.05" in printed and "best:" in printed
    assert main([str(root), "--metric", "heldout_after.acuracy"]) == 2
    assert "no run has it" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing")]) == 2


def test_compare_command_on_a_relative_sweep_folder(two_runs, tmp_path):
    """The README's form, typed from the folder above `multirun/`: a relative path."""
    import shutil

    root, metrics = two_runs
    sweep = tmp_path / "multirun" / "sft" / "2026-01-01_00-00-00"
    for n, lr in enumerate(("1e-5", "0.05")):
        (sweep / str(n)).mkdir(parents=True)
        for name in ("metrics.json", "config.yaml"):
            shutil.copy(root / f"lr{lr}" / name, sweep / str(n) / name)
    for args in (["multirun/sft/2026-01-01_00-00-00"],
                 ["multirun/sft/2026-01-01_00-00-00/1", str(sweep / "0"),
                  "multirun/sft/2026-01-01_00-00-00/0", "--out", "."]):
        done = subprocess.run([sys.executable, "-m", "align.compare", *args], check=False,
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        out = tmp_path if "--out" in args else sweep
        with open(out / "compare.csv") as f:
            table = list(csv.reader(f))
        # the base row, then each run once, named by its folder under the sweep
        assert [row[1] for row in table[2:]] == ["0", "1"]  # lr 1e-5 ranks first
        assert metrics["1e-5"]["heldout_after"]["accuracy"] > \
            metrics["0.05"]["heldout_after"]["accuracy"]
        assert "best: 0 " in done.stdout


def test_the_task_returns_the_objective_for_sweepers(two_runs):
    _, metrics = two_runs
    m = metrics["1e-5"]
    assert _objective({}, m) == m["heldout_after"]["accuracy"]
    assert _objective({"objective": "train.final_loss"}, m) == m["train"]["final_loss"]
    with pytest.raises(ConfigError, match="heldout_after.accuracy"):
        _objective({"objective": "heldout_after.acc"}, m)


def test_optuna_sweeper_config_composes_into_every_stage():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    for stage in ("sft", "dpo", "grpo"):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(stage, overrides=["hydra/sweeper=optuna_heldout", "output_dir=/tmp/x"],
                          return_hydra_config=True)
        assert cfg.objective is None  # conf/run.yaml: the default, heldout_after.accuracy
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert cfg.hydra.sweeper.direction == "maximize"


@pytest.mark.slow
def test_optuna_sweep_optimises_the_heldout_metric_and_compare_reads_it(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [sys.executable, str(REPO / "align" / "sft.py"), "-m", "hydra/sweeper=optuna_heldout",
         "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
         "hydra.sweeper.params={trainer.learning_rate: 'interval(1e-5, 0.05)'}",
         *RUN[:2], "trainer.max_steps=2", *RUN[3:]],
        check=False, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    values = [t["heldout_after"]["accuracy"] for t in trials]
    assert results["best_value"] == max(values)  # the sweeper saw the returned objective
    result = compare([str(sweep)], out=str(tmp_path), show=False)
    assert [r[1] for r in result["rows"][1:]] and result["rows"][1][2] == max(values)
    assert result["rows"][1][-1].startswith("trainer.learning_rate=")


def test_eval_of_a_run_folder_uses_its_model_data_and_rewards(two_runs, tmp_path):
    from align.eval import run

    root, metrics = two_runs
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"run_dir={root / 'lr0.05'}", "eval.max_samples=40",
                                         "eval.max_new_tokens=5", f"output_dir={tmp_path}",
                                         "model=tiny", "rewards.accuracy.fn=nonexistent"])
    summary = run(cfg)  # model and rewards above are replaced by the run's own
    assert summary["run_dir"] == str(root / "lr0.05")
    assert summary["model"].endswith("lr0.05/final")
    # Greedy, same 40 prompts, same model: the training run's own final measurement.
    assert summary["accuracy"] == metrics["0.05"]["heldout_after"]["accuracy"]
