"""The attention kernel: which one `auto` picks for a card, which ones a config may name, and
what is installed, as transformers' own checks find it. Every branch runs here with the facts of
real cards (align.device.CARDS), a Blackwell card added for FlashAttention-4."""

import ast
import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from align.device import (
    CARDS,
    CPU,
    FLASH_MIN_CAPABILITY,
    DeviceFacts,
    attention,
    attention_problem,
)
from align.errors import ConfigError, MissingExtraError
from align.models.config import ModelConfig, check_model_config
from align.run.conf import CONF_DIR, register
from align.run.spec import decide

register()
REPO = Path(__file__).resolve().parent.parent
NONE_INSTALLED = {"flash_attn": False, "flash_attn_3": False, "flash_attn_4": False}
B200 = DeviceFacts("cuda", "NVIDIA B200", 183359 * 2**20, 1, (10, 0), kernels=True)


def card(name, *installed, kernels=True):
    """A card's facts with exactly these FlashAttention versions installed."""
    facts = {"b200": B200, "cpu": CPU}.get(name) or CARDS[name]
    flags = {**NONE_INSTALLED, **{("flash_attn" if v == 2 else f"flash_attn_{v}"): True
                                  for v in installed}}
    return dataclasses.replace(facts, **flags, kernels=kernels)


@pytest.mark.parametrize("name,installed,expected", [
    ("h100", (2, 3), "flash_attention_3"),  # FA3 is Hopper's
    ("h200", (3,), "flash_attention_3"),
    ("h100", (2, 4), "flash_attention_4"),
    ("h100", (2,), "flash_attention_2"),
    ("h100", (), "sdpa"),  # kernels alone: a hub download is never chosen for the user
    ("a100-80gb", (2, 3, 4), "flash_attention_2"),  # FA3 and FA4 are written for newer cards
    ("a100-80gb", (3,), "sdpa"),
    ("rtx4090", (2,), "flash_attention_2"),
    ("b200", (2, 3, 4), "flash_attention_4"),
    ("b200", (2, 3), "flash_attention_2"),
    ("t4", (2, 3, 4), "sdpa"),  # no bfloat16
    ("cpu", (), "sdpa"),
])
def test_auto_picks_the_best_installed_flash_attention_for_the_card(name, installed, expected):
    assert attention("auto", card(name, *installed)) == expected


@pytest.mark.parametrize("requested,facts,needs", [
    ("flash_attention_4", CARDS["a100-80gb"], "a Hopper or newer CUDA GPU"),
    ("flash_attention_3", CARDS["t4"], "an Ampere or newer CUDA GPU"),
    ("flash_attention_2", CPU, "this process runs on CPU"),
])
def test_a_named_kernel_that_cannot_run_on_the_card_says_why(requested, facts, needs):
    assert needs in attention_problem(requested, facts)


def test_a_hub_kernel_for_another_accelerator_is_refused_where_transformers_lists_its_builds():
    from transformers import modeling_flash_attention_utils

    problem = attention_problem("kernels-community/flash-attn3", CPU)
    if not hasattr(modeling_flash_attention_utils, "FLASH_ATTN_KERNEL_DEVICES"):
        assert problem is None  # transformers 5.17 (vLLM 0.31's) lists none: the load decides
    else:
        assert "kernels-community/flash-attn3 is built for cuda only" in problem


def test_flash_attention_capabilities_are_transformers_own():
    """FA3 and FA4 need the compute capability transformers checks at load; flash-attn 2 is
    held to Ampere by align (bfloat16)."""
    from transformers.modeling_flash_attention_utils import FLASH_ATTENTION_COMPATIBILITY_MATRIX

    for version in (3, 4):
        need = FLASH_ATTENTION_COMPATIBILITY_MATRIX[version]["cuda_min_major_version"]
        assert FLASH_MIN_CAPABILITY[version] == (need, 0)
    assert set(FLASH_ATTENTION_COMPATIBILITY_MATRIX) == set(FLASH_MIN_CAPABILITY)


