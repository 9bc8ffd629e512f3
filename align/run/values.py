"""Values of the `trainer:` and `peft:` sections, checked before anything heavy runs.

trl's and peft's config classes accept many values their trainers reject later (after the data
is tokenised and the model loaded) or silently misuse: a string where a number goes, an
unknown loss type, zero or negative sizes, `max_steps=-5` (read as "train by epochs"). Each
check here names the key and what it takes, in one line:

- every value against its field's type hint in the library's own dataclass (numbers, booleans,
  strings, lists, the choices of Literal and enum fields), read from align.fields' cache so
  that these checks run before trl or peft is imported;
- every number finite, in lists and mappings too: no field of trl's or peft's configs means
  anything by nan or inf, and nan passes every range check (it compares false);
- the ranges trl's trainers assume (`RULES`) and the loss types their loss code knows
  (`LOSS_TYPES`, pinned to the installed trl by tests/test_values.py);
- the combinations trl's trainers reject in their constructors (DPO loss vs f-divergence and
  label smoothing, GRPO loss vs importance-sampling level);
- `peft.target_modules` against the module names of the model's architecture.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from align.schema import non_finite

#: Loss types the loss code of trl 1.16's trainers knows (the configs take any string).
LOSS_TYPES = {
    "sft": ("nll", "dft"),
    "dpo": ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
            "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"),
    "kto": ("kto", "apo_zero_unpaired"),
    "grpo": ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"),
}
#: DPO losses that work with an f-divergence other than reverse KL (DPOTrainer's own list).
F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust",
                       "discopop", "sft")


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


#: field -> (test, what it takes); applied where the stage's config class has the field.
#: None passes where the field's type allows it.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (_positive, "a positive number"),
    "per_device_train_batch_size": (_positive, "a positive integer"),
    "per_device_eval_batch_size": (_positive, "a positive integer"),
    "gradient_accumulation_steps": (_positive, "a positive integer"),
    "max_steps": (lambda v: v == -1 or v > 0,
                  "a positive number of steps, or -1 to train for trainer.num_train_epochs"),
    "num_train_epochs": (_positive, "a positive number"),
    "logging_steps": (_positive, "a positive number"),
    "save_steps": (_positive, "a positive number"),
    "eval_steps": (_positive, "a positive number (or null)"),
    "warmup_steps": (_non_negative, "a number >= 0"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "weight_decay": (_non_negative, "a number >= 0"),
    "max_grad_norm": (_non_negative, "a number >= 0"),
    "adam_epsilon": (_positive, "a positive number"),
    "save_total_limit": (_positive, "a positive integer (or null: keep all)"),
    "dataloader_num_workers": (_non_negative, "an integer >= 0"),
    "max_length": (_positive, "a positive number of tokens (or null)"),
    "max_prompt_length": (_positive, "a positive number of tokens (or null)"),
    "max_completion_length": (_positive, "a positive number of tokens"),
    "num_generations": (lambda v: v >= 2, "an integer >= 2 (GRPO compares samples of a prompt)"),
    "num_iterations": (_positive, "a positive integer"),
    "steps_per_generation": (_positive, "a positive integer (or null)"),
    "generation_batch_size": (_positive, "a positive integer (or null)"),
    "temperature": (_positive, "a positive number (sampling; 0 would divide by zero)"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "top_k": (lambda v: v >= 0 or v == -1, "an integer >= 0 (0 or -1: off)"),
    "min_p": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "repetition_penalty": (_positive, "a positive number"),
    "epsilon": (_non_negative, "a number >= 0"),
    "epsilon_high": (_non_negative, "a number >= 0"),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "a number in [0, 0.5)"),
    "vllm_gpu_memory_utilization": (lambda v: 0 < v <= 1, "a share of the GPU in (0, 1]"),
    "dynamic_sampling_max_rounds": (_positive, "a positive integer (extra generation rounds)"),
}
#: Stage-specific ranges (override RULES).
STAGE_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "dpo": {"beta": (_positive, "a positive number (0 would make the loss ignore the policy)")},
    "kto": {"beta": (_positive, "a positive number (0 would make the loss ignore the policy)"),
            # The weights balance desirable against undesirable rows; 0 drops a label's rows
            # from the loss and a negative one pushes them the wrong way.
            "desirable_weight": (_positive, "a positive number (weighs the label-true rows)"),
            "undesirable_weight": (_positive, "a positive number (weighs the label-false rows)")},
    "grpo": {"beta": (_non_negative, "a number >= 0 (0: no KL term, no reference model)")},
    # A negative coefficient would reward scores that drift away from zero.
    "rm": {"center_rewards_coefficient": (_non_negative, "a number >= 0 (or null: off)")},
}
PEFT_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "r": (_positive, "a positive integer (the adapter rank)"),
    "lora_alpha": (_positive, "a positive number"),
    "lora_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "num_virtual_tokens": (_positive, "a positive integer"),
}


# --------------------------------------------------------------------------- types
#
# A field's schema is its type hint as plain data (align.fields.schema_of), cached so that
# these checks run before trl or peft is imported.


def _describe(schema: dict) -> str:
    if "union" in schema:
        arms = schema["union"]
        if any("choices" in a for a in arms):  # `SchedulerType | str`: the string names one
            arms = [a for a in arms if a.get("type") != "str"]
        parts = [_describe(a) for a in arms if "none" not in a]
        text = " or ".join(dict.fromkeys(parts))
        return text + (" (or null)" if any("none" in a for a in arms) else "")
    if "choices" in schema:
        return "one of " + ", ".join(str(c) for c in schema["choices"])
    if "list" in schema:
        return f"a list of {_describe(schema['list'])}"
    if "none" in schema:
        return "null"
    return {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
            "dict": "a mapping"}.get(schema.get("type"), "a value")


def _choice_ok(value: Any, options: Iterable[Any]) -> bool:
    for option in options:
        if value == option and type(value) is type(option):
            return True
        # peft writes parameterised choices as patterns: 'pissa_niter_[number of iters]'
        if isinstance(option, str) and isinstance(value, str) and "[" in option \
                and value.startswith(option.split("[", 1)[0]):
            return True
    return False


def matches(value: Any, schema: dict) -> bool:
    """Whether `value` (from YAML or the command line) fits a field's schema."""
    if "any" in schema:
        return True
    if "none" in schema:
        return value is None
    if "union" in schema:
        arms = schema["union"]
        enums = [a for a in arms if "choices" in a and all(isinstance(c, str) for c in a["choices"])]
        if enums and isinstance(value, str) and any(a.get("type") == "str" for a in arms):
            # `SchedulerType | str`: the string must name one of the enum's values
            return any(_choice_ok(value, a["choices"]) for a in enums)
        return any(matches(value, a) for a in arms)
    if "choices" in schema:
        return _choice_ok(value, schema["choices"])
    if "list" in schema:
        return isinstance(value, (list, tuple)) and all(matches(v, schema["list"]) for v in value)
    kind = schema.get("type")
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, Mapping)
    return True


