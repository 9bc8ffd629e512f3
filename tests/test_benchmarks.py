"""The CPU benchmark harness, run for real on its smallest comparison (no timing assertions:
the machine running the tests is shared and its timings mean nothing here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_overhead_comparison_writes_the_table_and_align_matches_plain_trl(tmp_path, tiny_base_path):
    results = tmp_path / "CPU_RESULTS.md"
    # a section another script writes (benchmarks/startup.py) survives the rewrite
    results.write_text("# old\n\n## overhead-sft: old table\n\nold\n\n## startup: kept\n\nrows\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "overhead-sft", "--reps", "1",
         "--work", str(tmp_path / "work"), "--results", str(results)],
        check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    raw = json.loads((tmp_path / "cpu_results.json").read_text())
    plain, align = raw["overhead-sft"]["sides"]
    assert (plain["name"], align["name"]) == ("plain trl", "align")
    assert plain["status"] == align["status"] == "ok"
    # The same trainer, model, data and seed: the same losses, to the last bit, and weights.
    assert len(plain["losses"]) == 40
    assert align["losses"] == plain["losses"]
    assert align["final_loss"] == plain["final_loss"]
    assert align["weights"] == plain["weights"] is not None

    table = results.read_text()
    assert "## overhead-sft" in table
    assert "torch " in table and "trl " in table and "cores" in table
    rows = [line for line in table.splitlines() if line.startswith("| align |")]
    assert len(rows) == 1 and "| identical |" in rows[0]
    assert "old table" not in table and table.endswith("## startup: kept\n\nrows\n")


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_the_plain_scripts_build_trls_config_from_aligns_trainer_yaml(stage, monkeypatch):
    """benchmarks/plain/*.py read conf/trainer/<stage>.yaml; align's own keys there
    (dynamic_sampling, ref_logps_cache) are left out, the rest must build trl's config."""
    import trl

    monkeypatch.syspath_prepend(str(REPO / "benchmarks" / "plain"))
    from argparse import Namespace

    from common import cpu_args, trainer_fields

    fields = trainer_fields(stage, ["max_steps=3"])
    assert fields["max_steps"] == 3 and "dynamic_sampling" not in fields
    assert "ref_logps_cache" not in fields
    config = getattr(trl, f"{stage.upper()}Config")(
        **fields, **cpu_args(Namespace(out="/tmp/align-plain-fields")))
    assert config.max_steps == 3


def quick_seed0(name: str, out: Path, *extra: str) -> dict:
    """benchmarks/<name>.py --quick --seeds 0, run from the repository as a user would; its JSON."""
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", "--quick", "--seeds", "0", "--out", str(out),
         *extra],
        check=False, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.slow
def test_dynamic_sampling_benchmark_runs_both_sides_and_times_them(tmp_path):
    """benchmarks/dynamic_sampling.py at its smallest: one seed, on and off, through the entry
    point as a user types it; the table, the JSON and the plot written."""
    out = tmp_path / "ds"
    raw = quick_seed0("dynamic_sampling", out)
    off, on = raw["results"]
    assert (off["dynamic_sampling"], on["dynamic_sampling"]) == (False, True)
    assert off["generated_groups_mean"] == 1.0 and on["generated_groups_mean"] >= 1.0
    for r in (off, on):
        # before, then the periodic points at steps 2 and 4 with their training seconds
        assert [p[0] for p in r["curve"]] == [0, 2, 4]
        assert 0 < r["curve"][1][1] < r["curve"][2][1] <= r["train_s"] + 1  # training seconds
        assert 0 < r["curve"][1][2] < r["curve"][2][2]                        # tokens processed
        assert r["after"] == r["curve"][-1][3]  # the last point and the final measurement agree
    control, method = raw["summary"]
    assert control["target"] == method["target"] == off["after"]
    assert control["steps_to_target"] is not None  # the control reaches its own final figure
    assert (out / "dynamic_sampling.png").stat().st_size > 10_000
    assert "| 0 | on |" in (out / "dynamic_sampling.md").read_text()


def test_startup_benchmark_writes_its_figures_and_section(tmp_path):
    """benchmarks/startup.py at a tiny size, data layers only (no timing assertions)."""
    results, raw = tmp_path / "CPU_RESULTS.md", tmp_path / "startup.json"
    results.write_text("# CPU benchmarks\n\n## other: kept\n\ntext\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "startup.py"), "--rows", "300", "--no-trl",
         "--label", "tiny", "--work", str(tmp_path / "work"), "--results", str(results),
         "--raw", str(raw)], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = json.loads(raw.read_text())["runs"]["tiny 300"]
    assert run["rows"] == 300 and set(run["launches"]) == {
        "plain cold", "align cold", "plain cached", "align cached"}
    for launch in run["launches"].values():
        assert launch["rows"] == 300 and "trl_s" not in launch
    assert run["cold"]["align_own_s_per_100k"] >= 0 and run["cold"]["share_of_trl"] is None
    text = results.read_text()
    assert "## other: kept" in text and text.count("## startup:") == 1
    assert "| tiny | 300 | cold |" in text and "| tiny | 300 | cached |" in text
    assert not (tmp_path / "work" / "cache-align-300").exists()  # the caches are removed


@pytest.mark.slow
def test_time_to_accuracy_runs_the_plain_control_and_align_on_one_held_out_set(tmp_path):
    """benchmarks/time_to_accuracy.py at its smallest: the hand-written trl pipeline (its own
    tokenizer and model, SFT then GRPO) and align's entry point, both measured on the same
    held-out problems, their clocks read (no timing assertions)."""
    out = tmp_path / "tta"
    # a folder left by an earlier run: its log lines must not be read as this run's
    (out / "align-seed0").mkdir(parents=True)
    (out / "align-seed0" / "grpo.log").write_text(
        "[2026-01-01 00:00:00,000][align.measure.heldout][INFO] - held-out evaluation of 200 "
        "prompts took 0.1s\n")
    raw = quick_seed0("time_to_accuracy", out, "--control-no-checkpointing")
    control, align = raw["results"]
    assert (control["side"], align["side"]) == ("plain trl", "align")
    assert control["sft_steps"] == 4  # --quick cuts the control's warm-up
    assert control["activation_checkpointing"] is False  # --control-no-checkpointing
    for r in (control, align):
        assert [p[0] for p in r["curve"]] == [0, 2, 4]
        seconds = [p[1] for p in r["curve"] if p[1] is not None]
        assert seconds == sorted(seconds) and 0 <= seconds[0]
        assert seconds[-1] <= r["total_s"] <= r["wall_s"]
        assert r["after"] == r["curve"][-1][2]  # the last point is the final model
        assert all(0.0 <= p[2] <= 1.0 for p in r["curve"])
    # align's held-out problems are the control's: the tiny model after its warm-up (sft90)
    # answers most of them, the control's 4-step model none
    assert align["before"] >= 0.8 and control["before"] < 0.1
    assert align["curve"][0][1] is not None  # GRPO's start is timed too
    assert align["doctor"] == []
    text = (out / "time_to_accuracy.md").read_text()
    assert "| 0 | align |" in text and "600 GRPO steps" not in text
    assert "control 4 GRPO steps (activation checkpointing off)" in text
    # the goal's line says what the figures say
    ours = raw["summary"][1]
    met = ours["ratio"] is not None and ours["ratio"] <= 0.5 and ours["after"] > ours["target"]
    assert ("every seed): met;" if met else "every seed): NOT met on seed(s) 0") in text


def test_time_to_accuracy_verdict_names_every_seed_that_misses_the_goal(monkeypatch):
    """The goal's line read from the summary rows: met only when every seed's align row reached
    the control's final in <= 0.5x and ended above it."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from time_to_accuracy import verdict

    def row(seed, ratio, after=0.99, target=0.9):
        return [{"seed": seed, "side": "plain trl", "ratio": 0.8, "after": target,
                 "target": target},
                {"seed": seed, "side": "align", "ratio": ratio, "after": after, "target": target}]

    assert verdict(row(0, 0.41) + row(1, 0.5)).endswith("every seed): met; highest ratio 0.50x")
    missed = verdict(row(0, 0.52) + row(1, None) + row(2, 0.3, after=0.9) + row(3, 0.4))
    assert "NOT met on seed(s) 0, 1, 2;" in missed and missed.endswith("highest ratio 0.52x")


@pytest.mark.slow
def test_tool_use_benchmark_runs_the_tool_and_its_control(tmp_path):
    """benchmarks/tool_use.py at its smallest: one seed, with and without the calculator, the
    call quality read from align/eval.py's samples; the table, the JSON and the plot written."""
    out = tmp_path / "tu"
    raw = quick_seed0("tool_use", out)
    tool, control = raw["results"]
    assert (tool["tool"], control["tool"]) == (True, False)
    assert [p[0] for p in tool["curve"]] == [0, 2, 4]
    assert tool["before"] >= 0.3 and control["before"] == control["after"] == 0.0
    assert tool["tool_call_rate"][0] >= 0.9 and control["tool_call_rate"] == [None, None]
    before, after = tool["calls"]
    assert before["well_formed_calls"] >= 0.5 and 0 <= after["answer_is_tool_result"] <= 1
    assert (out / "tool_use.png").stat().st_size > 10_000
    assert "| 0 | calculator |" in (out / "tool_use.md").read_text()


@pytest.mark.slow
def test_ref_cache_benchmark_sweeps_both_arms_with_identical_losses(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/ref_cache.py", "--quick", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    raw = json.loads((tmp_path / "ref_cache.json").read_text())
    assert raw["identical_losses"] and raw["entries_written"] == 1
    assert [r["reused"] for r in raw["cache"]] == [False, True, True, True]
    assert all(r["file"] is None for r in raw["no_cache"])
    assert (tmp_path / "ref_cache.md").read_text().startswith("# DPO reference log-prob cache")
