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
