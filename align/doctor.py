"""The run doctor on a finished (or running, or killed) run: what is wrong, and what to try.

    python -m align.doctor outputs/grpo/<run id>          # prints the findings, writes doctor.json
    python -m align.doctor path/to/trl_output_dir         # any folder with trainer_state.json
    python -m align.doctor outputs/grpo/<run id> window=10 truncation_ratio=0.5   # thresholds

The log comes from the folder's `log_history.jsonl` (every align run writes it), else its
`trainer_state.json` (a plain trl output_dir), else the newest `checkpoint-*/trainer_state.json`.
The findings, their trl metrics and thresholds (the fields of DoctorConfig) are described in
align.measure.diagnosis. Prints each finding with its fix, or "no findings" with what was checked,
and writes `doctor.json` into the folder; exit status 0 either way, 2 when the folder has no
training log (one line) or a threshold is wrong.
"""

import argparse
import sys
from pathlib import Path

from align.errors import ConfigError
from align.measure.diagnosis import diagnose, load_config, read_history, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m align.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder, or a trl output_dir")
    parser.add_argument("thresholds", nargs="*", help="DoctorConfig fields: window=10 ...")
    args = parser.parse_args(argv)
    folder = Path(args.run_dir)
    try:
        cfg = load_config(args.thresholds)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    found = read_history(folder) if folder.is_dir() else None
    if not found:
        print(f"{folder}: no training log here (log_history.jsonl, trainer_state.json or "
              "checkpoint-*/trainer_state.json)", file=sys.stderr)
        return 2
    history, source = found
    diagnosis = diagnose(history, cfg)
    for line in diagnosis.lines():
        print(line)
    print(f"written: {write_report(folder, diagnosis, str(source))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
