"""Reward-model training with trl's RewardTrainer: a sequence classifier learns to score the
chosen answer of each preference pair above the rejected one (Bradley-Terry loss).

    python align/rm.py                                    # tiny SFT model + LoRA, synthetic pairs
    python align/rm.py data=local data.path=pairs.jsonl trainer.center_rewards_coefficient=0.01
    accelerate launch --config_file launch/zero2.yaml align/rm.py model=qwen2.5-0.5b-instruct ...
    python align/grpo.py rewards=none +rewards.rm.fn=reward_model +rewards.rm.kwargs.model=RUN_DIR

Data (align/data/): DPO's prompt/chosen/rejected pairs, plain or conversational. The model is
the model group's checkpoint loaded as a sequence classifier with one output
(the stage sets model.kind=sequence_classification; its score head is new). With an
adapter (peft=lora, the default) peft trains the score head in full beside the LoRA weights and
saves both in final/. Held-out figures: pairwise accuracy (the share of held-out pairs scored
chosen > rejected) and the mean margin, before and after training; an RM does not generate, so no
task accuracy. The run folder (or its final/) is a `reward_model` reward for GRPO as it is.
"""

from omegaconf import DictConfig


def run(cfg: DictConfig) -> dict:
    from align.data import load_stage_data
    from align.models import build_model
    from align.run.job import Job

    job = Job.start(cfg, "rm")  # every key and value is checked here, before anything loads
    from trl import RewardTrainer  # heavy: imported once the config is known to be valid

    spec = job.spec
    data = load_stage_data(spec.data, "rm", vision=spec.model.is_vision)
    job.begin(data)
    model, tokenizer, peft_config = build_model(spec.model, spec.peft)
    job.measure("before", model, tokenizer, None, pairs=data.eval)
    trainer = RewardTrainer(model=model, args=job.args, train_dataset=data.train,
                            eval_dataset=job.trl_eval_dataset(data), processing_class=tokenizer,
                            peft_config=peft_config, callbacks=job.callbacks(tokenizer))
    job.train(trainer)
    job.measure("after", trainer.model, tokenizer, None, pairs=data.eval)
    return job.save(trainer)


if __name__ == "__main__":
    from align.run.cli import main

    main("rm", run)
