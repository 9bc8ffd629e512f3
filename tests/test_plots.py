"""Plots from real run folders, and the periodic held-out measurement that feeds them."""

import json
import struct

import pytest
from hydra import compose, initialize_config_dir

from align import grpo, sft
from align.plots import main, plot
from align.run.conf import CONF_DIR, register

register()
COMMON = ["trainer.max_steps=4", "trainer.logging_steps=1", "trainer.warmup_steps=0",
          "trainer.save_strategy=no", "logger=none", "heldout.max_samples=16",
          "heldout.eval_steps=2"]


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plotted")
    overrides = {
        "sft": ["model=tiny_sft", "trainer.per_device_train_batch_size=8"],
        # W&B offline (no key, no network): the periodic measurement logs a samples table.
        "grpo": ["trainer.per_device_train_batch_size=16", "trainer.num_generations=4",
                 "logger=wandb", "logger.mode=offline"],
    }
    metrics = {}
    with pytest.MonkeyPatch.context() as env:
        env.delenv("WANDB_MODE", raising=False)
        for stage, run in (("sft", sft.run), ("grpo", grpo.run)):
            with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                cfg = compose(stage, overrides=[*COMMON, *overrides[stage],
                                                f"output_dir={root / stage}"])
            metrics[stage] = run(cfg)
    return root, metrics


def test_periodic_heldout_measurement_is_logged(runs):
    root, metrics = runs
    for stage in ("sft", "grpo"):
        during = metrics[stage]["heldout_during"]
        assert [d["step"] for d in during] == [2, 4]
        assert all(0.0 <= d["accuracy"] <= 1.0 for d in during)
        # training seconds at each point (for time-to-accuracy), growing, measurement left out
        assert 0 < during[0]["train_s"] < during[1]["train_s"]
        history = [json.loads(line) for line in
                   (root / stage / "log_history.jsonl").read_text().splitlines()]
        logged = [h for h in history if "heldout/accuracy" in h]
        assert [(h["step"], h["heldout/accuracy"]) for h in logged] == \
            [(d["step"], d["accuracy"]) for d in during]
        assert sum("loss" in h for h in history) == 4
    tables = list((root / "grpo" / "wandb").glob("offline-run-*/files/media/table/heldout/*.json"))
    assert len(tables) == 2  # one samples table per periodic measurement
    table = json.loads(tables[0].read_text())
    assert table["columns"][:4] == ["step", "prompt", "completion", "solution"]
    assert len(table["data"]) == 8
    # The last periodic measurement and the final one see the same model: same figure.
    assert metrics["sft"]["heldout_during"][-1]["accuracy"] == \
        metrics["sft"]["heldout_after"]["accuracy"]


def test_plots_of_one_run_and_of_runs_overlaid(runs, tmp_path):
    root, _ = runs
    written = plot([str(root / "grpo")], str(tmp_path / "one"))
    names = {p.name for p in written}
    assert {"loss.png", "reward.png", "reward_accuracy.png", "heldout_accuracy.png",
            "completion_length.png", "overview.png"} <= names
    for path in written:
        width, height = png_size(path)
        assert width >= 400 and height >= 300
    assert main([str(root), "--out", str(tmp_path / "both")]) == 0
    both = {p.name for p in (tmp_path / "both").iterdir()}
    assert {"loss.png", "token_accuracy.png", "reward_accuracy.png", "overview.png"} <= both
    # Overlaid: the loss chart of both runs differs from the loss chart of one.
    one, both = (tmp_path / d / "loss.png" for d in ("one", "both"))
    assert both.read_bytes() != one.read_bytes()


def test_plots_of_a_folder_without_runs_fail_clearly(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no training log here" in capsys.readouterr().err
