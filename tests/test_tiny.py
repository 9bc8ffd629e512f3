"""The tiny model: tokenizer round trip, chat template, loading, generation, the SFT warm-up."""

import json

import pytest

from align.models.tiny import (
    EOS_TOKEN,
    SFT_RECIPES,
    SFT_TARGET_ACCURACY,
    TINY_SCHEME,
    build_tokenizer,
    resolve_model_path,
    tiny_model_path,
)

TEXTS = [
    "12+34=",
    "0+0=0",
    "What is 1234 + 5678? Answer with digits only.",
    "Hello,   world!\n\ttabs and ünïcödé",
    "<|im_start|>user\n7+8=<|im_end|>\n<|im_start|>assistant\n15<|im_end|>\n",
]


@pytest.fixture(scope="module")
def base_tokenizer(tiny_base_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_path)


@pytest.fixture(scope="module")
def sft_model_and_tokenizer(tiny_sft_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(
        tiny_sft_path
    ), AutoTokenizer.from_pretrained(tiny_sft_path)


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="available: base, sft, sft90"):
        tiny_model_path("large")


def test_resolve_model_path(tiny_base_path):
    assert resolve_model_path(f"{TINY_SCHEME}base") == str(tiny_base_path)
    assert resolve_model_path("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert resolve_model_path("/some/local/dir") == "/some/local/dir"
    with pytest.raises(ValueError, match="available"):
        resolve_model_path(f"{TINY_SCHEME}huge")


def test_cached_path_is_stable(tiny_base_path):
    assert tiny_model_path("base") == tiny_base_path
    assert not [p for p in tiny_base_path.parent.iterdir() if "building" in p.name]


def test_tokenizer_reload_is_identical(base_tokenizer):
    trained = build_tokenizer()
    for text in TEXTS:
        assert base_tokenizer(text)["input_ids"] == trained(text)["input_ids"], text
    # The whole pipeline, not only these strings: a rebuilt tokenizer (e.g. Qwen2Tokenizer's own
    # regex) can agree on simple strings and still differ elsewhere.
    assert (
        json.loads(base_tokenizer.backend_tokenizer.to_str())["pre_tokenizer"]
        == json.loads(trained.backend_tokenizer.to_str())["pre_tokenizer"]
    )
    assert base_tokenizer.decode(base_tokenizer(TEXTS[3])["input_ids"]) == TEXTS[3]


def test_digits_are_single_tokens(base_tokenizer):
    for number in ["0", "7", "42", "198", "1234567890", "00"]:
        tokens = base_tokenizer.convert_ids_to_tokens(
            base_tokenizer(number)["input_ids"]
        )
        assert tokens == list(number)
    tokens = base_tokenizer.convert_ids_to_tokens(base_tokenizer("31+69=")["input_ids"])
    assert tokens == ["3", "1", "+", "6", "9", "="]


def test_special_tokens(base_tokenizer):
    assert base_tokenizer.eos_token == EOS_TOKEN
    assert base_tokenizer.pad_token == "<|endoftext|>"
    assert base_tokenizer.pad_token_id != base_tokenizer.eos_token_id
    assert len(base_tokenizer("<|im_start|>")["input_ids"]) == 1


def test_chat_template_renders(base_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+2="},
        {"role": "assistant", "content": "3"},
    ]
    assert base_tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n1+2=<|im_end|>\n"
        "<|im_start|>assistant\n3<|im_end|>\n"
    )
    assert base_tokenizer.apply_chat_template(
        messages[1:2], tokenize=False, add_generation_prompt=True
    ) == ("<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_supports_trl_loss_masks(base_tokenizer):
    from trl.chat_template_utils import (
        has_generation_markers,
        is_chat_template_stop_token_trained,
    )

    # assistant_only_loss: the answer and its <|im_end|> are in the mask, nothing else.
    assert has_generation_markers(base_tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(base_tokenizer)
    messages = [
        {"role": "user", "content": "40+2="},
        {"role": "assistant", "content": "42"},
    ]
    out = base_tokenizer.apply_chat_template(
        messages, return_assistant_tokens_mask=True, return_dict=True
    )
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert base_tokenizer.convert_ids_to_tokens(masked) == ["4", "2", EOS_TOKEN]
    # completion-only loss: the prompt with its generation prompt is a token prefix of the whole.
    prompt_ids = base_tokenizer.apply_chat_template(
        messages[:1], add_generation_prompt=True, return_dict=True
    )
    full_ids = out["input_ids"]
    assert full_ids[: len(prompt_ids["input_ids"])] == prompt_ids["input_ids"]


def test_trl_completion_only_labels(tiny_base_path, base_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from align.data.synthetic import build_synthetic

    data = build_synthetic("arithmetic", "sft", "train", n_train=8)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_base_path),
        args=args,
        train_dataset=data,
        processing_class=base_tokenizer,
    )
    for row, source in zip(trainer.train_dataset, data):
        trained = [
            t for t, label in zip(row["input_ids"], row["labels"]) if label != -100
        ]
        answer = source["completion"][0]["content"]
        # The answer, the end-of-turn token (so the model learns to stop) and ChatML's newline
        # after it (harmless: generation stops at <|im_end|>); none of the prompt.
        assert base_tokenizer.convert_ids_to_tokens(trained) == list(answer) + [
            EOS_TOKEN,
            "Ċ",
        ]


def test_pretokenised_warmup_data_is_what_trl_makes_of_the_rows(tiny_base_path, base_tokenizer,
                                                                tmp_path):
    """The warm-up hands trl its rows tokenised in two batched calls; trl must train on exactly the
    ids and labels it makes itself from the conversational rows."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from align.data.synthetic import build_synthetic
    from align.models.tiny import pretokenise

    data = build_synthetic("arithmetic", "sft", "train", n_train=300)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1,
                     completion_only_loss=True, max_length=64)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_path)
    made = [SFTTrainer(model=model, args=args, train_dataset=rows,
                       processing_class=base_tokenizer).train_dataset
            for rows in (data, pretokenise(base_tokenizer, data))]
    assert len(made[0]) == len(made[1]) == len(data)
    for column in ("input_ids", "labels"):
        assert made[0][column] == made[1][column]
    # and the rows differ among themselves (a wrong join would not pass as equal by accident)
    assert len({tuple(ids) for ids in made[1]["input_ids"]}) > 250


def test_warmup_trains_without_checkpointing_to_the_same_weights(tiny_base_path, base_tokenizer,
                                                                tmp_path):
    """trl checkpoints activations by default; the warm-ups turn it off (it only recomputes the
    forward of a model this size) and must train to the very weights trl's default does."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from align.data.synthetic import build_synthetic
    from align.models.tiny import pretokenise, warmup_config

    data = pretokenise(base_tokenizer, build_synthetic("arithmetic", "sft", "train", n_train=300))
    options = {"max_steps": 3, "completion_only_loss": True, "max_length": 64}
    trained = {}
    trl_default = SFTConfig(output_dir=str(tmp_path), use_cpu=True,
                            bf16=False).activation_checkpointing
    assert trl_default is True
    as_trl = warmup_config(tmp_path / "a", **options)
    as_trl.activation_checkpointing = as_trl.gradient_checkpointing = trl_default
    for name, args in (("trl", as_trl), ("warm-up", warmup_config(tmp_path / "b", **options))):
        model = AutoModelForCausalLM.from_pretrained(tiny_base_path)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                             processing_class=base_tokenizer)
        loss = trainer.train().training_loss
        trained[name] = (trainer.model.is_gradient_checkpointing, loss,
                         {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    assert trained["trl"][0] is True and trained["warm-up"][0] is False
    assert trained["trl"][1] == trained["warm-up"][1]
    before = AutoModelForCausalLM.from_pretrained(tiny_base_path).state_dict()
    for key, weights in trained["warm-up"][2].items():
        assert torch.equal(weights, trained["trl"][2][key]), key
    assert any(not torch.equal(w, before[k]) for k, w in trained["warm-up"][2].items())


def test_base_model_loads(tiny_base_path, base_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_path)
    assert model.config.vocab_size == len(base_tokenizer)
    assert model.config.tie_word_embeddings
    assert model.generation_config.eos_token_id == base_tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == base_tokenizer.pad_token_id
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    logits = model(**base_tokenizer(["1+1="], return_tensors="pt")).logits
    assert logits.shape[-1] == len(base_tokenizer) and torch.isfinite(logits).all()


def test_base_build_is_deterministic(tiny_base_path, tmp_path):
    from align.models.tiny import _build_base

    _build_base(tmp_path)
    for name in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "chat_template.jinja",
    ]:
        assert (tmp_path / name).read_bytes() == (tiny_base_path / name).read_bytes(), (
            name
        )


def _eval_prompts(n=None):
    from align.data.synthetic import build_synthetic

    ds = build_synthetic("arithmetic", "prompt", "eval")
    if n is not None:
        ds = ds.select(range(n))
    return list(ds["prompt"]), list(ds["solution"])


def test_generate_completions_shape_and_determinism(sft_model_and_tokenizer):
    from align.measure.generation import generate_completions

    model, tokenizer = sft_model_and_tokenizer
    prompts, _ = _eval_prompts(10)
    model.train()
    tokenizer.padding_side = "right"
    first = generate_completions(
        model, tokenizer, prompts, max_new_tokens=5, batch_size=3
    )
    assert len(first) == len(prompts) and all(isinstance(c, str) for c in first)
    assert model.training and tokenizer.padding_side == "right"  # restored
    # Batch size (so padding) must not change greedy results.
    assert (
        generate_completions(model, tokenizer, prompts, max_new_tokens=5, batch_size=64)
        == first
    )
    assert generate_completions(model, tokenizer, [], max_new_tokens=5) == []


def test_generate_completions_sampling_with_seed(sft_model_and_tokenizer):
    from align.measure.generation import generate_completions

    model, tokenizer = sft_model_and_tokenizer
    prompts, _ = _eval_prompts(32)
    kwargs = {"max_new_tokens": 5, "do_sample": True, "temperature": 1.5}
    a = generate_completions(model, tokenizer, prompts, seed=1, **kwargs)
    assert a == generate_completions(model, tokenizer, prompts, seed=1, **kwargs)
    assert a != generate_completions(model, tokenizer, prompts, seed=2, **kwargs)


def test_generate_completions_string_prompts(sft_model_and_tokenizer):
    from align.measure.generation import generate_completions

    model, tokenizer = sft_model_and_tokenizer
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+3="}],
        tokenize=False,
        add_generation_prompt=True,
    )
    as_text = generate_completions(model, tokenizer, [text], max_new_tokens=5)
    as_chat = generate_completions(
        model, tokenizer, [[{"role": "user", "content": "2+3="}]], max_new_tokens=5
    )
    assert as_text == as_chat
    with pytest.raises(TypeError, match="mix"):
        generate_completions(
            model,
            tokenizer,
            [text, [{"role": "user", "content": "1+1="}]],
            max_new_tokens=5,
        )


