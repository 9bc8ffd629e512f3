"""``python -m rewards score FILE [overrides]``: the offline reward test bench (rewards/bench.py)."""

import sys

from rewards.bench import main

if __name__ == "__main__":
    sys.exit(main())
