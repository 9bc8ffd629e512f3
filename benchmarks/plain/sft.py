"""Plain trl SFT doing what `python align/sft.py` does, for benchmarks/run.py to compare.

    PYTHONPATH=benchmarks:benchmarks/plain python benchmarks/plain/sft.py --out DIR \
        --model PATH [--data FILE.jsonl] [--peft lora] [max_steps=20 ...]
"""

import torch
from common import SEED, cpu_args, lora_config, parse_args, train_data, trainer_fields
from timing import Timing
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

opts = parse_args("sft", __doc__)
args = SFTConfig(**trainer_fields("sft", opts.fields), **cpu_args(opts))
set_seed(SEED)
tokenizer = AutoTokenizer.from_pretrained(opts.model)
model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32,
                                             attn_implementation=opts.attn)
trainer = SFTTrainer(model=model, args=args,
                     train_dataset=train_data(opts.data, "sft", opts.max_samples),
                     processing_class=tokenizer,
                     peft_config=lora_config() if opts.peft == "lora" else None,
                     callbacks=[Timing()])
trainer.train()
trainer.save_model(str(opts.out / "final"))
