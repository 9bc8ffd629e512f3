"""The tiny model the project builds for itself: offline, deterministic, cached.

Three text variants, each a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load:

- ``"base"``: a byte-level BPE tokenizer (every digit its own token, ChatML chat template with
  ``{% generation %}`` markers) and a randomly initialised Llama-architecture model (hidden 128,
  2 layers, 4 heads, tied embeddings, ~0.56M parameters). Builds in a few seconds.
- ``"sft"``: the base model after a short SFT warm-up with trl's ``SFTTrainer`` on the synthetic
  arithmetic task (:mod:`align.data.synthetic`), stopped once greedy held-out accuracy reaches
  ``SFT_TARGET_ACCURACY``; ``warmup.json`` records the steps and the accuracy curve. About a
  minute on 2 CPU cores. RL from a weaker start barely moves (most sampled groups are all wrong),
  which is why the warm-up stops at a target accuracy and not after a fixed number of steps.
  Stopped at 0.5, so GRPO, DPO and the other stages have room to show what they add.
- ``"sft90"``: the same warm-up recipe with a faster schedule (linear decay over 800 steps, not
  1,500), stopped at 0.9; the GRPO default starts from it. On this task an SFT step on correct
  answers buys far more accuracy than a GRPO step (measured: README, "Time to accuracy"), so the
  default spends its first half-minute on SFT and GRPO then takes it the rest of the way.

A third variant, ``"vlm"``, is a tiny vision-language model (see :func:`tiny_vlm_path`): the same
tokenizer plus an image token, a LLaVA-architecture model (a 1-layer CLIP vision tower on 56x56
images, a 2-layer MLP projector and the base's Llama language model shape), randomly initialised,
saved with its processor so ``AutoProcessor`` / ``AutoModelForImageTextToText`` load it. It has its
own cache folder and version (``tiny/vlm-<VLM_BUILD_VERSION>``), so building it never touches the
text variants.

Use ``tiny_model_path("sft")`` or, wherever a model name is accepted, ``"tiny://sft"`` through
:func:`resolve_model_path`. The cache lives under ``$ALIGN_CACHE`` (default ``~/.cache/align``)
in ``tiny/<BUILD_VERSION>/<variant>``; a file lock makes concurrent processes (e.g. the ranks of
a ``torchrun``/``accelerate`` launch) build once while the others wait, and each variant is built
in a temporary directory and renamed into place, so an interrupted build leaves nothing half
written. Bump ``BUILD_VERSION`` whenever the recipe below changes.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import random
import shutil
import tempfile
import time

from align.files import cache_root

logger = logging.getLogger("align.models.tiny")

BUILD_VERSION = "v2"
TINY_SCHEME = "tiny://"
TINY_VARIANTS = ("base", "sft", "sft90")

SEED = 0
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
VOCAB_SIZE = 300

# SFT warm-up recipe (measured: ~20 steps/s on 2 cores; accuracy jumps between ~300 and ~650
# steps depending on the seed).
SFT_TARGET_ACCURACY = 0.5
SFT_EVAL_EVERY = 20  # accuracy jumps fast: check often to stop near the target
SFT_MAX_STEPS = 1500
SFT_BATCH_SIZE = 64
SFT_LEARNING_RATE = 2e-3
SFT_WARMUP_STEPS = 30
#: Per SFT variant: (target held-out accuracy, max_steps of the linear schedule). "sft90": measured
#: on 2 cores (2026-12-01), 0.9 at step ~450-480 with 800 (~24 s without activation checkpointing,
#: ~30-37 s with it); with 1,500, 0.87 at step 600.
SFT_RECIPES = {"sft": (SFT_TARGET_ACCURACY, SFT_MAX_STEPS), "sft90": (0.9, 800)}
EVAL_MAX_NEW_TOKENS = 5

# ChatML. The assistant turn's content *and* its <|im_end|> sit inside {% generation %} so trl's
# assistant_only_loss trains the model to stop; the prompt rendered with add_generation_prompt is
# a token-exact prefix of prompt+completion, which trl's completion-only loss relies on.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# General text so that prompts other than arithmetic tokenise into sensible pieces.
_GENERAL_TEXT = [
    "You are a helpful assistant.",
    "What is the sum of these two numbers? Answer with the number only.",
    "Hello! How can I help you today?",
    "Please write a short answer. The answer is correct.",
    "Think step by step, then give the final answer.",
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is 12 plus 30? Answer: 42.",
    "This is a test of the tokenizer, with punctuation: commas, periods; colons and (brackets).",
    "Translate the sentence into French, and keep it short.",
    "I think that is right, but let me check the result again.",
]


def tiny_model_path(variant: str) -> pathlib.Path:
    """The directory of the tiny model ``variant`` ("base" or "sft"), built on first use."""
    if variant not in TINY_VARIANTS:
        raise ValueError(
            f"unknown tiny model variant {variant!r}; available: {', '.join(TINY_VARIANTS)}"
        )
    root = cache_root() / "tiny" / BUILD_VERSION
    final = root / variant
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)

    from filelock import FileLock

    with FileLock(str(root / "build.lock")):
        # Another process may have finished the build while this one waited for the lock.
        # Every SFT variant is trained from the base model, not from another variant.
        for needed in dict.fromkeys(("base", variant)):
            if not (root / needed).is_dir():
                _build_into(root, needed)
    return final


def resolve_model_path(name_or_path: str) -> str:
    """``"tiny://base"`` / ``"tiny://sft"`` / ``"tiny://vlm"`` / ``"tiny://tools"`` -> the built
    directory; anything else unchanged."""
    if isinstance(name_or_path, str) and name_or_path.startswith(TINY_SCHEME):
        variant = name_or_path[len(TINY_SCHEME) :]
        if variant in VLM_VARIANTS:
            return str(tiny_vlm_path(variant))
        if variant in TOOLS_VARIANTS:
            return str(tiny_tools_path(variant))
        return str(tiny_model_path(variant))
    return name_or_path


# --------------------------------------------------------------------------- tiny vision-language model

#: Bump whenever the VLM recipe below changes; independent of BUILD_VERSION.
VLM_BUILD_VERSION = "v1"
VLM_VARIANTS = ("vlm",)
#: The token the processor expands to one token per image patch. Not "<image>": that string is the
#: placeholder of LLaVA / Qwen2-VL-Finetune data files, which align turns into image parts.
IMAGE_TOKEN = "<|image_pad|>"
VLM_IMAGE_SIZE = 56  # 4x4 patches of 14 pixels: 16 image tokens per image
VLM_PATCH_SIZE = 14

# ChatML as in CHAT_TEMPLATE, with content given as a list of typed parts (how processors pass
# images): an image part renders as the image token, which the processor expands per patch.
VLM_CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{- '" + IMAGE_TOKEN + "' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- render(message['content']) + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- render(message['content']) + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tiny_vlm_path(variant: str = "vlm") -> pathlib.Path:
    """The directory of the tiny vision-language model, built on first use (a few seconds)."""
    if variant not in VLM_VARIANTS:
        raise ValueError(f"unknown tiny VLM variant {variant!r}; available: {', '.join(VLM_VARIANTS)}")
    return _built(cache_root() / "tiny" / f"vlm-{VLM_BUILD_VERSION}", variant)


def _built(root: pathlib.Path, variant: str) -> pathlib.Path:
    """``root/variant``, built under the folder's lock unless it is there already (a variant
    with a cache folder and version of its own, built from nothing else)."""
    final = root / variant
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)

    from filelock import FileLock

    with FileLock(str(root / "build.lock")):
        if not final.is_dir():
            _build_into(root, variant)
    return final


def build_vlm_processor():
    """The tiny VLM's processor: the tiny tokenizer plus an image token, and LLaVA's PIL image
    processor (resize + centre crop to 56x56; needs Pillow, not torchvision)."""
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import (
        LlavaImageProcessorPil,
    )

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START, IMAGE_TOKEN]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": VLM_IMAGE_SIZE},
        crop_size={"height": VLM_IMAGE_SIZE, "width": VLM_IMAGE_SIZE},
    )
    # "default" drops the CLS feature, which num_additional_image_tokens=1 accounts for.
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VLM_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=VLM_CHAT_TEMPLATE,
    )


def _build_vlm(out: pathlib.Path) -> None:
    import torch
    from transformers import (
        AutoModelForImageTextToText,
        AutoProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    # LLaVA rather than Qwen2-VL: transformers' Qwen2-VL processor requires a video processor,
    # which needs torchvision; LLaVA's needs only Pillow. trl's SFT/DPO/GRPO treat both alike
    # (a processor + pixel_values), and the module layout (vision tower, projector, language
    # model) is the one the PEFT and freeze options address.
    processor = build_vlm_processor()
    tokenizer = processor.tokenizer
    eos_id, pad_id, image_id = tokenizer.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN])
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, attention_bias=False, bos_token_id=None,
        eos_token_id=eos_id, pad_token_id=pad_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=VLM_IMAGE_SIZE, patch_size=VLM_PATCH_SIZE, projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_id,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        projector_hidden_act="gelu", tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # The reloaded processor must tokenise exactly as the one built here.
    reloaded = AutoProcessor.from_pretrained(out)
    for text_ in _CHECK_STRINGS + [f"{IMAGE_TOKEN}What colour?"]:
        if reloaded.tokenizer(text_)["input_ids"] != tokenizer(text_)["input_ids"]:
            raise RuntimeError(f"the tiny VLM processor saved at {out} tokenises {text_!r} "
                               "differently after reload")
    if reloaded.image_token != IMAGE_TOKEN:
        raise RuntimeError(f"image token changed on reload: {reloaded.image_token!r}")
    AutoModelForImageTextToText.from_pretrained(out)
    logger.info("tiny vlm: vocab %d, %d parameters", len(tokenizer),
                sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------- tiny tool-use model

#: Bump whenever the tool-use recipe below changes; independent of BUILD_VERSION.
TOOLS_BUILD_VERSION = "v1"
TOOLS_VARIANTS = ("tools",)
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_VOCAB_SIZE = 320
TOOLS_TARGET_ACCURACY = 0.5
TOOLS_EVAL_EVERY = 10  # accuracy jumps from 0 to ~0.8 within 20 steps (measured)
TOOLS_TRAIN_ROWS = 10000  # ~150 steps of traces; the warm-up stops near step 80
TOOLS_MAX_STEPS = 1500
TOOLS_MAX_LENGTH = 80
#: tokens of a whole tool-using completion: call (13) + tool turn (~11) + answer (7)
TOOLS_MAX_NEW_TOKENS = 40

# ChatML with tool calls, compact so that a 0.5M-parameter model learns them on CPU: the tools are
# listed by name in a system turn (real models' templates render the whole JSON schema), a call is
# `<tool_call>NAME key=value ...</tool_call>` (string values without spaces: the tiny task's
# arithmetic expressions), the tool's answer is a `tool` turn. Assistant turns sit in
# {% generation %} (trl's assistant_only_loss trains on them, never on tool turns), and the
# template is prefix-preserving, which trl's multi-turn GRPO relies on.
TOOLS_CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\ntools:' }}"
    "{%- for tool in tools %}"
    "{{- ' ' + (tool.function.name if tool.function is defined else tool.name) }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] or '' }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>' + fn['name'] }}"
    "{%- for key, value in fn['arguments'].items() %}{{- ' ' + key + '=' + (value | string) }}"
    "{%- endfor %}{{- '</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: transformers' response template for TOOLS_CHAT_TEMPLATE: how trl's parse_response turns a
#: generated reply back into {content, tool_calls}; saved with the tokenizer.
TOOLS_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open_pattern": r"<tool_call>(?P<name>\w+)",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {"tag_pattern": r"\s*(?P<key>\w+)=(?P<value>[^\s<]*)",
                             "value_parser": {"name": "text"}},
            "transform": {"type": "function",
                          "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def tiny_tools_path(variant: str = "tools") -> pathlib.Path:
    """The directory of the tiny tool-use model, built on first use (a few minutes on 2 cores):
    the tiny architecture with a tokenizer that knows tool calls, after an SFT warm-up on
    calculator traces of the multiplication task, stopped once greedy held-out accuracy *with the
    calculator* reaches TOOLS_TARGET_ACCURACY (``warmup.json`` records the curve)."""
    if variant not in TOOLS_VARIANTS:
        raise ValueError(f"unknown tiny tool-use variant {variant!r}; available: "
                         f"{', '.join(TOOLS_VARIANTS)}")
    return _built(cache_root() / "tiny" / f"tools-{TOOLS_BUILD_VERSION}", variant)


def build_tools_tokenizer():
    """The tiny tokenizer trained with tool-use traces too (so `calculator` and `expression` are
    single tokens), plus the call tags as tokens, the tool-call template and response template."""
    from align.data.synthetic import multiplication_pairs, multiplication_prompt

    corpus = [
        f"{IM_START}system\ntools: calculator{EOS_TOKEN}\n{IM_START}user\n"
        f"{multiplication_prompt(a, b)}{EOS_TOKEN}\n{IM_START}assistant\n{TOOL_CALL_OPEN}calculator "
        f"expression={a}*{b}{TOOL_CALL_CLOSE}{EOS_TOKEN}\n{IM_START}tool\n{a * b}{EOS_TOKEN}\n"
        for a, b in multiplication_pairs("train", seed=SEED, n_train=2000)
    ]
    tokenizer = build_tokenizer(corpus, TOOLS_VOCAB_SIZE)
    tokenizer.add_tokens([TOOL_CALL_OPEN, TOOL_CALL_CLOSE])
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE
    tokenizer.response_template = TOOLS_RESPONSE_TEMPLATE
    return tokenizer


def _build_tools(out: pathlib.Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM, TrainerCallback, set_seed
    from trl import SFTTrainer

    from align.data.synthetic import build_synthetic
    from align.measure.agent import generate_with_tools
    from tools import build_tools

    set_seed(SEED)
    tokenizer = build_tools_tokenizer()
    eos_id, pad_id = tokenizer.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN])
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(architecture_config(len(tokenizer), eos_token_id=eos_id,
                                                 pad_token_id=pad_id))
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=eos_id,
                                               pad_token_id=pad_id, do_sample=False)
    train = build_synthetic("multiplication", "sft", "train", seed=SEED,
                            n_train=TOOLS_TRAIN_ROWS)
    evalset = build_synthetic("multiplication", "prompt", "eval", seed=SEED)
    prompts, solutions = list(evalset["prompt"]), list(evalset["solution"])
    calculator = build_tools({"calculator": {"fn": "calculator"}})
    curve: list[dict] = []

    class StopAtAccuracy(TrainerCallback):
        """Greedy held-out accuracy with the calculator every TOOLS_EVAL_EVERY steps."""

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            rollouts = generate_with_tools(model, tokenizer, prompts, calculator,
                                           max_new_tokens=TOOLS_MAX_NEW_TOKENS, batch_size=200)
            final = [c[-1].get("content", "") if c else "" for c in rollouts.completions]
            accuracy = sum(f == s for f, s in zip(final, solutions)) / len(solutions)
            called = sum(1 for n in rollouts.calls if n) / len(solutions)
            curve.append({"step": state.global_step, "accuracy": accuracy,
                          "tool_call_rate": called, "loss": round(float(logs["loss"]), 4)})
            logger.info("tiny tool-use warm-up: step %d, loss %.4f, held-out accuracy %.3f "
                        "(called the tool: %.3f)", state.global_step, logs["loss"], accuracy,
                        called)
            if accuracy >= TOOLS_TARGET_ACCURACY:
                control.should_training_stop = True

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="align-tiny-tools-") as trainer_dir:
        args = warmup_config(trainer_dir, max_steps=TOOLS_MAX_STEPS, assistant_only_loss=True,
                             max_length=TOOLS_MAX_LENGTH, logging_steps=TOOLS_EVAL_EVERY)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train,
                             processing_class=tokenizer, callbacks=[StopAtAccuracy()])
        trainer.train()
    reached = bool(curve) and curve[-1]["accuracy"] >= TOOLS_TARGET_ACCURACY
    if not reached:
        logger.warning("tiny tool-use warm-up stopped at the %d-step cap below the target "
                       "accuracy %.2f", trainer.state.global_step, TOOLS_TARGET_ACCURACY)
    trainer.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _check_reload(out, tokenizer)
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(out).response_template != TOOLS_RESPONSE_TEMPLATE:
        raise RuntimeError(f"the response template saved at {out} changed on reload")
    summary = {"build_version": TOOLS_BUILD_VERSION, "seed": SEED,
               "steps": trainer.state.global_step, "target_accuracy": TOOLS_TARGET_ACCURACY,
               "reached_target": reached,
               "final_accuracy": curve[-1]["accuracy"] if curve else None,
               "seconds": round(time.perf_counter() - start, 1), "curve": curve}
    (out / "warmup.json").write_text(json.dumps(summary, indent=2) + "\n")


def _build_into(root: pathlib.Path, variant: str) -> None:
    import numpy as np
    import torch

    final = root / variant
    # Only the lock holder builds, so any leftover temporary directory is from a killed build.
    for stale in root.glob(f".{variant}-building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    print(f"building the tiny model {variant!r} (once, cached at {final})", flush=True)
    start = time.perf_counter()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{variant}-building-", dir=root))
    # mkdtemp makes the directory private; the cache may be shared by several users.
    tmp.chmod(0o755)
    # The build seeds every RNG; the caller's RNG streams are restored afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            if variant == "base":
                _build_base(tmp)
            elif variant == "vlm":
                _build_vlm(tmp)
            elif variant == "tools":
                _build_tools(tmp)
            else:
                _build_sft(root / "base", tmp, *SFT_RECIPES[variant])
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    logger.info(
        "built tiny model %r in %.1f s at %s",
        variant,
        time.perf_counter() - start,
        final,
    )


def _tokenizer_corpus() -> list[str]:
    from align.data.synthetic import arithmetic_pairs

    rows = []
    for a, b in arithmetic_pairs("train", seed=SEED):
        rows.append(
            f"{IM_START}user\n{a}+{b}={EOS_TOKEN}\n{IM_START}assistant\n{a + b}{EOS_TOKEN}\n"
        )
    for text in _GENERAL_TEXT:
        rows.append(
            f"{IM_START}system\n{text}{EOS_TOKEN}\n{IM_START}user\n{text}{EOS_TOKEN}\n"
        )
    return rows


def build_tokenizer(extra_corpus: list[str] | None = None, vocab_size: int = VOCAB_SIZE):
    """Train the tiny byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``
    (``extra_corpus``/``vocab_size``: the tool-use variant's, which learns its call syntax)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits first, one token each, so every number is spelt digit by digit; punctuation apart so
    # "+" and "=" never merge with the numbers; byte level last so any text is representable.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, IM_START, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus() + list(extra_corpus or []), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[IM_START],
        padding_side="right",
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


_CHECK_STRINGS = [
    "12+34=",
    "99+0=198",
    "Hello, world! What is 7 + 8?",
    f"{IM_START}user\n5+5={EOS_TOKEN}\n{IM_START}assistant\n10{EOS_TOKEN}\n",
    "  spaces\tand\nnew lines 1234567890 ünïcödé",
]


def _check_reload(path: pathlib.Path, reference) -> None:
    """Fail the build unless AutoTokenizer / AutoModelForCausalLM reload ``path`` faithfully."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(path)
    # Comparing the whole pipeline catches a rebuilt tokenizer even where the test strings agree.
    want_json, got_json = (
        json.loads(reference.backend_tokenizer.to_str()),
        json.loads(reloaded.backend_tokenizer.to_str()),
    )
    for part in ("normalizer", "pre_tokenizer", "model", "decoder", "post_processor"):
        if want_json.get(part) != got_json.get(part):
            raise RuntimeError(
                f"tokenizer saved at {path} reloads as {type(reloaded).__name__} with a different {part}: "
                f"{got_json.get(part)!r:.300} != {want_json.get(part)!r:.300}"
            )
    for text in _CHECK_STRINGS:
        want, got = reference(text)["input_ids"], reloaded(text)["input_ids"]
        if want != got:
            raise RuntimeError(
                f"tokenizer saved at {path} reloads as {type(reloaded).__name__} and tokenises {text!r} "
                f"differently: {got} != {want}"
            )
    msgs = [{"role": "user", "content": "1+2="}]
    if reloaded.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    ) != (
        reference.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ):
        raise RuntimeError(
            f"the chat template saved at {path} renders differently after reload"
        )
    if (reloaded.eos_token, reloaded.pad_token) != (EOS_TOKEN, PAD_TOKEN):
        raise RuntimeError(
            f"special tokens changed on reload: {reloaded.eos_token!r}, {reloaded.pad_token!r}"
        )
    AutoModelForCausalLM.from_pretrained(path)


def architecture_config(vocab_size: int = VOCAB_SIZE, **token_ids):
    """The text variants' architecture ("base" and "sft" share it): what planning and module-name
    checks read, without building the model."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=512,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=512, tie_word_embeddings=True,
                       attention_bias=False, bos_token_id=None, **token_ids)


