"""Each stage trains for real (trl on the tiny model, CPU) and leaves a usable run folder."""

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from peft import PeftModel
from transformers import AutoModelForCausalLM

from align import dpo, grpo, sft
from align.errors import ConfigError
from align.models.tiny import resolve_model_path
from align.run.conf import CONF_DIR, register

register()
RUNS = {"sft": sft.run, "dpo": dpo.run, "grpo": grpo.run}
# A few steps with small batches: enough for every trainable weight to move.
FAST = {
    "sft": ["trainer.per_device_train_batch_size=8"],
    "dpo": ["trainer.per_device_train_batch_size=8"],
    "grpo": ["trainer.per_device_train_batch_size=16", "trainer.num_generations=4"],
}


def compose_run(stage, tmp_path, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[
            "trainer.max_steps=3", "trainer.logging_steps=1", "trainer.warmup_steps=0", "trainer.save_strategy=no",
            "logger=none", "heldout.max_samples=16", f"output_dir={tmp_path}",
            "callbacks=[param_check:ParamChangeCallback]", *FAST[stage], *overrides,
        ])


@pytest.mark.parametrize("peft", ["none", "lora"])
@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_stage_trains_every_trainable_weight(stage, peft, tmp_path):
    cfg = compose_run(stage, tmp_path, f"peft={peft}")
    metrics = RUNS[stage](cfg)

    report = json.loads((tmp_path / "param_changes.json").read_text())
    assert report["trainable"], "nothing was trainable"
    assert report["trainable_unchanged"] == []
    assert report["frozen_changed"] == []
    if peft == "lora":
        assert all("lora_" in name for name in report["trainable"])
        assert len(report["trainable"]) < report["total"]  # the base stayed frozen
    else:
        assert len(report["trainable"]) == report["total"]

    assert math.isfinite(metrics["train"]["final_loss"])
    assert metrics["train"]["global_step"] == 3
    assert 0.0 <= metrics["heldout_after"]["accuracy"] <= 1.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["train"]["global_step"] == 3
    assert (tmp_path / "config.yaml").read_text().startswith("model:")

    # The final model/adapter loads with plain transformers/peft.
    base_path = resolve_model_path(cfg.model.name_or_path)
    if peft == "lora":
        base = AutoModelForCausalLM.from_pretrained(base_path)
        model = PeftModel.from_pretrained(base, tmp_path / "final")
        assert model.peft_config["default"].peft_type.value == "LORA"
    else:
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
        base = AutoModelForCausalLM.from_pretrained(base_path)
        assert not torch.equal(model.lm_head.weight, base.lm_head.weight)


def test_dpo_with_adapter_keeps_no_reference_copy(tmp_path):
    """With an adapter, trl's DPO uses the base with the adapter disabled as the reference."""
    from trl import DPOTrainer

    seen = {}
    original = DPOTrainer.train

    def spy(self, *args, **kwargs):  # observe the real trainer, change nothing
        seen["ref_model"] = self.ref_model
        return original(self, *args, **kwargs)

    DPOTrainer.train = spy
    try:
        dpo.run(compose_run("dpo", tmp_path, "peft=lora", "callbacks=[]"))
    finally:
        DPOTrainer.train = original
    assert "ref_model" in seen and seen["ref_model"] is None


@pytest.mark.parametrize("peft", ["dora", "rslora", "pissa", "loftq", "qlora", "prompt_tuning",
                                  "p_tuning"])
def test_other_peft_methods_train(peft, tmp_path):
    if peft in ("loftq", "qlora"):
        pytest.importorskip("bitsandbytes", reason="the `quant` extra")
    if peft == "loftq" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="peft=loftq: .*CUDA device"):
            sft.run(compose_run("sft", tmp_path, f"peft={peft}"))
        return
    metrics = sft.run(compose_run("sft", tmp_path, f"peft={peft}"))
    report = json.loads((tmp_path / "param_changes.json").read_text())
    assert report["trainable"] and report["trainable_unchanged"] == []
    assert report["frozen_changed"] == []
    assert len(report["trainable"]) < report["total"]
    assert math.isfinite(metrics["train"]["final_loss"])
    assert (tmp_path / "final" / "adapter_config.json").exists()


REWARD_FILE = '''
import json, os

def score(completions, solution, difficulty, **kwargs):
    """Records what it was called with, and rewards short completions."""
    with open(os.environ["ALIGN_TEST_REWARD_LOG"], "a") as f:
        f.write(json.dumps({"keys": sorted(kwargs) + ["difficulty", "solution"],
                            "solution": list(solution), "difficulty": list(difficulty)}) + "\\n")
    return [1.0 / (1 + len(str(c))) for c in completions]
'''


