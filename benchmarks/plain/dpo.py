"""Plain trl DPO doing what `python align/dpo.py` does, for benchmarks/run.py to compare.

    PYTHONPATH=benchmarks:benchmarks/plain python benchmarks/plain/dpo.py --out DIR \
        --model PATH [--peft lora] [--ref adapter|copy] [max_steps=20 ...]

The reference model: with --peft none trl loads a frozen copy itself; with --peft lora it is
the base with the adapter disabled (--ref adapter, align's way) or a second copy loaded here
and passed as ref_model (--ref copy). `precompute_ref_log_probs=true` computes the reference
log-probs of every training pair before the first step instead.
"""

import torch
from common import SEED, cpu_args, lora_config, parse_args, train_data, trainer_fields
from timing import Timing
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer

opts = parse_args("dpo", __doc__)
args = DPOConfig(**trainer_fields("dpo", opts.fields), **cpu_args(opts))
set_seed(SEED)
tokenizer = AutoTokenizer.from_pretrained(opts.model)


def load():
    return AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32,
                                                attn_implementation=opts.attn)


model = load()
ref_model = load() if opts.peft == "lora" and opts.ref == "copy" else None
trainer = DPOTrainer(model=model, ref_model=ref_model, args=args,
                     train_dataset=train_data(opts.data, "preference", opts.max_samples),
                     processing_class=tokenizer,
                     peft_config=lora_config() if opts.peft == "lora" else None,
                     callbacks=[Timing()])
trainer.train()
trainer.save_model(str(opts.out / "final"))
