"""KTO, the fourth stage: trl's KTOTrainer on the tiny model (CPU, no mocks), its data (unpaired
rows checked row by row; DPO's pairs unpacked) and its values checked at setup."""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from align import kto
from align.data import DataConfig, DataError, load_stage_data
from align.errors import ConfigError
from align.run.conf import CONF_DIR, register
from align.run.job import Job

register()
REPO = Path(__file__).resolve().parent.parent
FAST = ["trainer.max_steps=3", "trainer.logging_steps=1", "trainer.warmup_steps=0",
        "trainer.save_strategy=no", "trainer.per_device_train_batch_size=8", "logger=none",
        "heldout.max_samples=16"]


def compose_kto(out, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("kto", overrides=[*FAST, f"output_dir={out}", *overrides])


def command(tmp_path, *overrides):
    """`python align/kto.py ...` as a user types it: from another directory, the script by its
    relative path (this checkout first on the path, as `pip install -e .` would put it)."""
    script = os.path.relpath(REPO / "align" / "kto.py", tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    return subprocess.run([sys.executable, script, *overrides], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env, check=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_command_trains_with_lora_and_measures_held_out_accuracy(tmp_path):
    run = tmp_path / "run"
    proc = command(tmp_path, *FAST, f"output_dir={run}",
                   "callbacks=[param_check:ParamChangeCallback]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "preference pairs unpacked: 9800 pairs -> 19600 unpaired rows" in output
    assert "held-out accuracy:" in proc.stdout

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 3 and math.isfinite(metrics["train"]["final_loss"])
    for when in ("heldout_before", "heldout_after"):
        assert metrics[when]["accuracy/n"] == 16 and 0 <= metrics[when]["accuracy"] <= 1
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    assert any("rewards/chosen" in h and "kl" in h for h in history)  # KTO's own log keys

    report = json.loads((run / "param_changes.json").read_text())
    assert report["trainable"] and report["trainable_unchanged"] == []
    assert report["frozen_changed"] == []  # the base (KTO's reference) did not move
    assert all("lora_" in name for name in report["trainable"])
    assert (run / "final" / "adapter_config.json").is_file()


def test_full_fine_tuning_moves_every_weight(tmp_path):
    metrics = kto.run(compose_kto(tmp_path, "peft=none", "heldout.enabled=false",
                                  "callbacks=[param_check:ParamChangeCallback]"))
    report = json.loads((tmp_path / "param_changes.json").read_text())
    assert len(report["trainable"]) == report["total"] and report["trainable_unchanged"] == []
    assert metrics["train"]["global_step"] == 3


UNPAIRED = [
    {"prompt": f"{a}+{a}=", "completion": str(2 * a + (a % 2)), "label": a % 2 == 0}
    for a in range(24)
]


def test_an_unpaired_data_file_trains(tmp_path):
    data = write_jsonl(tmp_path / "feedback.jsonl", UNPAIRED)
    loaded = load_stage_data(DataConfig(path=str(data)), "kto")
    assert len(loaded.train) == 24 and loaded.train["label"] == [r["label"] for r in UNPAIRED]
    assert "unpaired rows as given" in loaded.source
    metrics = kto.run(compose_kto(tmp_path / "run", "data=local", f"data.path={data}",
                                  "heldout.enabled=false"))
    assert metrics["train"]["global_step"] == 3 and math.isfinite(metrics["train"]["final_loss"])


def test_conversational_unpaired_rows_with_an_eval_split_hold_out_the_desirable_answers(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}],
             "label": r["label"]} for r in UNPAIRED]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    evals = write_jsonl(tmp_path / "eval.jsonl", rows[:6])
    loaded = load_stage_data(DataConfig(path=str(data), eval_path=str(evals)), "kto")
    assert loaded.train[0]["completion"][0]["role"] == "assistant"
    # Held-out prompts: the rows labelled true, their completion the answer to score.
    assert loaded.heldout["solution"] == [r["completion"] for r in UNPAIRED[:6] if r["label"]]


def test_preference_pairs_are_unpacked_into_two_rows_each(tmp_path, caplog):
    pairs = [{"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": str(a + 2)}
             for a in range(10)]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    with caplog.at_level(logging.INFO, logger="align.data.load"):
        loaded = load_stage_data(DataConfig(path=str(data)), "kto")
    train = loaded.train
    assert len(train) == 2 * len(pairs)
    assert set(train.column_names) == {"prompt", "completion", "label"}
    assert "10 pairs -> 20 unpaired rows" in caplog.text
    by_prompt = {}
    for row in train:
        by_prompt.setdefault(row["prompt"], {})[row["label"]] = row["completion"]
    assert by_prompt == {p["prompt"]: {True: p["chosen"], False: p["rejected"]} for p in pairs}
    # In order (KTO samples sequentially): both labels in every few rows, and neighbours never
    # share a prompt (trl's KL term pairs each prompt with its neighbour's completion).
    assert train["label"][:4] == [True, False, True, False]
    assert all(a != b for a, b in zip(train["prompt"], train["prompt"][1:]))


def test_bad_rows_are_named_and_the_command_leaves_no_run(tmp_path):
    rows = [dict(UNPAIRED[0]),
            {"prompt": "1+1=", "completion": "2"},                      # label missing
            {"prompt": "1+1=", "completion": "2", "label": "yes"},      # not a boolean
            {"prompt": "1+1=", "completion": "2", "label": "true"},     # a bool-like string
            {"prompt": "1+1=", "completion": " ", "label": True}]       # empty completion
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    proc = command(tmp_path, "data=local", f"data.path={data}", "logger=none")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "bad.jsonl: 4 malformed rows" in err
    assert "bad.jsonl: row 1 (line 2): field 'label': missing or null" in err
    assert "row 2 (line 3): field 'label': the string 'yes'; expected the boolean" in err
    assert "row 3 (line 4): field 'label': the string 'true'; expected the boolean" in err
    assert "row 4 (line 5): field 'completion': empty string" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"], "a run folder was left"


def test_a_number_label_is_not_read_as_a_boolean(tmp_path):
    data = write_jsonl(tmp_path / "ints.jsonl", [{"prompt": "a", "completion": "b", "label": 1}])
    with pytest.raises(DataError, match=r"row 0 \(line 1\): field 'label': int 1; expected"):
        load_stage_data(DataConfig(path=str(data)), "kto")


@pytest.mark.parametrize("override,expected", [
    ("trainer.desirable_weight=-1", "trainer.desirable_weight=-1: must be a positive number"),
    ("trainer.undesirable_weight=0", "trainer.undesirable_weight=0: must be a positive number"),
    ("trainer.beta=0", "trainer.beta=0: must be a positive number"),
    ("trainer.loss_type=nonsense", "'nonsense': choose from kto, apo_zero_unpaired"),
    ("trainer.per_device_train_batch_size=1", "needs trainer.per_device_train_batch_size >= 2"),
    ("trainer.train_sampling_strategy=random", "needs trainer.train_sampling_strategy=sequential"),
    ("trainer.desirable_wieght=1", "Did you mean: desirable_weight"),
])
def test_a_bad_kto_value_fails_at_setup_before_the_data_loads(override, expected, tmp_path):
    # The data file does not exist: a ConfigError (not a DataError) shows the check came first.
    cfg = compose_kto(tmp_path / "run", "data=local", f"data.path={tmp_path / 'none.jsonl'}",
                      override)
    with pytest.raises(ConfigError) as err:
        kto.run(cfg)
    assert expected in str(err.value)
    assert not (tmp_path / "run").exists()


def test_apo_zero_unpaired_needs_no_kl_batch():
    # No KL term: trl accepts a batch of one and any sampling order.
    job = Job.start(compose_kto("/tmp/align-kto-unused", "trainer.loss_type=apo_zero_unpaired",
                                "trainer.per_device_train_batch_size=1",
                                "trainer.train_sampling_strategy=random"), "kto")
    assert job.args.loss_type == "apo_zero_unpaired"


def test_kto_reads_unpaired_rows_first_then_pairs():
    from align.data import detect_format

    assert detect_format(["prompt", "completion", "label"], "kto") == "unpaired"
    assert detect_format(["prompt", "chosen", "rejected"], "kto") == "preference"
    with pytest.raises(DataError, match="kto accepts: prompt \\+ completion"):
        detect_format(["prompt", "completion"], "kto", "f.jsonl")
