"""Every number a config section takes is finite: `nan`, `inf` and `-inf` (as Hydra reads them
from the command line) are a one-line error naming the key, before anything loads.

nan compares false with everything, so a range check (`threshold <= reward`, `x > 0`) passes
it or switches itself off, and inf turns a deadline or a limit into none. The walks below try
every field of every section align checks (found from the source, so a new section or field is
covered without editing this file) and every field of trl's and peft's config classes; the
command-line cases are the ones users met.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import pkgutil
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

import align
from align.schema import INFINITE_OK, check_dataclass

REPO = Path(__file__).resolve().parent.parent
NOT_FINITE = (math.nan, math.inf, -math.inf)


def _align_dataclasses() -> dict[str, type]:
    """Every dataclass defined in align's modules, by class name."""
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(align.__path__, "align."):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # a module that needs an optional extra (vllm, deepspeed ...)
            continue
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and dataclasses.is_dataclass(obj) \
                    and obj.__module__.startswith("align."):
                found.setdefault(name, obj)
    return found


def config_sections() -> list[tuple[str, type]]:
    """(section, dataclass) for each `check_dataclass(node, Class, "section")` in align."""
    classes = _align_dataclasses()
    calls = set()
    for path in (REPO / "align").rglob("*.py"):
        for cls, section in re.findall(r'check_dataclass\([^,]+,\s*(\w+),\s*"(\w+)"\)',
                                       path.read_text()):
            calls.add((section, classes[cls]))
    return sorted(calls, key=lambda c: (c[0], c[1].__name__))


SECTIONS = config_sections()


def _takes_numbers(hint: Any) -> bool:
    return hint in (int, float, Any) or any(_takes_numbers(a) for a in typing.get_args(hint)
                                            if typing.get_origin(hint) in (typing.Union,
                                                                          type(int | None)))


def bad_values(hint: Any) -> list[tuple[Any, float]]:
    """(value to set, the non-finite number in it) for a field of type `hint`: the number
    itself where the field takes one, else inside the dict or list the field takes."""
    out = []
    if _takes_numbers(hint):
        out += [(v, v) for v in NOT_FINITE]
    for arm in (typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None))
                else (hint,)):
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if origin is dict and args and _takes_numbers(args[1]):
            out += [({"x": v}, v) for v in NOT_FINITE]
        if origin is list and args and _takes_numbers(args[0]):
            out += [([v], v) for v in NOT_FINITE]
    return out


def test_the_walk_finds_every_section():
    """The source scan sees the sections users set (a scan that found none would pass all)."""
    names = {section for section, _ in SECTIONS}
    assert {"model", "data", "logger", "heldout", "doctor", "on_policy", "eval", "prompts",
            "generator", "select"} <= names
    tried = sum(len(bad_values(h)) for _, cls in SECTIONS
                for h in typing.get_type_hints(cls).values())
    assert tried > 100


#: the sections with a field that takes a number (logger's take only strings)
NUMERIC = [(s, c) for s, c in SECTIONS
           if any(bad_values(h) for h in typing.get_type_hints(c).values())]


@pytest.mark.parametrize("section,cls", NUMERIC, ids=[f"{s}-{c.__name__}" for s, c in NUMERIC])
def test_no_field_of_a_section_takes_a_number_that_is_not_finite(section, cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for value, number in bad_values(hints[f.name]):
            instance, errors = check_dataclass({f.name: value}, cls, section)
            if math.isinf(number) and f.metadata.get(INFINITE_OK):
                assert errors == [], (f.name, value, errors)
                continue
            assert instance is None and len(errors) == 1, (f.name, value, errors)
            assert f"'{section}.{f.name}" in errors[0], errors


def _library_classes():
    from align.fields import PEFT_CONFIGS, TRL_CONFIGS

    return ([("trainer", stage, module, name) for stage, (module, name) in TRL_CONFIGS.items()]
            + [("peft", None, module, name) for name, module in PEFT_CONFIGS.items()])


@pytest.mark.parametrize("where,stage,module,name", _library_classes(),
                         ids=[c[3] for c in _library_classes()])
def test_no_field_of_trl_or_peft_takes_a_number_that_is_not_finite(where, stage, module, name):
    """Every field of trl's and peft's config classes, with nan and +/-inf as the value and
    inside the lists and mappings the field takes."""
    from align.fields import dataclass_schema
    from align.run.values import check_peft, check_trainer

    fields = dataclass_schema(module, name)
    check = (lambda s: check_trainer(s, stage, fields, name)) if where == "trainer" else (
        lambda s: check_peft(s, fields, name))
    for key in fields:
        for number in NOT_FINITE:
            for value in (number, [number], {"x": number}):
                errors = check({key: value})
                assert errors and f"{where}.{key}" in errors[0], (key, value, errors)
    key = next(k for k in ("learning_rate", "lora_dropout", "num_virtual_tokens") if k in fields)
    owner = "trl" if where == "trainer" else "peft"
    assert check({key: math.nan}) == [
        f"{where}.{key}=nan: must be a finite number ({owner}'s {name})"]


def test_the_judge_takes_finite_numbers_only():
    from rewards import BoundReward, RewardConfigError

    base = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    for key in ("max_score", "timeout_s", "total_timeout_s", "backoff_s", "temperature"):
        for number in NOT_FINITE:
            with pytest.raises(RewardConfigError, match=f"{key} (must be|is not) a finite number"):
                BoundReward("llm_judge", {**base, key: number}, name="judge")


# ------------------------------------------------------------------ as users type them


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("script,override,key", [
    ("generate.py", "select.threshold=nan", "select.threshold"),
    ("generate.py", "generator.timeout_s=nan", "generator.timeout_s"),
    ("generate.py", "generator.total_timeout_s=nan", "generator.total_timeout_s"),
    ("generate.py", "generator.total_timeout_s=inf", "generator.total_timeout_s"),
    ("sft.py", "doctor.kl_max=nan", "doctor.kl_max"),
    ("grpo.py", "trainer.learning_rate=-inf", "trainer.learning_rate"),
    ("eval.py", "eval.correct_threshold=nan", "eval.correct_threshold"),
])
def test_a_number_that_is_not_finite_is_one_line_naming_the_key(tmp_path, script, override, key):
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "align" / script), override, "hydra.run.dir=run"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: invalid config: ") and key in last, done.stderr[-2000:]
    assert "must be a finite number" in last and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_selection_refuses_a_threshold_or_margin_that_is_not_finite():
    """The library functions generation and DPO's on-policy rounds select with: nan would keep
    every sample (`score < nan` is false) or every pair."""
    from align.data.select import preference_pairs, rejection_sample

    groups = [[{"prompt": "p", "completion": "a", "reward": 0.0},
               {"prompt": "p", "completion": "b", "reward": 1.0}]]
    for number in NOT_FINITE:
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            rejection_sample(groups, threshold=number)
        with pytest.raises(ValueError, match="min_margin must be a finite number"):
            preference_pairs(groups, min_margin=number)
