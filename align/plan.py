"""Memory planner: will this job fit on these GPUs, and if not, what to change.

    python align/plan.py --stage grpo model=qwen2.5-1.5b-instruct peft=lora
    python align/plan.py --stage dpo --launch launch/zero3.yaml --gpus 8 experiment=llama_ultrafeedback_dpo
    python align/plan.py --stage sft --card 24 model.gradient_checkpointing=false

It takes the same Hydra overrides as the job, plus the process setup (`--launch` reads the
ZeRO stage, offload and process count from an accelerate config in launch/) and the cards, in GB
or by name from align/device.py (`--card rtx4090,a100-80gb,h200`). The estimates and what they
count: align/run/memory_estimate.py.

It needs the model's config.json only. A hub id is read from the hub or its cache; when neither
can give it (offline, no network, a gated model without access), the planner sizes the published
architecture align ships for the models its configs name (align/models/architectures/) and says
so in one line. Any other model: point model.name_or_path at a folder holding its config.json.
The optional packages the job needs (vLLM, DeepSpeed) are the training machine's concern, not
checked here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from align.device import CARDS as CARDS_FACTS
from align.device import Setup
from align.run.memory_estimate import CARDS, GIB, model_shape, read_launch, report


def parse_cards(text: str) -> tuple[float | tuple[str, float], ...]:
    """`--card`: sizes in GB, or names of align.device.CARDS (their memory as nvidia-smi reports
    it), comma-separated."""
    cards: list[float | tuple[str, float]] = []
    for item in (part.strip() for part in text.split(",")):
        facts = CARDS_FACTS.get(item.lower())
        if facts is not None:
            cards.append((item.lower(), facts.memory_bytes / GIB))
            continue
        try:
            cards.append(float(item))
        except ValueError:
            raise ValueError(f"{item!r} is neither a size in GB nor a card name "
                             f"({', '.join(CARDS_FACTS)})") from None
    return tuple(cards)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Estimate per-GPU memory for an align job.",
                                     epilog="Other arguments are Hydra overrides, as for the job.")
    parser.add_argument("--stage", choices=("sft", "dpo", "kto", "rm", "grpo"), default="grpo")
    parser.add_argument("--launch", type=Path, help="an accelerate config from launch/")
    parser.add_argument("--gpus", type=int, help="processes (GPUs) per node")
    parser.add_argument("--prompt-len", type=int, default=512,
                        help="GRPO prompt tokens (trl's GRPOConfig has no prompt limit)")
    parser.add_argument("--card", type=str, default=",".join(map(str, CARDS)),
                        help="card sizes in GB or card names (" + ", ".join(CARDS_FACTS)
                        + "), comma-separated")
    opts, overrides = parser.parse_known_args(argv)

    from hydra import compose, initialize_config_dir

    from align.errors import AlignError, exit_user_error
    from align.models.source import HubUnavailable, shipped_instead
    from align.run.conf import CONF_DIR, register
    from align.run.spec import TrainerValues, decide, job_shape, trl_config_class

    register()
    try:
        cards = parse_cards(opts.card)
    except ValueError as exc:
        exit_user_error(f"--card {opts.card}: {exc}")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(opts.stage, overrides=[*overrides, "output_dir=/tmp/align-plan",
                                                 "logger=none"])
        model_name = str(cfg.model.name_or_path)
        setup = read_launch(opts.launch, opts.gpus) if opts.launch else Setup(gpus=opts.gpus or 1)
        facts = CARDS_FACTS["h200"].with_setup(setup)
        # The same checks as the job itself, for a GPU (not this machine, which may have none);
        # its packages are the training machine's concern.
        note = None
        try:
            spec = decide(cfg, opts.stage, facts=facts, check_packages=False)
        except HubUnavailable as exc:
            if exc.where != "model.name_or_path":
                raise
            # The planner only sizes the model: a hub id it cannot reach may stand on the
            # published architecture align ships (the job never does: align/models/source.py).
            cfg.model.name_or_path, note = shipped_instead(exc, cfg.model.get("revision"))
            spec = decide(cfg, opts.stage, facts=facts, check_packages=False)
        shape = model_shape(spec.model.name_or_path, spec.model.revision,
                            spec.model.trust_remote_code, spec.model.is_vision)
    except AlignError as exc:
        exit_user_error(exc)
    # The model as configured: the planner decides `auto` for each card, not for this machine.
    values = TrainerValues(spec.trainer_set, trl_config_class(opts.stage))
    job = job_shape(opts.stage, spec.model_asked, spec.peft, values, setup)
    if note:
        print(f"note: {note}")
    print(report(job, model_name, shape, setup, cards, prompt_len=opts.prompt_len))
    no_bf16 = [c[0] for c in cards if isinstance(c, tuple) and not CARDS_FACTS[c[0]].bf16]
    if no_bf16 and spec.trainer_set.get("bf16"):
        print(f"note: {', '.join(no_bf16)}: no bfloat16 on the card, so this job "
              "(trainer.bf16=true) stops at setup there; the figures assume bfloat16")


if __name__ == "__main__":
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # see align/run/cli.py: align/ must not shadow top-level packages
    main()
