"""A plain trl pipeline for the a+b task, written by hand from trl's documented recipes: the
control that benchmarks/time_to_accuracy.py times align's default against.

    python benchmarks/plain/pipeline.py --out DIR [--seed 0] [--grpo-steps 600]

Everything is its own: a byte-level BPE tokenizer trained here (every digit its own token), a
Qwen2 model (hidden 128, intermediate 512, 2 layers, 4 heads, tied embeddings) initialised from
`--seed`, SFT with trl's SFTTrainer (prompt/completion rows, so the loss is on the completion
only; batch 64, lr 2e-3, linear schedule, 30 warm-up steps) until greedy held-out accuracy
reaches 0.5 (checked every 50 steps; `--sft-target` moves it), then trl's GRPOTrainer (8
generations, batch 64, max_completion_length 5, lr 5e-5 constant, temperature 0.7, beta 0,
loss dapo, an exact-answer reward). Only the problems come from align: the same a+b training pairs and the same 200
held-out problems as `python align/grpo.py` (align.data.synthetic), so both are measured on one
held-out set.

Writes DIR/pipeline.json: the held-out curve as (phase, step, seconds, accuracy), seconds since
the process started with the held-out measurements left out (as align's `train_s` leaves them
out), the SFT stopping step, and the whole wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

START = time.perf_counter()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    TrainerCallback,
    set_seed,
)
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

from align.data.synthetic import arithmetic_pairs, arithmetic_prompt  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class Clock:
    """Seconds since the process started, the held-out measurements left out."""

    def __init__(self):
        self.excluded = 0.0

    def now(self) -> float:
        return time.perf_counter() - START - self.excluded


def build_tokenizer(train: list[tuple[int, int]]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [f"user\n{arithmetic_prompt(a, b)}\nassistant\n{a + b}\n" for a, b in train]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=280, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", chat_template=TEMPLATE,
                                   padding_side="left")


def accuracy(model, tokenizer, heldout: list[tuple[int, int]]) -> float:
    model.eval()
    right = 0
    for i in range(0, len(heldout), 100):
        chunk = heldout[i:i + 100]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": arithmetic_prompt(a, b)}],
                                               tokenize=False, add_generation_prompt=True)
                 for a, b in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=5, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
        for (a, b), ids in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
            right += tokenizer.decode(ids, skip_special_tokens=True).strip() == str(a + b)
    model.train()
    return right / len(heldout)


class Heldout(TrainerCallback):
    def __init__(self, phase, tokenizer, heldout, clock, curve, every=50, stop_at=None):
        self.phase, self.tokenizer, self.heldout = phase, tokenizer, heldout
        self.clock, self.curve, self.every, self.stop_at = clock, curve, every, stop_at

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        began, seconds = time.perf_counter(), self.clock.now()
        acc = accuracy(model, self.tokenizer, self.heldout)
        self.clock.excluded += time.perf_counter() - began
        self.curve.append((self.phase, state.global_step, round(seconds, 2), acc))
        print(f"{self.phase} step {state.global_step}: held-out {acc:.3f} at {seconds:.1f} s",
              flush=True)
        if self.stop_at is not None and acc >= self.stop_at:
            control.should_training_stop = True


def exact(completions, solution, **kwargs):
    return [float(c[-1]["content"].strip() == str(s)) for c, s in zip(completions, solution)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grpo-steps", type=int, default=600)
    parser.add_argument("--sft-max-steps", type=int, default=1500)
    parser.add_argument("--eval-steps", type=int, default=50, help="held-out every N steps")
    parser.add_argument("--sft-target", type=float, default=0.5, help=(
        "stop the SFT warm-up at this held-out accuracy (the control's recipe: 0.5)"))
    parser.add_argument("--save-sft", type=Path, default=None, help=(
        "also save the SFT warm-up model and tokenizer here (e.g. to start align's GRPO from "
        "it: python align/grpo.py model.name_or_path=DIR)"))
    parser.add_argument("--init", type=Path, default=None, help=(
        "skip the SFT warm-up and start GRPO from this saved model and tokenizer (e.g. align's "
        "tiny SFT model), to tell the model's part from the pipeline's"))
    parser.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2", help=(
        "the model class (same sizes); llama is the class of align's tiny model"))
    parser.add_argument("--tokenizer-from", type=Path, default=None, help=(
        "use this saved tokenizer instead of training one (e.g. align's tiny model's)"))
    parser.add_argument("--no-checkpointing", action="store_true", help=(
        "turn off activation checkpointing, which trl's SFTConfig and GRPOConfig turn on by "
        "default (the recipe keeps it on), to tell that setting's part in the timing"))
    opts = parser.parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    clock, curve = Clock(), []
    set_seed(opts.seed)
    train, heldout = arithmetic_pairs("train"), arithmetic_pairs("eval")
    if opts.tokenizer_from is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(opts.tokenizer_from, padding_side="left")
    else:
        tokenizer = build_tokenizer(train)
    config_class, model_class = ((Qwen2Config, Qwen2ForCausalLM) if opts.arch == "qwen2"
                                 else (LlamaConfig, LlamaForCausalLM))
    model = model_class(config_class(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id))

    def user(a, b):
        return [{"role": "user", "content": arithmetic_prompt(a, b)}]

    sft_rows = Dataset.from_list([{"prompt": user(a, b), "completion":
                                   [{"role": "assistant", "content": str(a + b)}]}
                                  for a, b in train])
    common = {"report_to": [], "save_strategy": "no", "logging_steps": opts.eval_steps,
              "seed": opts.seed,
              "bf16": False, "disable_tqdm": True,
              **({"activation_checkpointing": False} if opts.no_checkpointing else {})}
    sft = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=sft_rows,
                     args=SFTConfig(output_dir=str(opts.out / "sft"), max_steps=opts.sft_max_steps,
                                    per_device_train_batch_size=64, learning_rate=2e-3,
                                    lr_scheduler_type="linear", warmup_steps=30, **common),
                     callbacks=[Heldout("sft", tokenizer, heldout, clock, curve, opts.eval_steps,
                                                stop_at=opts.sft_target)])
    if opts.init is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(opts.init, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(opts.init)
        sft.model, sft.state.global_step = model, 0
    else:
        sft.train()
    sft_steps = sft.state.global_step
    if opts.save_sft is not None:
        sft.save_model(str(opts.save_sft))
        tokenizer.save_pretrained(str(opts.save_sft))

    prompts = Dataset.from_list([{"prompt": user(a, b), "solution": str(a + b)} for a, b in train])
    began = time.perf_counter()
    start_acc = accuracy(sft.model, tokenizer, heldout)
    clock.excluded += time.perf_counter() - began
    curve.append(("grpo", 0, round(clock.now(), 2), start_acc))
    grpo = GRPOTrainer(model=sft.model, reward_funcs=[exact], train_dataset=prompts,
                       processing_class=tokenizer,
                       args=GRPOConfig(output_dir=str(opts.out / "grpo"), max_steps=opts.grpo_steps,
                                       per_device_train_batch_size=64, num_generations=8,
                                       max_completion_length=5, learning_rate=5e-5,
                                       lr_scheduler_type="constant", temperature=0.7, beta=0.0,
                                       loss_type="dapo", **common),
                       callbacks=[Heldout("grpo", tokenizer, heldout, clock, curve, opts.eval_steps)])
    grpo.train()
    result = {"seed": opts.seed, "sft_steps": sft_steps, "curve": curve,
              "activation_checkpointing": bool(grpo.args.activation_checkpointing
                                               or sft.args.activation_checkpointing),
              "before": start_acc, "after": curve[-1][3],
              "wall_s": round(time.perf_counter() - START, 1),
              "clock_s": round(clock.now(), 2)}
    (opts.out / "pipeline.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))


if __name__ == "__main__":
    main()
