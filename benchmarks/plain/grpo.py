"""Plain trl GRPO doing what `python align/grpo.py` does, for benchmarks/run.py to compare.

    PYTHONPATH=benchmarks:benchmarks/plain python benchmarks/plain/grpo.py --out DIR \
        --model PATH [max_steps=20 num_generations=8 ...]

Reward: align's exact-answer `accuracy` (rewards/math.py, conf/rewards/arithmetic.yaml), weight 1.
"""

import torch
from common import SEED, cpu_args, lora_config, parse_args, train_data, trainer_fields
from timing import Timing
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import GRPOConfig, GRPOTrainer

from rewards.math import accuracy

opts = parse_args("grpo", __doc__)
args = GRPOConfig(**trainer_fields("grpo", opts.fields), **cpu_args(opts), reward_weights=[1.0])
set_seed(SEED)
tokenizer = AutoTokenizer.from_pretrained(opts.model)
model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32,
                                             attn_implementation=opts.attn)
trainer = GRPOTrainer(model=model, reward_funcs=[accuracy], args=args,
                      train_dataset=train_data(opts.data, "prompt", opts.max_samples),
                      processing_class=tokenizer,
                      peft_config=lora_config() if opts.peft == "lora" else None,
                      callbacks=[Timing()])
trainer.train()
trainer.save_model(str(opts.out / "final"))
