"""Loading a model to sample from, outside training: Hugging Face (a full model, or a PEFT
adapter folder applied to its base model) or vLLM (the `vllm` extra: a full model, or a LoRA
adapter served on its base as a LoRA request). align/eval.py and align/generate.py sample with
these.

The vLLM helpers take the sampling settings as one object `ev` with the attributes `n`,
`temperature`, `max_new_tokens` and `vllm_kwargs` (and optionally `top_p`), as align/eval.py's
EvalConfig has them. vLLM is imported inside the functions only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from align.errors import ConfigError


def load_for_inference(model_cfg):
    """(model, tokenizer): a full model, or a PEFT adapter folder on top of its base model."""
    from align.models import load_model, load_processing_class, resolve_path

    path = Path(resolve_path(model_cfg.name_or_path))
    tokenizer = load_processing_class(model_cfg)  # a VLM's processor, else the tokenizer
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        from dataclasses import replace

        from peft import PeftModel

        base_path = json.loads(adapter.read_text())["base_model_name_or_path"]
        base = load_model(replace(model_cfg, name_or_path=base_path))
        model = PeftModel.from_pretrained(base, str(path))
    else:
        model = load_model(model_cfg)
    model.eval()
    return model, tokenizer



#: the ranks vLLM's LoRA kernels are built for (vllm.config.lora.MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_adapter(path: Path, where: str = "eval.backend=vllm") -> dict | None:
    """The adapter_config.json of an adapter folder that vLLM can serve as a LoRA request; None
    for a full model. ConfigError for an adapter vLLM cannot serve (its own checks, made here
    before anything loads): merging it first always works."""
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"it is a {config.get('peft_type')} adapter (vLLM serves LoRA only)")
    if config.get("use_dora"):
        problems.append("vLLM does not serve DoRA")
    if config.get("modules_to_save"):
        problems.append(f"vLLM does not serve modules_to_save ({config['modules_to_save']})")
    if config.get("bias", "none") != "none":
        problems.append(f"vLLM does not serve adapter biases (bias={config['bias']!r})")
    if int(config.get("r") or 0) > VLLM_LORA_RANKS[-1]:
        problems.append(f"rank {config['r']} is above vLLM's largest, {VLLM_LORA_RANKS[-1]}")
    if problems:
        raise ConfigError(f"{where} cannot serve the adapter {path}: "
                          f"{'; '.join(problems)}. Merge it first (python -m align.merge "
                          "RUN_DIR) and use the merged model, or the hf backend")
    return config


def generate_vllm(model_cfg, tokenizer, prompts: list, ev,
                  seed: int, engine=None) -> list[list[str]]:
    """n completions per prompt with vLLM; the same shape and decoding rules as `generate_hf`,
    so that both backends give the same greedy completions:

    - prompts are tokenised here as generate_hf tokenises them (a chat template's rendering
      without extra special tokens, a plain string with them) and given to vLLM as token ids,
      and completions are decoded with the same tokenizer (special tokens skipped, stripped);
    - the dtype is the one load_model uses (model.dtype=auto: bfloat16 on a CUDA GPU that
      supports it, float32 otherwise), not vLLM's own `auto` (the checkpoint's dtype);
    - sampling uses the model's generation_config.json (top_k, top_p, min_p,
      repetition_penalty) as HF generate does, with HF's top_k=50 where it sets none;
    - each prompt has its own seed (seed + i * n; vLLM gives its j-th sample seed + i * n + j):
      results repeat, and prompts do not share one random stream.

    `model_cfg` (align.models.ModelConfig) names a full model or a LoRA adapter folder; an
    adapter is served on its base model (enable_lora, max_lora_rank = r rounded up to vLLM's
    ranks). `ev.vllm_kwargs` go to vllm.LLM last, so they override any of these. `engine`: what
    `vllm_engine` returned, to sample batch after batch from one engine.
    """
    from align.measure.generation import _render

    llm, lora_request, params = engine or vllm_engine(model_cfg, ev, seed)
    text_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    token_prompts = [
        {"prompt_token_ids": text_tokenizer(_render(tokenizer, p),
                                            add_special_tokens=isinstance(p, str))["input_ids"]}
        for p in prompts]
    outputs = llm.generate(token_prompts, [params(ev.n, ev.max_new_tokens, seed + i * ev.n)
                                           for i in range(len(prompts))],
                           lora_request=lora_request)
    return [[text_tokenizer.decode(o.token_ids, skip_special_tokens=True).strip()
             for o in out.outputs] for out in outputs]


def vllm_engine(model_cfg, ev, seed: int):
    """(vllm.LLM, its LoRA request or None, params(n, max_tokens, seed) -> SamplingParams), set
    up as `generate_vllm` describes."""
    from transformers import GenerationConfig
    from vllm import LLM, SamplingParams

    from align.models.factory import decide_for_device, resolve_path, torch_dtype

    model_cfg = decide_for_device(model_cfg)  # dtype "auto": what this machine computes in
    path = Path(resolve_path(model_cfg.name_or_path))
    adapter = vllm_lora_adapter(path) if path.is_dir() else None
    base = resolve_path(adapter["base_model_name_or_path"]) if adapter else str(path)
    llm_kwargs: dict[str, Any] = {
        "model": base, "dtype": torch_dtype(model_cfg.dtype), "seed": seed,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if model_cfg.tokenizer:
        llm_kwargs["tokenizer"] = resolve_path(model_cfg.tokenizer)
    if model_cfg.revision and not adapter:
        llm_kwargs["revision"] = model_cfg.revision
    lora_request = None
    if adapter:
        from vllm.lora.request import LoRARequest

        rank = next(r for r in VLLM_LORA_RANKS if r >= int(adapter["r"]))
        llm_kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        lora_request = LoRARequest("eval-adapter", 1, str(path))
    llm_kwargs.update(ev.vllm_kwargs or {})

    try:
        generation = GenerationConfig.from_pretrained(base)
    except OSError:  # no generation_config.json: HF generate falls back to its defaults
        generation = GenerationConfig()

    def params(n: int, max_tokens: int, request_seed: int):
        return SamplingParams(
            n=n, temperature=ev.temperature, max_tokens=max_tokens, seed=request_seed,
            top_k=50 if generation.top_k is None else generation.top_k,
            top_p=(getattr(ev, "top_p", None) or
                   (1.0 if generation.top_p is None else generation.top_p)),
            min_p=generation.min_p or 0.0,
            repetition_penalty=generation.repetition_penalty or 1.0)

    return LLM(**llm_kwargs), lora_request, params


def vllm_continuation(model_cfg, ev, seed: int):
    """The tool loop's generation step on vLLM (align.measure.agent): each id sequence continued
    as one request, at most its budget of tokens; vLLM returns the ids up to and including the
    end-of-turn token, as HF's continuation does. Each round's requests get their own seeds."""
    llm, lora_request, params = vllm_engine(model_cfg, ev, seed)
    calls = [0]

    def continue_ids(sequences: list[list[int]], budgets: list[int]) -> list[list[int]]:
        first = seed + calls[0] * 1_000_003  # a new stream of seeds per round
        calls[0] += 1
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in sequences],
                               [params(1, budget, first + i) for i, budget in enumerate(budgets)],
                               lora_request=lora_request)
        return [list(out.outputs[0].token_ids) for out in outputs]

    return continue_ids
