"""Start-up that scales: the rows are checked and normalised in one batched map, spread over
data.num_proc processes, cached by datasets so that a second launch skips align's work, and a
bad row is still reported by file, row, line, id and field."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

datasets = pytest.importorskip("datasets")

from align.data import DataConfig, DataError, load_stage_data
from align.data.media import may_mention_media, mentions_media

datasets.disable_progress_bars()


def chat(i, question=None):
    return {"id": i, "messages": [{"role": "user", "content": question or f"what is {i} + 1?"},
                                  {"role": "assistant", "content": str(i + 1)}]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --------------------------------------------------------------------------- data.num_proc


def test_bad_rows_in_different_workers_are_all_reported_with_their_lines(tmp_path):
    rows = [chat(i) for i in range(40)]
    rows[3]["messages"] = []
    rows[30]["messages"][1]["role"] = "bot"
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_stage_data(DataConfig(path=path, num_proc=2), "sft")
    assert str(err.value).splitlines() == [
        f"{path}: 2 malformed rows:",
        f"  {path}: row 3 (line 4) (id 3): field 'messages': empty list of messages",
        f"  {path}: row 30 (line 31) (id 30): field 'messages': message 1: unknown role 'bot'; "
        "expected one of system, user, assistant, tool",
    ]


def test_many_bad_rows_over_two_workers_list_ten_and_count_the_rest(tmp_path):
    rows = [{"prompt": "" if i % 2 else "q"} for i in range(60)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_stage_data(DataConfig(path=path, num_proc=2), "grpo")
    msg = str(err.value)
    assert msg.startswith(f"{path}: 30 malformed rows:")
    assert "row 19 (line 20): field 'prompt': empty string" in msg and "row 21 (line 22)" not in msg
    assert msg.endswith("... and 20 more")


def test_two_workers_give_the_same_rows_as_one(tmp_path):
    rows = [{"instruction": f"say {i}", "input": "" if i % 3 else "loud", "output": str(i)}
            for i in range(50)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    one = load_stage_data(DataConfig(path=path, system_prompt="Be brief."), "sft").train
    two = load_stage_data(DataConfig(path=path, system_prompt="Be brief.", num_proc=2), "sft").train
    assert two.to_list() == one.to_list()
    assert one[4]["prompt"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "say 4"}]


def test_chosen_equal_rejected_still_warns_with_the_rows(tmp_path, caplog):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "a" if i in (2, 5) else "b"} for i in range(8)]
    data = load_stage_data(DataConfig(path=write_jsonl(tmp_path / "pairs.jsonl", rows)), "dpo")
    assert "2 rows have chosen == rejected (rows [2, 5])" in caplog.text
    assert data.train.column_names == ["prompt", "chosen", "rejected"]  # the marker column is gone


def test_a_bad_row_of_renamed_columns_is_reported_as_written_in_the_file(tmp_path):
    # python's json parses the file only for the report, and the renames apply to those rows too
    rows = [{"question": "q", "answer": "1"}] * 5 + [{"question": 3, "answer": "2"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"^" + re.escape(path) + r": row 5 \(line 6\): field 'prompt': "
                                        r"expected a string or a list of \{role, content\} "
                                        r"messages, got int$"):
        load_stage_data(DataConfig(path=path, columns={"question": "prompt"}), "grpo")


def test_a_json_file_datasets_cannot_read_is_reported_by_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c"\n')
    with pytest.raises(DataError, match=r"train.jsonl: line 3, column \d+: invalid JSON"):
        load_stage_data(DataConfig(path=str(path)), "grpo")


# --------------------------------------------------------------------------- the cache

LAUNCH = """
import json, sys
import datasets
datasets.disable_progress_bars()
from align.data import DataError, formats, load_stage_data

if sys.argv[2] == "refuse":  # the normaliser must not run: the rows come from the cache
    def refuse(row, system_prompt):
        raise SystemExit("the normaliser ran")
    formats.NORMALISERS["messages"] = refuse
try:
    data = load_stage_data({"path": sys.argv[1], "eval_fraction": 0.25}, "sft")
except DataError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"train": [f["filename"] for f in data.train.cache_files],
                      "heldout": [f["filename"] for f in data.heldout.cache_files],
                      "fingerprint": data.train._fingerprint, "rows": len(data.train)}))
"""


def launch(path, cache, mode="run"):
    """One launch of the data layer in a fresh process (as a new run, or another rank, starts)."""
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", LAUNCH, str(path), mode], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_launch_loads_the_checked_rows_from_the_cache_and_an_edit_invalidates_it(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [chat(i) for i in range(200)])
    cache = tmp_path / "cache"

    first = launch(path, cache)
    assert first["rows"] == 150 and first["train"] and first["heldout"]
    cache_file = first["train"][0]
    assert cache_file.startswith(str(cache))
    stamp = os.stat(cache_file).st_mtime_ns

    # Same file, same config: the map's result comes from the cache, the normaliser never runs.
    second = launch(path, cache, mode="refuse")
    assert second == first
    assert os.stat(cache_file).st_mtime_ns == stamp  # not rewritten

    # One row changed (now bad): the cache no longer matches and the row is reported.
    before = os.stat(path).st_mtime_ns
    rows = [chat(i) for i in range(200)]
    rows[57]["messages"][1]["content"] = "  "
    write_jsonl(path, rows)
    assert os.stat(path).st_mtime_ns != before  # datasets keys a local file by path + mtime
    third = launch(path, cache)
    assert third == {"error": f"{path}: row 57 (line 58) (id 57): field 'messages': "
                              "message 1 (assistant) has empty content"}


RANK = """
import json, os, sys
import datasets
datasets.disable_progress_bars()
from accelerate import PartialState
PartialState(cpu=True)  # what trl's config does when a run starts: the process group (gloo)
from align.data import formats, load_stage_data

