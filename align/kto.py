"""Kahneman-Tversky optimisation with trl's KTOTrainer: learns from single completions
labelled desirable or not, no pairs needed.

    python align/kto.py                                   # tiny SFT model + LoRA, synthetic rows
    python align/kto.py data=local data.path=feedback.jsonl trainer.desirable_weight=1.33
    accelerate launch --config_file launch/zero2.yaml align/kto.py model=qwen2.5-0.5b-instruct ...
    python align/kto.py -m trainer.beta=0.05,0.1,0.3

Data (align/data/): `prompt` / `completion` / `label` rows (label a boolean: true for a
desirable completion), plain or conversational; or DPO's prompt/chosen/rejected pairs,
unpacked into two rows each (chosen -> true, rejected -> false), so every DPO data set trains
KTO as it is. With an adapter (peft=lora, the default) the reference model is the base with the
adapter disabled. Held-out figures: greedy task accuracy before and after training.
"""

from omegaconf import DictConfig


def run(cfg: DictConfig) -> dict:
    from align.data import load_stage_data
    from align.models import build_model
    from align.run.job import Job

    job = Job.start(cfg, "kto")  # every key and value is checked here, before anything loads
    from trl import KTOTrainer  # heavy: imported once the config is known to be valid

    spec = job.spec
    data = load_stage_data(spec.data, "kto", vision=spec.model.is_vision)
    job.begin(data)
    model, tokenizer, peft_config = build_model(spec.model, spec.peft)
    job.measure("before", model, tokenizer, data.heldout)
    trainer = KTOTrainer(model=model, ref_model=None, args=job.args, train_dataset=data.train,
                         eval_dataset=job.trl_eval_dataset(data), processing_class=tokenizer,
                         peft_config=peft_config,
                         callbacks=job.callbacks(tokenizer, data.heldout))
    job.train(trainer)
    job.measure("after", trainer.model, tokenizer, data.heldout)
    return job.save(trainer)


if __name__ == "__main__":
    from align.run.cli import main

    main("kto", run)