def test_detect_reads_transformers_checks_not_an_importable_folder(tmp_path, monkeypatch):
    """A folder named flash_attn that imports (a broken or partial install) is no flash-attn:
    transformers checks the distribution and the CUDA runtime; `kernels` is found as it finds it."""
    import importlib.util

    from transformers.utils import is_kernels_available

    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.util.find_spec("flash_attn") is not None
    facts = DeviceFacts.detect()
    assert (facts.flash_attn, facts.flash_attn_3, facts.flash_attn_4) == (False, False, False)
    assert facts.kernels == is_kernels_available()


def compose_sft(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("sft", overrides=[*overrides, "output_dir=/tmp/align-attention-test",
                                         "logger=none"])


@pytest.mark.parametrize("requested,name", [
    ("flash_attention_4", "h100"), ("flash_attention_4", "b200"),
    ("kernels-community/flash-attn3", "h100"),
    ("kernels-community/flash-attn3@v1:flash_attn_varlen_func", "h200"),
    ("kernels-community/flash-attn2", "rtx4090"), ("my-org/my-kernel", "h100"),
])
def test_the_config_accepts_what_transformers_5_accepts_on_its_card(requested, name):
    assert check_model_config(ModelConfig(attn_implementation=requested)) == []
    decided = decide(compose_sft(f"model.attn_implementation={requested}"), "sft",
                     facts=card(name, 2, 3, 4))
    assert decided.model.attn_implementation == requested


def test_a_malformed_kernel_name_is_refused_with_the_form():
    with pytest.raises(ConfigError, match="not a hub kernel name: org/repo, optionally @revision"):
        decide(compose_sft("model.attn_implementation='kernels-community/a/b'"), "sft",
               facts=CARDS["h100"])
    errors = check_model_config(ModelConfig(attn_implementation="flash_attention_5"))
    assert len(errors) == 1 and "flash_attention_4" in errors[0]


def test_a_kernel_nothing_installed_can_run_names_the_extra():
    """A hub kernel needs `kernels`; so does flash_attention_N without its own package, which
    transformers then loads from the hub as kernels-community/flash-attnN."""
    bare = card("h100", kernels=False)
    for requested in ("kernels-community/flash-attn3", "flash_attention_3"):
        with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[kernels\]'"):
            decide(compose_sft(f"model.attn_implementation={requested}"), "sft", facts=bare)
    decided = decide(compose_sft("model.attn_implementation=flash_attention_3"), "sft",
                     facts=card("h100"))  # kernels installed: the hub kernel stands in
    assert decided.model.attn_implementation == "flash_attention_3"


def test_every_extra_align_names_exists_and_installs_from_pypi():
    """Each `MissingExtraError(feature, extra, package)` in align names an extra of pyproject.toml;
    the kernels extra is transformers' own (its pin of `kernels`), and no extra needs a compiler:
    flash-attn, which PyPI ships as source only, is not one."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    named = set()
    for path in (REPO / "align").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MissingExtraError"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                named.add(node.args[1].value)
    assert "kernels" in named and named <= set(extras), named - set(extras)
    assert extras["kernels"] == ["transformers[kernels]"]
    assert not any("flash-attn" in r or "flash_attn" in r for rs in extras.values() for r in rs)

    # what `pip install -e '.[kernels]'` resolves to: the installed transformers has a `kernels`
    # extra, pinning the kernels package its checks accept
    import importlib.metadata

    from packaging.requirements import Requirement

    pins = [Requirement(r) for r in importlib.metadata.requires("transformers") or []]
    kernels = [r for r in pins if r.name == "kernels"
               and r.marker is not None and r.marker.evaluate({"extra": "kernels"})]
    assert kernels, "transformers has no `kernels` extra"
    from transformers.utils import import_utils

    assert kernels[0].specifier.contains(import_utils.KERNELS_MIN_VERSION)
