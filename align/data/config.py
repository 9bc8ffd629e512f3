"""The `data:` config section and what a stage's data is: DataConfig, StageData, DataError,
and the names of the formats each stage accepts (see align.data for the whole picture)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from align.errors import AlignError

if TYPE_CHECKING:
    import datasets

STAGES = ("sft", "dpo", "kto", "rm", "grpo")


#: Formats each stage accepts, in detection order.
STAGE_FORMATS = {
    "sft": ("messages", "sharegpt", "prompt_completion", "alpaca", "text"),
    "dpo": ("preference",),
    # KTO trains on unpaired rows; preference pairs are unpacked into them (align.data.load),
    # so that every DPO data set trains KTO as it is.
    "kto": ("unpaired", "preference"),
    # A reward model learns from the same pairs as DPO (score(chosen) > score(rejected)).
    "rm": ("preference",),
    "grpo": ("prompt",),
}


FORMATS = ("auto",) + tuple(dict.fromkeys(f for fs in STAGE_FORMATS.values() for f in fs))


#: Columns a format needs: detection picks the first format of the stage whose columns are all present.
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
    "preference": ("chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
}


FORMAT_HELP = {
    "messages": "messages (list of {role, content})",
    "sharegpt": "conversations (list of {from, value}, ShareGPT/LLaVA)",
    "prompt_completion": "prompt + completion (strings or message lists)",
    "alpaca": "instruction + output (+ input), Alpaca",
    "text": "text",
    "preference": "chosen + rejected (+ prompt; without it the prompt is their shared start)",
    "unpaired": "prompt + completion (strings or message lists) + label (true: desirable, "
                "false: undesirable)",
    "prompt": "prompt (string or message list) + any extra columns",
}


ROLES = ("system", "user", "assistant", "tool")


#: ShareGPT speaker names -> chat roles (the names ShareGPT, LLaVA and Qwen2-VL-Finetune use).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class DataError(AlignError, ValueError):
    """A dataset cannot be used: missing, unreadable, of an unknown shape, or with malformed rows."""


@dataclass(frozen=True)
class DataConfig:
    """The `data:` config section (align's validator rejects keys that are not fields here)."""

    name: str = "arithmetic"
    path: str = "synthetic:arithmetic"
    subset: str | None = None
    split: str = "train"
    revision: str | None = None
    eval_path: str | None = None
    eval_split: str | None = None
    eval_fraction: float = 0.0
    columns: dict[str, str] = field(default_factory=dict)
    format: str = "auto"
    system_prompt: str | None = None
    max_samples: int | None = None
    max_eval_samples: int | None = None
    seed: int = 0
    synthetic: dict[str, Any] = field(default_factory=dict)
    num_proc: int | None = None
    #: vision-language data: folder that relative image/video paths are joined to
    #: (default: the folder of the data file)
    image_folder: str | None = None
    #: frames sampled per second of video, and the most frames kept per video
    video_fps: float = 1.0
    video_max_frames: int = 8

    def __post_init__(self) -> None:
        # Checked here so that a bad value fails when the config is validated, before any load.
        if self.format not in FORMATS:
            raise DataError(
                f"data.format={self.format!r} is not a format; choose one of {', '.join(FORMATS)}"
            )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise DataError(f"data.eval_fraction={self.eval_fraction} must be in [0, 1)")
        for key in ("max_samples", "max_eval_samples", "num_proc"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise DataError(f"data.{key}={value} must be >= 1 (or null for no limit)")
        if self.video_fps <= 0:
            raise DataError(f"data.video_fps={self.video_fps} must be > 0")
        if self.video_max_frames < 1:
            raise DataError(f"data.video_max_frames={self.video_max_frames} must be >= 1")
        synthetic = self.path.startswith("synthetic:")
        if self.eval_fraction and (self.eval_path or self.eval_split):
            raise DataError(
                "data.eval_fraction carves the eval split out of train, data.eval_path/eval_split name one: "
                "set only one of them"
            )
        if synthetic and self.eval_split and not self.eval_path:
            raise DataError(
                "data.eval_split does not apply to synthetic data, whose eval split is the task's own 'eval'; "
                "remove it (or set data.eval_path to evaluate on another dataset)"
            )
        if self.eval_fraction and synthetic:
            raise DataError(
                "data.eval_fraction does not apply to synthetic data, which has its own eval split; "
                "size it with data.synthetic.n_eval instead"
            )


@dataclass
class StageData:
    """What a stage trains and evaluates on.

    `heldout` is the eval split in RL prompt form (`prompt` + `solution` + other columns), for
    greedy accuracy before/after training; None without an eval split or when the format has no
    prompt/answer boundary (`text`).
    """

    train: datasets.Dataset
    eval: datasets.Dataset | None
    heldout: datasets.Dataset | None
    source: str
    format: str = ""


def as_data_config(cfg: Any) -> DataConfig:
    """A DataConfig from a DataConfig, a mapping or an OmegaConf DictConfig."""
    if isinstance(cfg, DataConfig):
        return cfg
    if type(cfg).__module__.startswith("omegaconf"):  # a DictConfig; omegaconf is imported only then
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise DataError(f"the data config must be a mapping, got {type(cfg).__name__}")
    valid = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise DataError(f"unknown data config keys {unknown}; valid keys: {sorted(valid)}")
    return DataConfig(**cfg)
