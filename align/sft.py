"""Supervised fine-tuning with trl's SFTTrainer.

    python align/sft.py                                   # tiny model, synthetic task, CPU
    python align/sft.py model=qwen2.5-0.5b-instruct peft=lora data=my_chat data.path=chat.jsonl
    accelerate launch --config_file launch/ddp.yaml align/sft.py experiment=...
    python align/sft.py -m peft=none,lora                 # a sweep, one run per value

Data: messages, prompt/completion, text, ShareGPT/LLaVA conversations or Alpaca rows
(align/data/). The run folder gets config.yaml, final/ and metrics.json (align/run/job.py).
"""

from omegaconf import DictConfig


def run(cfg: DictConfig) -> dict:
    from align.data import load_stage_data
    from align.data.load import check_tool_turns_masked
    from align.models import build_model
    from align.run.job import Job

    job = Job.start(cfg, "sft")  # every key and value is checked here, before anything loads
    from trl import SFTTrainer  # heavy: imported once the config is known to be valid

    spec = job.spec
    data = load_stage_data(spec.data, "sft", vision=spec.model.is_vision)
    check_tool_turns_masked(data.train, spec.data.path, spec.trainer.assistant_only_loss)
    job.begin(data)
    model, tokenizer, peft_config = build_model(spec.model, spec.peft)
    job.measure("before", model, tokenizer, data.heldout)
    trainer = SFTTrainer(model=model, args=job.args, train_dataset=data.train,
                         eval_dataset=job.trl_eval_dataset(data), processing_class=tokenizer,
                         peft_config=peft_config,
                         callbacks=job.callbacks(tokenizer, data.heldout))
    job.measure_loss("before", trainer, data.eval)
    job.train(trainer)
    job.measure("after", trainer.model, tokenizer, data.heldout)
    job.measure_loss("after", trainer, data.eval)
    return job.save(trainer)


if __name__ == "__main__":
    from align.run.cli import main

    main("sft", run)
