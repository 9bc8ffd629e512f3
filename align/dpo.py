"""Direct preference optimisation with trl's DPOTrainer (every trl loss type).

    python align/dpo.py                                   # tiny SFT model + LoRA, synthetic pairs
    python align/dpo.py model=llama-3.2-1b-instruct data=ultrafeedback trainer.beta=0.05
    accelerate launch --config_file launch/zero2.yaml align/dpo.py experiment=...
    python align/dpo.py -m trainer.beta=0.05,0.1,0.3
    python align/dpo.py experiment=iterative_dpo          # on-policy rounds (align/run/rounds.py)

With an adapter (peft=lora, the default) the reference model is the base model with the
adapter disabled: no second copy in memory. With peft=none trl loads a frozen reference copy.
With trainer.precompute_ref_log_probs=true the reference log-probs are computed before
training and kept in align's cache (`$ALIGN_CACHE/ref_logps`, align/trainers/dpo.py): every later
run and sweep candidate with the same reference weights, rows and tokenisation reads them.
Data: prompt/chosen/rejected, plain or conversational (align/data/). Held-out figures
include the preference accuracy on the eval pairs (chosen answer given a higher
log-probability than the rejected one) next to greedy task accuracy.
"""

from omegaconf import DictConfig


def run(cfg: DictConfig) -> dict:
    from align.data import load_stage_data
    from align.models import build_model
    from align.run.job import Job

    job = Job.start(cfg, "dpo")
    if job.spec.on_policy.enabled:  # iterative on-policy DPO: rounds of sample, score, pair, train
        from align.run.rounds import run_rounds

        return run_rounds(job)
    from align.trainers.dpo import DPOTrainer  # heavy (trl): once the config is known valid

    spec = job.spec
    data = load_stage_data(spec.data, "dpo", vision=spec.model.is_vision)
    job.begin(data)
    model, tokenizer, peft_config = build_model(spec.model, spec.peft)
    job.measure("before", model, tokenizer, data.heldout, pairs=data.eval)
    trainer = DPOTrainer(model=model, ref_model=None, args=job.args, train_dataset=data.train,
                         eval_dataset=job.trl_eval_dataset(data), processing_class=tokenizer,
                         peft_config=peft_config,
                         callbacks=job.callbacks(tokenizer, data.heldout))
    if trainer.ref_logps:
        job.metrics["reference_logps"] = trainer.ref_logps
    job.train(trainer)
    job.measure("after", trainer.model, tokenizer, data.heldout, pairs=data.eval)
    return job.save(trainer)


if __name__ == "__main__":
    from align.run.cli import main

    main("dpo", run)