def test_reward_from_a_file_outside_the_repo_gets_dataset_columns(tmp_path, monkeypatch):
    """A user's own reward, referenced by file path, receives the dataset's extra columns."""
    user = tmp_path / "user_code"
    user.mkdir()
    (user / "my_rewards.py").write_text(REWARD_FILE)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("ALIGN_TEST_REWARD_LOG", str(log))
    rows = [{"prompt": [{"role": "user", "content": f"{a}+{a}="}], "solution": str(2 * a),
             "difficulty": a % 3} for a in range(40)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))

    run_dir = tmp_path / "run"
    cfg = compose_run("grpo", run_dir, "data=local", f"data.path={data}",
                      f"+rewards.mine.fn={user / 'my_rewards.py'}:score", "+rewards.mine.weight=0.5",
                      "heldout.enabled=false", "callbacks=[]", "trainer.dynamic_sampling=false")
    grpo.run(cfg)

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 3  # one call per generation step (no extra dynamic-sampling rounds)
    by_solution = {r["solution"]: r["difficulty"] for r in rows}
    for call in calls:
        assert {"difficulty", "solution", "prompts", "completion_ids"} <= set(call["keys"])
        assert all(by_solution[s] == d for s, d in zip(call["solution"], call["difficulty"]))
    saved = (run_dir / "config.yaml").read_text()
    assert "my_rewards.py:score" in saved


def _strict_json(path):
    def no_nan(name):
        raise AssertionError(f"{path} holds {name}: not JSON")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_sft_measures_held_out_loss_and_leaves_out_what_it_cannot_score(tmp_path):
    """Chat data without verifiable answers: SFT's held-out figure is trl's loss on the rows held
    out by data.eval_fraction (it falls as the model learns them), and no accuracy is reported
    (it was NaN, written into metrics.json, which is then no JSON)."""
    rows = [{"messages": [{"role": "user", "content": f"Greet guest {i}."},
                          {"role": "assistant", "content": "Hello and welcome, dear guest!"}]}
            for i in range(64)]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_run("sft", tmp_path / "run", "data=local", f"data.path={data}",
                      "data.eval_fraction=0.25", "trainer.max_steps=8", "trainer.learning_rate=1e-3")
    sft.run(cfg)
    metrics = _strict_json(tmp_path / "run" / "metrics.json")
    before, after = metrics["heldout_before"], metrics["heldout_after"]
    assert before["loss/n"] == after["loss/n"] == 16
    assert after["loss"] < before["loss"] - 0.5, (before["loss"], after["loss"])
    assert "accuracy" not in before and "accuracy" not in after and after["accuracy/n"] == 0
    history = [json.loads(line) for line in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    assert not any(k.startswith(("eval_", "heldout_")) for h in history for k in h)


def test_trl_gets_the_eval_split_only_when_it_evaluates(tmp_path):
    # trl tokenises an eval_dataset up front; align hands it over when trl evaluates (and, for
    # SFT, for the held-out loss: see the test above), not otherwise.
    cfg = compose_run("sft", tmp_path, "trainer.eval_strategy=steps", "trainer.eval_steps=2",
                      "data.max_eval_samples=16")
    sft.run(cfg)
    history = [json.loads(line) for line in (tmp_path / "log_history.jsonl").read_text().splitlines()]
    assert any("eval_loss" in h for h in history)


def test_heldout_loss_is_the_models_loss_over_labelled_tokens(tiny_base_path):
    """The held-out loss: the model's own loss on the collated rows, weighted by their labelled
    tokens; rows with nothing labelled give no figure (NaN), not a zero."""
    from align.measure.metrics import heldout_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_base_path)
    rows = [{"input_ids": [1, 5, 6, 7, 8, 9]}, {"input_ids": [1, 9, 8, 7, 6, 5]}]

    def collate(batch, mask=False):
        ids = torch.tensor([r["input_ids"] for r in batch])
        return {"input_ids": ids, "labels": torch.full_like(ids, -100) if mask else ids.clone()}

    with torch.no_grad():
        ids = torch.tensor([r["input_ids"] for r in rows])
        expected = float(model(input_ids=ids, labels=ids).loss)
    assert heldout_loss(model, rows, collate, batch_size=1) == pytest.approx(expected, rel=1e-5)
    assert math.isnan(heldout_loss(model, rows, lambda b: collate(b, mask=True)))
    model.train()  # the trainer's model is in training mode: it stays so
    heldout_loss(model, rows, collate)
    assert model.training
