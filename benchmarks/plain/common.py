"""What the plain trl scripts share: command line, trainer fields, LoRA fields, data.

The trainer fields are read from align's own conf/trainer/<stage>.yaml (and LoRA's from
conf/peft/lora.yaml) with plain PyYAML, then the command line's `field=value` pairs on top,
so that a plain script and align's entry point are given the same numbers and never drift.
Everything else in these scripts is written directly against trl, transformers, peft and
datasets: no Hydra, no align.run.job, no align.data, no align.models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SEED = 42  # align's conf/run.yaml seed


def parse_args(stage: str, doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output_dir of the trainer")
    parser.add_argument("--model", required=True, help="a local model folder")
    parser.add_argument("--data", default="synthetic",
                        help="'synthetic' (align.data.synthetic's arithmetic task) or a .jsonl file")
    parser.add_argument("--max-samples", type=int, default=None, help="first N training rows")
    parser.add_argument("--peft", choices=["none", "lora"], default="none")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation")
    if stage == "dpo":
        parser.add_argument("--ref", choices=["adapter", "copy"], default="adapter",
                            help="with LoRA: the base with the adapter disabled, or a second copy")
    parser.add_argument("fields", nargs="*", metavar="field=value",
                        help=f"fields of trl's {stage.upper()}Config over conf/trainer/{stage}.yaml")
    return parser.parse_args()


def trainer_fields(stage: str, overrides: list[str]) -> dict:
    fields = yaml.safe_load((REPO / "conf" / "trainer" / f"{stage}.yaml").read_text()) or {}
    for item in overrides:
        key, _, value = item.partition("=")
        parsed = yaml.safe_load(value)
        # YAML 1.1 reads no/yes/on/off as booleans; Hydra (and so align) keeps them strings.
        if isinstance(parsed, bool) and value.lower() not in ("true", "false"):
            parsed = value
        if isinstance(parsed, str):  # ... and 5e-7 (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        fields[key] = parsed
    # Keys that trl's config does not have are align's own (trainer.dynamic_sampling,
    # trainer.ref_logps_cache): plain trl runs without them, as the align side of a comparison
    # does when it sets them off.
    import dataclasses

    import trl

    known = {f.name for f in dataclasses.fields(getattr(trl, f"{stage.upper()}Config"))}
    return {key: value for key, value in fields.items() if key in known}


def lora_config():
    from peft import LoraConfig

    fields = yaml.safe_load((REPO / "conf" / "peft" / "lora.yaml").read_text())
    fields.pop("method")
    return LoraConfig(task_type="CAUSAL_LM", **fields)


def train_data(source: str, kind: str, max_samples: int | None):
    """align's synthetic a+b task (its default data settings: 200 held out, operands 0-99)
    or a JSON-lines file."""
    if source == "synthetic":
        from align.data.synthetic import build_synthetic

        data = build_synthetic("arithmetic", kind, "train", n_eval=200, max_operand=99)
    else:
        from datasets import load_dataset

        data = load_dataset("json", data_files=source, split="train")
    if max_samples is not None:
        data = data.select(range(min(max_samples, len(data))))
    return data


def cpu_args(opts: argparse.Namespace) -> dict:
    """The arguments align's Job adds to every trl config on a machine without CUDA."""
    # trl's configs turn activation checkpointing on; align's model.gradient_checkpointing
    # defaults it off (faster for small models), so the plain script does the same work.
    return {"output_dir": str(opts.out), "seed": SEED, "report_to": [], "use_cpu": True,
            "bf16": False, "activation_checkpointing": False}
