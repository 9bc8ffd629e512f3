"""align's commands, listed once, and the `align` console command that runs them.

    align                                   # the commands, one line each
    align sft trainer.max_steps=10          # runs what `python align/sft.py trainer.max_steps=10` runs
    align grpo -m trainer.beta=0,0.04       # a Hydra sweep, as with the script
    align sft --help                        # the command's own help
    align doctor outputs/grpo/<run id>

Every command is a script in align/ (`align/<name>.py`), and `align <name> [arguments]` runs that
file as Python runs a script: as `__main__`, with `sys.argv[0]` the script's path. Hydra names the
job after the script file, so the run folder (`outputs/<stage>/<run id>`), the job log
(`<stage>.log`) and `.hydra/` come out as they do with `python align/<name>.py`, and so do the
exit statuses (2 for bad input, with one line). Launchers take a file: under accelerate, name the
script (`accelerate launch align/grpo.py ...`).

This list is the one place the commands are named: `align --help` prints it, README's "Layout"
section and tests/test_layout.py (nothing imports a command's script) are checked against it.
"""

from __future__ import annotations

import runpy
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # one line, as `align --help` and README's layout print it

    @property
    def module(self) -> str:
        """The script's module: align/<name>.py."""
        return f"align.{self.name}"


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("sft", "supervised fine-tuning (trl's SFTTrainer)"),
    Command("dpo", "direct preference optimisation, on-policy rounds too (trl's DPOTrainer)"),
    Command("kto", "learn from single completions labelled good or bad (trl's KTOTrainer)"),
    Command("rm", "train a reward model on preference pairs (trl's RewardTrainer)"),
    Command("grpo", "group relative policy optimisation with rewards and tools (GRPOTrainer)"),
    Command("generate", "generate training data: sample, score, keep the best, pair them"),
    Command("eval", "evaluate a model on held-out prompts with reward functions"),
    Command("plan", "will a job fit on these GPUs, and what to change if not"),
    Command("merge", "export a run as a standalone model, its adapter merged into the base"),
    Command("compare", "compare candidate runs side by side and name the best"),
    Command("plots", "PNG charts of training runs"),
    Command("doctor", "what is wrong with a run, and what to try"),
)}

USAGE = "usage: align <command> [arguments]   (align <command> --help: the command's own help)"


def listing() -> str:
    """The usage line and the commands, one line each."""
    width = max(len(name) for name in COMMANDS)
    lines = [USAGE, "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The `align` console command ([project.scripts] in pyproject.toml)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(listing())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        from align.schema import suggest

        hint = suggest(name, COMMANDS) or " The commands are listed below."
        print(f"error: align has no command '{name}'.{hint}", file=sys.stderr)
        print(listing(), file=sys.stderr)
        return 2
    # Run the script's file as `__main__` (alter_sys: sys.argv[0] becomes its path), so that what
    # derives from the script (Hydra's job name, the run folder, the job log) is what
    # `python align/<name>.py` gives. Nothing imports a command's script.
    sys.argv = [sys.argv[0] if argv is None else "align", *rest]
    runpy.run_module(COMMANDS[name].module, run_name="__main__", alter_sys=True)
    return 0