calls = [0]
normalise = formats.NORMALISERS["messages"]
def counting(row, system_prompt):
    calls[0] += 1
    return normalise(row, system_prompt)
formats.NORMALISERS["messages"] = counting
data = load_stage_data({"path": sys.argv[1]}, "sft")
print(json.dumps({"rank": int(os.environ["RANK"]), "calls": calls[0], "rows": len(data.train)}))
"""


def test_under_two_ranks_the_main_process_checks_and_the_other_loads_its_cache(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(i) for i in range(3000)])
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "cache"), HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29531", str(script), path],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ranks = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                   key=lambda r: r["rank"])
    assert ranks == [{"rank": 0, "calls": 3000, "rows": 3000}, {"rank": 1, "calls": 0, "rows": 3000}]


# --------------------------------------------------------------------------- placeholders

PARTS = [{"type": "text", "text": "look"}, {"type": "image", "text": None}]


@pytest.mark.parametrize(("rows", "mentions"), [
    ([{"prompt": "plain", "completion": "text"}] * 3, False),
    ([{"prompt": "plain", "completion": "x"}, {"prompt": "<image> what?", "completion": "x"}], True),
    ([{"prompt": "a <video", "completion": "image>"}], False),
    ([chat(0), chat(1, "<video>\nwhat happens?")], True),
    ([chat(0), chat(1, "an image of a cat")], False),
    ([{"messages": [{"role": "user", "content": PARTS}, {"role": "assistant", "content": [
        {"type": "text", "text": "a cat"}]}]}], True),
    ([{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "ho"}]}]}], False),
    # content a string in one row and parts in another: datasets stores JSON text (Json feature)
    ([chat(0), {"messages": [{"role": "user", "content": PARTS}, {"role": "assistant",
                                                                   "content": "a cat"}]}], True),
    ([{"text": "x"}, {"text": 5}], False),
])
def test_the_vectorised_placeholder_search_agrees_with_the_python_scan(tmp_path, rows, mentions):
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    dataset = datasets.load_dataset("json", data_files=path, split="train",
                                    cache_dir=str(tmp_path / "cache"))
    columns = [c for c in dataset.column_names if c != "id"]
    assert any(mentions_media({c: r.get(c) for c in columns}) for r in rows) is mentions
    assert may_mention_media(dataset, columns) is mentions


def test_a_text_model_names_the_row_whose_text_has_a_placeholder(tmp_path):
    rows = [chat(i) for i in range(30)]
    rows[21] = chat(21, "<image>\nwhat is this?")
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"train.jsonl: row 21 \(line 22\) \(id 21\): the text "
                                        r"refers to images or videos"):
        load_stage_data(DataConfig(path=path), "sft")


# --------------------------------------------------------------------------- trl's num_proc


def test_data_num_proc_is_trl_dataset_num_proc_unless_that_is_set():
    from hydra import compose, initialize_config_dir

    from align.device import CPU
    from align.run.conf import CONF_DIR, register
    from align.run.spec import decide

    register()

    def kwargs(stage, *overrides):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(stage, overrides=[*overrides, "output_dir=/tmp/align-startup-test",
                                            "logger=none"])
        return decide(cfg, stage, facts=CPU).trainer_kwargs

    assert "dataset_num_proc" not in kwargs("sft")
    assert kwargs("sft", "+data.num_proc=3")["dataset_num_proc"] == 3
    assert kwargs("dpo", "+data.num_proc=3")["dataset_num_proc"] == 3
    assert kwargs("sft", "+data.num_proc=3", "+trainer.dataset_num_proc=1")["dataset_num_proc"] == 1
    assert "dataset_num_proc" not in kwargs("grpo", "+data.num_proc=3")  # GRPOConfig has none


# --------------------------------------------------------------------------- garbage collection

GC_PROBE = '''
import gc, json, os
from transformers import TrainerCallback


class GcProbe(TrainerCallback):
    """Writes the collector's state as training begins."""

    def on_train_begin(self, args, state, control, **kwargs):
        with open(os.environ["ALIGN_TEST_GC_PROBE"], "w") as f:
            json.dump({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}, f)
'''


def test_a_launch_freezes_the_import_time_objects_and_collects_again(tmp_path):
    """`python align/sft.py` pauses the cyclic collector through its imports and config checks,
    then freezes what they made and resumes it: training runs with collection on and the ~570k
    import-time objects out of its walk (benchmarks/CPU_RESULTS.md: the whole-process figure)."""
    probe = tmp_path / "gc_probe.py"
    probe.write_text(GC_PROBE)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.relpath(os.path.join(repo, "align", "sft.py"), tmp_path)
    env = {**os.environ, "ALIGN_TEST_GC_PROBE": str(tmp_path / "gc.json"),
           "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, script, "logger=none", "heldout.enabled=false", "trainer.max_steps=1",
         "trainer.save_strategy=no", f"output_dir={tmp_path / 'run'}",
         "callbacks=[gc_probe:GcProbe]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((tmp_path / "gc.json").read_text())
    assert state["enabled"] and state["frozen"] > 100_000, state


def test_run_called_in_a_process_that_collects_freezes_nothing(tmp_path):
    """A test, a notebook or the second job of a sweep in one process keeps its collector as it
    is: only a launch that paused it freezes (align.run.job.freeze_startup_objects)."""
    import gc

    from align.run.job import freeze_startup_objects

    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    freeze_startup_objects()
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    gc.disable()
    try:
        freeze_startup_objects()
        assert gc.isenabled() and gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
        gc.enable()
