"""The model factory shared by SFT, DPO and GRPO: model + tokenizer + PEFT plan from config.

`model:` config section (schema: ModelConfig). `name_or_path` is a hub id, a local folder, or
`tiny://base` / `tiny://sft` for the tiny model align builds itself (see align/models/tiny.py).
The adapter itself is not applied here: the PEFT config goes to trl's trainer, which wraps
the model (and, for DPO, uses the base model with the adapter disabled as its reference).

`kind` selects the Auto classes:
  causal_lm            AutoModelForCausalLM + AutoTokenizer (text)
  image_text_to_text   AutoModelForImageTextToText + AutoProcessor (vision-language models:
                       LLaVA, Qwen2-VL / Qwen2.5-VL, Gemma 3, Idefics3 ...; `tiny://vlm` offline).
                       The processor is the trainers' processing_class; it is saved with the model.
                       `freeze_vision_tower` / `freeze_projector` / `freeze_language_model` stop
                       those parts from training (full fine-tuning); `peft.apply_to` says where
                       adapters go. `min_pixels` / `max_pixels` bound the image resolution for
                       processors that resize dynamically (the Qwen2-VL family).

    python align/sft.py model=tiny_vlm data=shapes                 # offline, CPU
    python align/sft.py model=tiny_vlm model.freeze_vision_tower=true data=local_vlm \
        data.path=data.json data.image_folder=images/

Modules: config (ModelConfig and its checks), factory (loading, `build_model`), adapters (the
`peft:` section as peft config objects), parts (vision-language model parts), tiny (the
embedded tiny models).
"""

from align.models.config import KINDS, VISION_KINDS, ModelConfig, check_model_config
from align.models.factory import (
    build_model,
    load_model,
    load_processing_class,
    load_processor,
    load_tokenizer,
    resolve_path,
)

__all__ = [
    "KINDS",
    "VISION_KINDS",
    "ModelConfig",
    "build_model",
    "check_model_config",
    "load_model",
    "load_processing_class",
    "load_processor",
    "load_tokenizer",
    "resolve_path",
]
