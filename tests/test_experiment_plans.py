"""The real-model experiments, planned as a user types it: each with the stage and launch its
usage line documents, on the cards README.md says it fits, with no hub (the planner stands on the
published architectures align ships: align/models/architectures/). The parameter counts of those
architectures are checked against the published ones."""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from align.models.source import ARCHITECTURES, shipped_architecture
from align.run.conf import experiment_usage
from align.run.memory_estimate import model_shape

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "conf" / "experiment"
CARDS = "t4,rtx4090,a100-80gb,h200"  # align/device.py CARDS, all four in every plan


@dataclass(frozen=True)
class Claim:
    experiment: str
    model: str
    stage: str
    launch: str | None  # None: one GPU, plain `python align/<stage>.py`
    fits: tuple[str, ...]  # the cards README.md says it fits


# T4 is never claimed: no bfloat16, and these recipes train in bf16 (the plan says so).
CLAIMS = [
    Claim("qwen_gsm8k_grpo", "Qwen/Qwen2.5-1.5B-Instruct", "grpo", "launch/zero2.yaml",
          ("rtx4090", "a100-80gb", "h200")),
    Claim("llama_ultrafeedback_dpo", "meta-llama/Llama-3.2-1B-Instruct", "dpo",
          "launch/zero3.yaml", ("rtx4090", "a100-80gb", "h200")),
    Claim("qwen_sft_chat", "Qwen/Qwen2.5-0.5B-Instruct", "sft", None,
          ("rtx4090", "a100-80gb", "h200")),
]


def experiment_model(experiment: str) -> str:
    """model.name_or_path of the experiment, composed for the stage its usage line runs."""
    from hydra import compose, initialize_config_dir

    from align.run.conf import CONF_DIR, register

    register()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(usage(experiment)[0], overrides=[f"experiment={experiment}"])
    return str(cfg.model.name_or_path)


def usage(experiment: str) -> tuple[str, str | None, list[str]]:
    return experiment_usage(experiment)


def test_every_real_model_experiment_is_planned_here():
    real = sorted(f.stem for f in EXPERIMENTS.glob("*.yaml")
                  if not experiment_model(f.stem).startswith("tiny://"))
    assert real == sorted(c.experiment for c in CLAIMS)
    assert all(experiment_model(c.experiment) == c.model for c in CLAIMS)


def readme_row(experiment: str) -> dict[str, str]:
    """The README.md table row of `experiment`, by column name."""
    lines = (REPO / "README.md").read_text().splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    header = next(row for row, line in zip(cells, lines) if line.startswith("| experiment |"))
    rows = [row for row in cells if row and row[0] == f"`{experiment}`"]
    assert len(rows) == 1, f"README.md: one table row for {experiment}"
    return dict(zip(header, rows[0]))


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.experiment)
def test_the_experiment_fits_the_cards_it_claims(claim, tmp_path):
    stage, launch, overrides = usage(claim.experiment)
    assert (stage, launch) == (claim.stage, claim.launch), "the usage line changed: re-plan"
    cwd, cache = tmp_path / "elsewhere", tmp_path / "hf"
    cwd.mkdir()
    script = os.path.relpath(REPO / "align" / "plan.py", cwd)
    args = [script, "--stage", stage]
    if launch:
        args += ["--launch", os.path.relpath(REPO / launch, cwd)]
    env = {k: v for k, v in os.environ.items() if k != "HF_ENDPOINT"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(cache), HF_HUB_CACHE=str(cache / "hub"))
    proc = subprocess.run([sys.executable, *args, *overrides, "--card", CARDS],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    lines = out.splitlines()

    # No hub here: one line says the plan stands on the shipped architecture.
    folder = claim.model.replace("/", "--")
    assert lines[0].startswith(f"note: {claim.model}: not in the local Hugging Face cache")
    assert f"align/models/architectures/{folder}/config.json" in lines[0]
    total = model_shape(str(ARCHITECTURES / folder)).total
    assert lines[1].startswith(f"{claim.model}: {total / 1e6:.1f}M parameters")

    planned = {}  # card -> (GiB, fits, gradient checkpointing turned on)
    for line in lines:
        m = re.match(r"\s*([\w-]+) \(\d+ GiB\) card:\s+([\d.]+) GiB -> (fits|does NOT fit)"
                     r"( \(gradient checkpointing on\))?$", line)
        if m:
            planned[m[1]] = (float(m[2]), m[3] == "fits", bool(m[4]))
    assert sorted(planned) == sorted(CARDS.split(","))
    for card in claim.fits:
        assert planned[card][1], f"{claim.experiment} does not fit {card}:\n{out}"
    assert "note: t4: no bfloat16 on the card" in out  # T4 is not claimed, and the plan says why

    # README.md's table shows these figures.
    row = readme_row(claim.experiment)
    assert row["model"] == f"`{claim.model}`" and row["parameters"] == f"{total / 1e9:.2f}B"
    assert row["fits"] == ", ".join(claim.fits)
    for card in ("rtx4090", "a100-80gb", "h200"):
        gib, _, checkpointing = planned[card]
        cell = next(v for k, v in row.items() if k.startswith(f"{card} ("))
        assert cell == f"{gib:.1f} GiB" + (", ckpt" if checkpointing else ""), (card, cell)
    assert not list(cwd.iterdir())  # planning writes nothing


# Published counts (the model cards; sources: align/models/architectures/README.md), and the
# exact counts of the published configs: embedding V*h once (tied), per layer q/k/v with bias
# (Qwen) or without (Llama), o, a gated MLP (3*h*i) and two RMSNorms, plus the final norm.
def count(h, i, layers, vocab, kv, qkv_bias):
    attention = 2 * h * h + 2 * h * kv + ((h + 2 * kv) if qkv_bias else 0)
    return vocab * h + layers * (attention + 3 * h * i + 2 * h) + h


@pytest.mark.parametrize("model,exact,published,non_embedding", [
    ("Qwen/Qwen2.5-0.5B-Instruct", count(896, 4864, 24, 151936, 128, True), "0.49B", "0.36B"),
    ("Qwen/Qwen2.5-1.5B-Instruct", count(1536, 8960, 28, 151936, 256, True), "1.54B", "1.31B"),
    # Meta's card: "1B (1.23B)", 1.2358B cut to two decimals (the hub's count rounds: 1.24B).
    ("meta-llama/Llama-3.2-1B-Instruct", count(2048, 8192, 16, 128256, 512, False), "1.23B",
     None),
])
def test_shipped_architectures_have_the_published_parameter_counts(model, exact, published,
                                                                   non_embedding):
    shape = model_shape(str(shipped_architecture(model)))
    assert shape.total == exact
    if model.startswith("meta-llama"):
        assert f"{int(shape.total / 1e7) / 100:.2f}B" == published
        assert f"{shape.total / 1e9:.2f}B" == "1.24B"
    else:
        assert f"{shape.total / 1e9:.2f}B" == published
        assert f"{(shape.total - shape.vocab * shape.hidden) / 1e9:.2f}B" == non_embedding
    assert shape.largest_layer == shape.vocab * shape.hidden  # the (tied) embedding, once