def test_generate_completions_with_peft(sft_model_and_tokenizer):
    from peft import LoraConfig, get_peft_model

    from align.measure.generation import generate_completions

    model, tokenizer = sft_model_and_tokenizer
    prompts, _ = _eval_prompts(8)
    plain = generate_completions(model, tokenizer, prompts, max_new_tokens=5)
    # LoRA's B matrices start at zero, so the wrapped model must generate exactly the same.
    wrapped = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    try:
        assert (
            generate_completions(wrapped, tokenizer, prompts, max_new_tokens=5) == plain
        )
    finally:
        wrapped.unload()


def test_sft_warmup_reached_target(tiny_sft_path, sft_model_and_tokenizer):
    from align.measure.generation import generate_completions

    summary = json.loads((tiny_sft_path / "warmup.json").read_text())
    assert (
        summary["reached_target"] and summary["final_accuracy"] >= SFT_TARGET_ACCURACY
    )
    assert summary["steps"] == summary["curve"][-1]["step"]
    model, tokenizer = sft_model_and_tokenizer
    prompts, solutions = _eval_prompts()
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens=5)
    accuracy = sum(c == s for c, s in zip(completions, solutions)) / len(solutions)
    assert accuracy == summary["final_accuracy"]


def test_sft90_warmup_stops_at_its_own_target_from_the_base_model(tiny_base_path):
    """The GRPO default's start: the same recipe from the base model (not from "sft"), a shorter
    schedule, stopped at 0.9; its accuracy is what the saved model scores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.measure.generation import generate_completions

    path = tiny_model_path("sft90")
    assert path.parent == tiny_base_path.parent and resolve_model_path("tiny://sft90") == str(path)
    summary = json.loads((path / "warmup.json").read_text())
    target, max_steps = SFT_RECIPES["sft90"]
    assert (summary["target_accuracy"], summary["max_steps"]) == (target, max_steps) == (0.9, 800)
    assert summary["reached_target"] and summary["final_accuracy"] >= 0.9
    assert summary["steps"] < max_steps
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prompts, solutions = _eval_prompts()
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens=5)
    assert sum(c == s for c, s in zip(completions, solutions)) / len(solutions) == summary[
        "final_accuracy"]