def _build_base(out: pathlib.Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    eos_id, pad_id = tokenizer.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN])
    # Llama rather than Qwen2: for model_type "qwen2" transformers 5 ignores tokenizer_class and
    # AutoTokenizer rebuilds a Qwen2Tokenizer with Qwen's own pre-tokenizer regex (silently; the
    # ids happen to agree on most strings). For "llama" it honours tokenizer_class
    # "TokenizersBackend" and loads tokenizer.json exactly as saved. The architectures differ
    # only in Qwen2's q/k/v biases, which do not matter for a model this size.
    config = architecture_config(len(tokenizer), eos_token_id=eos_id, pad_token_id=pad_id)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _check_reload(out, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tiny base: vocab %d, %d parameters", len(tokenizer), n_params)


def warmup_config(output_dir, **options):
    """trl's ``SFTConfig`` for the tiny models' warm-ups: batch, learning rate and linear schedule
    of the recipe above, single-process on CPU in fp32, seeded, nothing saved or reported;
    ``options`` adds each build's steps, loss mask, length and logging interval.
    Activation checkpointing off, where trl turns it on by default: a model this size has no
    memory to save and the recomputed forward cost ~20% of every step (measured on 2 cores:
    ~60 -> ~48 ms a step; the weights come out bit for bit the same)."""
    from trl import SFTConfig

    from align.fields import checkpointing_field

    off = {checkpointing_field(SFTConfig): False}
    return SFTConfig(output_dir=str(output_dir), per_device_train_batch_size=SFT_BATCH_SIZE,
                     learning_rate=SFT_LEARNING_RATE, lr_scheduler_type="linear",
                     warmup_steps=SFT_WARMUP_STEPS, save_strategy="no", report_to=[],
                     use_cpu=True, bf16=False, seed=SEED, data_seed=SEED, disable_tqdm=True,
                     dataloader_num_workers=0, **off, **options)


def pretokenise(tokenizer, rows):
    """Conversational prompt-completion ``rows`` as the ``input_ids`` / ``completion_mask`` rows
    trl's SFTTrainer makes from them (which it then trains on as given), rendered and tokenised in
    two batched calls instead of two chat-template renders per row (9,800 rows on 2 cores: ~1.1 s
    against trl's ~1.8 s). The completion starts where the prompt and prompt+completion token ids
    diverge, as in trl."""
    import datasets
    from trl.data_utils import common_prefix_length

    prompts, completions = list(rows["prompt"]), list(rows["completion"])
    prompt_text = tokenizer.apply_chat_template(prompts, tokenize=False,
                                                add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template([p + c for p, c in zip(prompts, completions)],
                                              tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    masks = []
    for p, f in zip(prompt_ids, full_ids):
        n = common_prefix_length(p, f)
        masks.append([0] * n + [1] * (len(f) - n))
    return datasets.Dataset.from_dict({"input_ids": full_ids, "completion_mask": masks})


def _build_sft(base: pathlib.Path, out: pathlib.Path, target: float, max_steps: int) -> None:
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        TrainerCallback,
        set_seed,
    )
    from trl import SFTTrainer

    from align.data.synthetic import build_synthetic
    from align.measure.generation import generate_completions

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    train = pretokenise(tokenizer, build_synthetic("arithmetic", "sft", "train", seed=SEED))
    evalset = build_synthetic("arithmetic", "prompt", "eval", seed=SEED)
    eval_prompts, solutions = list(evalset["prompt"]), list(evalset["solution"])

    curve: list[dict] = []

    class StopAtAccuracy(TrainerCallback):
        """Greedy held-out exact match every SFT_EVAL_EVERY steps; stop at the target."""

        # on_log (logging_steps == SFT_EVAL_EVERY) sees the loss of the steps just taken; the
        # trainer checks should_training_stop right after logging.
        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            # An answer is exactly right only if every one of its tokens is: held-out exact match
            # stays below the target while the logged per-token accuracy of the training batches
            # does (measured: 0.58 exact at 0.88 per token, 0.93 at 0.97), so the warm-up skips
            # those measurements (17 of the ~90% warm-up's 24, ~0.8 s) and stops where it did.
            if logs.get("mean_token_accuracy", 1.0) < target:
                return
            completions = generate_completions(
                model,
                tokenizer,
                eval_prompts,
                max_new_tokens=EVAL_MAX_NEW_TOKENS,
                batch_size=200,
            )
            accuracy = sum(c == s for c, s in zip(completions, solutions)) / len(
                solutions
            )
            loss = float(logs["loss"])
            curve.append(
                {
                    "step": state.global_step,
                    "accuracy": accuracy,
                    "loss": round(loss, 4),
                }
            )
            logger.info(
                "tiny sft warm-up: step %d, loss %.4f, held-out accuracy %.3f",
                state.global_step,
                loss,
                accuracy,
            )
            if accuracy >= target:
                control.should_training_stop = True

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="align-tiny-sft-") as trainer_dir:
        args = warmup_config(trainer_dir, max_steps=max_steps, completion_only_loss=True,
                             max_length=64, logging_steps=SFT_EVAL_EVERY)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train,
            processing_class=tokenizer,
            callbacks=[StopAtAccuracy()],
        )
        trainer.train()
    seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    reached = bool(curve) and curve[-1]["accuracy"] >= target
    if not reached:
        logger.warning(
            "tiny sft warm-up stopped at the %d-step cap below the target accuracy %.2f (reached %.3f)",
            steps,
            target,
            curve[-1]["accuracy"] if curve else float("nan"),
        )
    model = trainer.model
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _check_reload(out, tokenizer)
    summary = {
        "build_version": BUILD_VERSION,
        "seed": SEED,
        "steps": steps,
        "target_accuracy": target,
        "max_steps": max_steps,
        "reached_target": reached,
        "final_accuracy": curve[-1]["accuracy"] if curve else None,
        "seconds": round(seconds, 1),
        "curve": curve,
    }
    (out / "warmup.json").write_text(json.dumps(summary, indent=2) + "\n")
