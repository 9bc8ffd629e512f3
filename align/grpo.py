"""Group relative policy optimisation with trl's GRPOTrainer and pluggable rewards.

    python align/grpo.py                                  # the embedded default, 2 CPU cores
    python align/grpo.py rewards.accuracy.weight=2 +rewards.mine.fn=my_pkg.rewards:score
    python align/grpo.py model=qwen2.5-1.5b-instruct data=gsm8k rewards=math trainer=grpo_gpu
    accelerate launch --config_file launch/zero2.yaml align/grpo.py experiment=...
    python align/grpo.py -m trainer.learning_rate=3e-5,1e-4

Rollouts use HF generate by default; `trainer.use_vllm=true trainer.vllm_mode=colocate|server`
switches to vLLM (the `vllm` extra). Rewards come from the `rewards:` section: registered
names or import paths, each with a weight; dataset columns reach them as keyword arguments.
Tools the policy may call come from the `tools:` section (`tools=calculator`, or
`+tools.mine.fn=my_pkg.tools:fn`), a multi-turn environment from `environment=pkg.mod:Env`
(docs/agents.md); `experiment=tiny_tools` is the tool-use task on the tiny model.
"""

from omegaconf import DictConfig


def run(cfg: DictConfig) -> dict:
    from align.data import load_stage_data
    from align.models import build_model
    from align.run.job import Job

    job = Job.start(cfg, "grpo")
    # heavy (trl): imported once the config is known to be valid
    from align.trainers.grpo import GRPOTrainer  # trl's, plus trainer.dynamic_sampling

    spec = job.spec
    data = load_stage_data(spec.data, "grpo", vision=spec.model.is_vision)
    job.begin(data)
    model, tokenizer, peft_config = build_model(spec.model, spec.peft)
    job.measure("before", model, tokenizer, data.heldout)
    environment = spec.environment
    trainer = GRPOTrainer(model=model, reward_funcs=list(spec.rewards), args=job.args,
                          train_dataset=data.train, eval_dataset=job.trl_eval_dataset(data),
                          processing_class=tokenizer, peft_config=peft_config,
                          tools=list(spec.tools) or None,
                          environment_factory=dict(environment) if hasattr(environment, "keys")
                          else environment,
                          callbacks=job.callbacks(tokenizer, data.heldout))
    job.train(trainer)
    job.measure("after", trainer.model, tokenizer, data.heldout)
    return job.save(trainer)


if __name__ == "__main__":
    from align.run.cli import main

    main("grpo", run)