def _list_of(schema: dict) -> dict | None:
    """The element schema when a field takes a list (alone or in a union), else None."""
    for arm in schema.get("union", [schema]):
        if "list" in arm:
            return arm["list"]
    return None


def _allows_none(schema: dict) -> bool:
    return "none" in schema or any("none" in a for a in schema.get("union", []))


def check_types(section: Mapping, fields: Mapping[str, dict], where: str, owner: str) -> list[str]:
    """One message per value of `section` that does not fit its field (`fields`: the class's
    schema, align.fields.dataclass_schema)."""
    errors = []
    for key, value in section.items():
        if key not in fields:
            continue  # an unknown key is the key check's message
        schema = fields[key]["schema"]
        if value is None and _allows_none(schema):
            continue
        bad = next(non_finite(value, f"{where}.{key}"), None)
        if bad is not None:
            errors.append(f"{bad[0]}={bad[1]}: must be a finite number ({owner})")
            continue
        element = _list_of(schema)
        if element is not None and not isinstance(value, (list, tuple)) and matches(value, element):
            value = [value]  # one value where a list goes: trl and peft take it
        if not matches(value, schema):
            errors.append(f"{where}.{key}={_show(value)}: expected {_describe(schema)} "
                          f"({owner})")
            continue
        options = fields[key].get("choices")
        if options:
            bad = [v for v in (value if isinstance(value, (list, tuple)) else [value])
                   if v not in options]
            if bad:
                errors.append(f"{where}.{key}={_show(value)}: choose from {', '.join(options)}")
    return errors


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).replace("'", "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value))


def check_ranges(values: Mapping, rules: Mapping, where: str) -> list[str]:
    """One message per number in `values` outside the range its rule allows."""
    errors = []
    for key, (ok, text) in rules.items():
        value = values.get(key)
        if value is None or not _is_number(value):
            continue  # null where allowed; a wrong type is check_types' message
        if not ok(value):
            errors.append(f"{where}.{key}={value}: must be {text}")
    return errors


# --------------------------------------------------------------------------- trainer


def check_trainer(section: Mapping, stage: str, fields: Mapping[str, dict],
                  class_name: str) -> list[str]:
    """The `trainer:` values the config sets, against the fields of trl's config class
    (`fields`: its schema) and what its trainer accepts. `section`: only the keys the config
    sets (defaults are trl's own)."""
    errors = check_types(section, fields, "trainer", f"trl's {class_name}")
    if errors:
        return errors
    rules = {k: v for k, v in {**RULES, **STAGE_RULES.get(stage, {})}.items() if k in fields}
    errors += check_ranges(section, rules, "trainer")
    if "loss_type" in section and stage in LOSS_TYPES:  # RewardConfig has no loss_type
        given = section["loss_type"]
        losses = list(given) if isinstance(given, (list, tuple)) else [given]
        bad = [loss for loss in losses if loss not in LOSS_TYPES[stage]]
        if bad:
            errors.append(f"trainer.loss_type={_show(given)}: {', '.join(map(repr, bad))} is not "
                          f"a {stage.upper()} loss of trl; choose from "
                          f"{', '.join(LOSS_TYPES[stage])}")
    return errors


def check_trainer_combinations(args: Any, stage: str) -> list[str]:
    """Combinations trl's trainers reject in their constructors, read from the built trl
    config `args` (DPOTrainer / KTOTrainer / GRPOTrainer __init__ in trl 1.16)."""
    errors = []
    if stage == "dpo":
        losses = list(args.loss_type)
        if args.f_divergence_type != "reverse_kl" and not set(losses) <= set(F_DIVERGENCE_LOSSES):
            errors.append(f"trainer.f_divergence_type={args.f_divergence_type} works only with "
                          f"the losses {', '.join(F_DIVERGENCE_LOSSES)} (got {losses})")
        if args.use_weighting and {"aot", "aot_unpaired"} & set(losses):
            errors.append("trainer.use_weighting=true does not work with the aot losses")
        if "robust" in losses and not 0 <= args.label_smoothing < 0.5:
            errors.append("trainer.loss_type=robust needs trainer.label_smoothing in [0, 0.5)")
        if "exo_pair" in losses and args.label_smoothing == 0:
            errors.append("trainer.loss_type=exo_pair needs trainer.label_smoothing > 0 "
                          "(e.g. 1e-3)")
    if stage == "kto" and args.loss_type != "apo_zero_unpaired":
        # trl estimates KTO's KL term from each row's neighbour in the batch, in order.
        if args.per_device_train_batch_size < 2:
            errors.append(f"trainer.loss_type={args.loss_type} needs "
                          "trainer.per_device_train_batch_size >= 2 (its KL term pairs each "
                          "prompt with another row's completion of the same batch)")
        if args.train_sampling_strategy != "sequential":
            errors.append(f"trainer.loss_type={args.loss_type} needs "
                          "trainer.train_sampling_strategy=sequential (its KL pairs are built "
                          "from neighbouring rows)")
    if stage == "kto" and args.sync_ref_model and args.precompute_ref_log_probs:
        errors.append("trainer.sync_ref_model=true updates the reference that "
                      "trainer.precompute_ref_log_probs=true computes once: set only one")
    if stage == "grpo":
        loss, level = args.loss_type, args.importance_sampling_level
        if loss == "luspo" and level != "sequence":
            errors.append("trainer.loss_type=luspo needs trainer.importance_sampling_level=sequence")
        if loss == "vespo" and level != "token":
            errors.append("trainer.loss_type=vespo needs trainer.importance_sampling_level=token")
        if level == "sequence" and loss in ("bnpo", "dr_grpo", "dapo", "cispo"):
            errors.append(f"trainer.importance_sampling_level=sequence with "
                          f"trainer.loss_type={loss}: use loss_type=grpo for GSPO")
        per_process = args.per_device_train_batch_size * args.steps_per_generation
        if getattr(args, "dynamic_sampling", False) and per_process % args.num_generations:
            errors.append(f"trainer.dynamic_sampling=true needs whole groups on each process: "
                          f"per_device_train_batch_size x steps_per_generation ({per_process}) "
                          f"must be a multiple of num_generations ({args.num_generations}), "
                          f"or set trainer.dynamic_sampling=false")
        if loss == "vespo" and args.use_vllm and args.vllm_importance_sampling_correction:
            errors.append("trainer.loss_type=vespo does its own importance sampling: set "
                          "trainer.vllm_importance_sampling_correction=false")
    return errors


def library_message(exc: BaseException) -> str:
    """A library's error message on one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --------------------------------------------------------------------------- peft


def check_peft(section: Mapping, fields: Mapping[str, dict], class_name: str) -> list[str]:
    """The `peft:` values for peft's config class (`fields`: its schema; align's own keys
    excluded)."""
    errors = check_types(section, fields, "peft", f"peft's {class_name}")
    if errors:
        return errors
    rules = {k: v for k, v in PEFT_RULES.items() if k in fields}
    return errors + check_ranges(section, rules, "peft")


def check_target_modules(targets: Any, model, where: str = "peft.target_modules") -> list[str]:
    """Each target module name (or the regex) must match a module of `model` (the meta-device
    architecture) the way peft matches them: a name equal to the target or ending in
    `.target`; a string is a full-match regex, except peft's 'all-linear'."""
    if targets is None or targets == "all-linear":
        return []
    names = [n for n, _ in model.named_modules() if n]
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if n and not list(m.children())})
    known = ", ".join(leaves[:20]) + (" ..." if len(leaves) > 20 else "")
    arch = type(model).__name__
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            return [f"{where}={targets!r}: not a valid regex ({exc})"]
        if not any(pattern.fullmatch(n) for n in names):
            return [f"{where}={targets!r} matches no module of {arch} (its layers: {known})"]
        return []
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        return [f"{where}: {', '.join(map(repr, missing))} is not a module of {arch}; its layers "
                f"are {known}"]
    return []
