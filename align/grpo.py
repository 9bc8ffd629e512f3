"""Group relative policy optimisation with trl's GRPOTrainer and pluggable rewards.

    python align/grpo.py                                  # the embedded default, 2 CPU cores
    python align/grpo.py rewards.accuracy.weight=2 +rewards.mine.fn=my_pkg.rewards:score
    python align/grpo.py model=qwen2.5-1.5b-instruct data=gsm8k rewards=math trainer=grpo_gpu
    accelerate launch --config_file launch/zero2.yaml align/grpo.py experiment=...
    python align/grpo.py -m trainer.learning_rate=3e-5,1e-4

Rollouts use HF generate by default; `trainer.use_vllm=true trainer.vllm_mode=colocate|server`
switches to vLLM (the `vllm` extra). Rewards come from the `rewards:` section: registered
names or import paths, each with a weight; dataset columns reach them as keyword arguments.
"""

from omegaconf import DictConfig


def run(cfg: DictConfig) -> dict:
    from align.data import load_stage_data
    from align.models import build_model
    from align.run.job import Job
    from rewards import build_rewards

    job = Job.start(cfg, "grpo")
    from trl import GRPOTrainer  # heavy: imported once the config is known to be valid

    data = load_stage_data(job.data, "grpo", vision=job.model.is_vision)
    reward_funcs, _ = build_rewards(job.cfg["rewards"])  # weights are in job.args
    job.begin()
    model, tokenizer, plan = build_model(job.model, job.cfg["peft"])
    job.measure("before", model, tokenizer, data.heldout)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=job.args,
                          train_dataset=data.train, eval_dataset=job.trl_eval_dataset(data),
                          processing_class=tokenizer, peft_config=plan.peft_config,
                          callbacks=job.callbacks(tokenizer, data.heldout))
    job.train(trainer)
    job.measure("after", trainer.model, tokenizer, data.heldout)
    return job.save(trainer)


if __name__ == "__main__":
    from align.run.cli import main

    main("grpo", run)
