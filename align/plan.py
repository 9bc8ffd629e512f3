"""Memory planner: will this job fit on these GPUs, and if not, what to change.

    python align/plan.py --stage grpo model=qwen2.5-1.5b-instruct peft=lora
    python align/plan.py --stage dpo --launch launch/zero3.yaml --gpus 8 experiment=llama_ultrafeedback_dpo
    python align/plan.py --stage sft --card 24 model.gradient_checkpointing=false

It takes the same Hydra overrides as the job, plus the process setup (`--launch` reads the
ZeRO stage, offload and process count from an accelerate config in launch/). The estimates and
what they count: align/run/planner.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from align.device import CARDS as CARDS_FACTS
from align.device import Setup
from align.run.planner import CARDS, model_shape, read_launch, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Estimate per-GPU memory for an align job.",
                                     epilog="Other arguments are Hydra overrides, as for the job.")
    parser.add_argument("--stage", choices=("sft", "dpo", "grpo"), default="grpo")
    parser.add_argument("--launch", type=Path, help="an accelerate config from launch/")
    parser.add_argument("--gpus", type=int, help="processes (GPUs) per node")
    parser.add_argument("--prompt-len", type=int, default=512,
                        help="GRPO prompt tokens (trl's GRPOConfig has no prompt limit)")
    parser.add_argument("--card", type=str, default=",".join(map(str, CARDS)),
                        help="card sizes in GB, comma-separated")
    opts, overrides = parser.parse_known_args(argv)

    from hydra import compose, initialize_config_dir

    from align.errors import AlignError, exit_user_error
    from align.run.conf import CONF_DIR, register
    from align.run.spec import TrainerValues, decide, job_shape, trl_config_class

    register()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(opts.stage, overrides=[*overrides, "output_dir=/tmp/align-plan",
                                                 "logger=none"])
        cards = tuple(float(c) for c in opts.card.split(","))
        setup = read_launch(opts.launch, opts.gpus) if opts.launch else Setup(gpus=opts.gpus or 1)
        # The same checks as the job itself, for a GPU (not this machine, which may have none).
        spec = decide(cfg, opts.stage, facts=CARDS_FACTS["h200"].with_setup(setup))
        shape = model_shape(spec.model.name_or_path, spec.model.revision,
                            spec.model.trust_remote_code, spec.model.is_vision)
    except AlignError as exc:
        exit_user_error(exc)
    except ValueError as exc:  # a card size that is not a number
        exit_user_error(f"--card {opts.card}: {exc}")
    # The model as configured: the planner decides `auto` for each card, not for this machine.
    values = TrainerValues(spec.trainer_set, trl_config_class(opts.stage))
    job = job_shape(opts.stage, spec.model_asked, spec.peft, values, setup)
    print(report(job, spec.model_asked.name_or_path, shape, setup, cards,
                 prompt_len=opts.prompt_len))


if __name__ == "__main__":
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # see align/run/cli.py: align/ must not shadow top-level packages
    main()
