"""Vision-language models train for real in every stage (trl on the tiny VLM, CPU).

`run_stage` calls the stage's entry point, run(cfg), exactly as for text models. Held-out
scoring of VLMs is measured in test_vlm_generation_fills_images.
"""

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir

pytest.importorskip("PIL", reason="the `vision` extra")

from align.errors import ConfigError  # noqa: E402
from align.models.tiny import resolve_model_path  # noqa: E402
from align.run.conf import CONF_DIR, register  # noqa: E402

register()
FAST = {
    "sft": ["trainer.per_device_train_batch_size=8", "trainer.completion_only_loss=null",
            "trainer.max_length=null"],
    "dpo": ["trainer.per_device_train_batch_size=8", "trainer.max_length=null"],
    "grpo": ["trainer.per_device_train_batch_size=8", "trainer.num_generations=4",
             "trainer.max_completion_length=3", "data.synthetic.questions=[count]",
             "trainer.dynamic_sampling=false"],
}


def compose_run(stage, tmp_path, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[
            "model=tiny_vlm", "data=shapes", "trainer.max_steps=3", "trainer.logging_steps=1",
            "trainer.warmup_steps=0", "trainer.save_strategy=no", "logger=none",
            "heldout.enabled=false", f"output_dir={tmp_path}",
            "callbacks=[param_check:ParamChangeCallback]", *FAST[stage], *overrides,
        ])


def run_stage(stage, cfg):
    from align import dpo, grpo, sft

    return {"sft": sft.run, "dpo": dpo.run, "grpo": grpo.run}[stage](cfg)


def changes(tmp_path):
    return json.loads((tmp_path / "param_changes.json").read_text())


VISION = "model.vision_tower."
PROJECTOR = "model.multi_modal_projector."


REWARD_FILE = '''
import json, os
from rewards import completion_text

def varied(completions, solution, images, **kwargs):
    """Records the columns it got; scores distinct characters, so a random model's samples differ."""
    with open(os.environ["ALIGN_TEST_REWARD_LOG"], "a") as f:
        f.write(json.dumps({"keys": sorted(kwargs) + ["images", "solution"],
                            "n_images": [len(i) for i in images], "solution": list(solution)}) + "\\n")
    return [float(len(set(completion_text(c)))) for c in completions]
'''


@pytest.fixture
def varied_reward(tmp_path, monkeypatch):
    """A reward with spread on an untrained model (exact-answer rewards are all 0 there)."""
    path = tmp_path / "user_rewards.py"
    path.write_text(REWARD_FILE)
    log = tmp_path / "reward_calls.jsonl"
    monkeypatch.setenv("ALIGN_TEST_REWARD_LOG", str(log))
    return [f"+rewards.varied.fn={path}:varied"], log


@pytest.mark.parametrize("stage,overrides,expect", [
    # full fine-tuning, vision tower frozen (LoRA-less "freeze_vision_tower")
    ("sft", ["peft=none", "model.freeze_vision_tower=true"], "tower_frozen"),
    # LoRA on the language model only (Qwen2-VL-Finetune's LoRA)
    ("sft", ["peft=lora", "+peft.apply_to=language_model"], "lora_lm"),
    # LoRA on the language model, the vision tower and the projector (LoRA-vision)
    ("sft", ["peft=lora", "+peft.apply_to=all"], "lora_all"),
    ("dpo", ["peft=lora"], "lora_lm"),
    ("grpo", ["peft=none", "model.freeze_vision_tower=true", "model.freeze_projector=true"],
     "tower_projector_frozen"),
])
def test_vlm_stage_trains_what_is_configured(stage, overrides, expect, tmp_path, varied_reward):
    reward_overrides, reward_log = varied_reward
    if stage == "grpo":
        overrides = [*overrides, *reward_overrides]
    metrics = run_stage(stage, compose_run(stage, tmp_path / "run", *overrides))
    tmp_path = tmp_path / "run"
    if stage == "grpo":  # rewards receive the sample's columns, images included
        calls = [json.loads(line) for line in reward_log.read_text().splitlines()]
        assert len(calls) == 3
        assert all({"images", "solution"} <= set(c["keys"]) and set(c["n_images"]) == {1}
                   and all(s in "1234" for s in c["solution"]) for c in calls)
    report = changes(tmp_path)
    trainable = report["trainable"]
    assert trainable and report["trainable_unchanged"] == [] and report["frozen_changed"] == []
    if expect.startswith("tower"):
        assert not any(VISION in n for n in trainable)
        assert any(n.startswith("model.language_model.") for n in trainable)
        assert any(PROJECTOR in n for n in trainable) == (expect == "tower_frozen")
    else:
        assert all("lora_" in n for n in trainable)
        in_vision = any(VISION in n for n in trainable) and any(PROJECTOR in n for n in trainable)
        assert in_vision == (expect == "lora_all")
        assert any("language_model" in n for n in trainable)
    assert math.isfinite(metrics["train"]["final_loss"])
    assert metrics["train"]["global_step"] == 3
    # The processor is saved with the model, so the run folder loads on its own.
    from transformers import AutoProcessor

    final = tmp_path / "final"
    processor = AutoProcessor.from_pretrained(final)
    assert processor.image_token == "<|image_pad|>"
    if expect.startswith("lora"):
        from peft import PeftModel
        from transformers import AutoModelForImageTextToText

        base = AutoModelForImageTextToText.from_pretrained(resolve_model_path("tiny://vlm"))
        PeftModel.from_pretrained(base, final)


def test_vlm_generation_fills_images(tmp_path):
    """Greedy generation with the processor and each prompt's images (held-out scoring)."""
    from align.data import load_stage_data
    from align.measure.generation import generate_completions
    from align.models import ModelConfig, build_model
    from align.models.adapters import build_peft_plan

    data = load_stage_data({"path": "synthetic:shapes", "synthetic": {"n_eval": 8}}, "grpo",
                           vision=True)
    model, processor, _ = build_model(ModelConfig(name_or_path="tiny://vlm", kind="image_text_to_text"),
                                      build_peft_plan({"method": "none"}, vision=True))
    held = data.heldout
    out = generate_completions(model, processor, list(held["prompt"]), max_new_tokens=3,
                               batch_size=3, images=list(held["images"]))
    assert len(out) == 8 and all(isinstance(c, str) for c in out)
    # Images change what the model says: the same prompts with other pictures differ somewhere.
    shuffled = list(held["images"])[::-1]
    logits = []
    for imgs in (list(held["images"]), shuffled):
        enc = processor(text=[processor.apply_chat_template(held[0]["prompt"], tokenize=False,
                                                            add_generation_prompt=True)],
                        images=[imgs[0]], return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**enc).logits[0, -1])
    assert not torch.equal(logits[0], logits[1])


def test_vlm_options_contradictions_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="apply_to"):
        run_stage("sft", compose_run("sft", tmp_path, "peft=lora", "+peft.apply_to=vision"))
    with pytest.raises(ConfigError, match="full fine-tuning"):
        run_stage("sft", compose_run("sft", tmp_path, "peft=lora", "model.freeze_vision_tower=true"))
    with pytest.raises(ConfigError, match="fixed size"):
        run_stage("sft", compose_run("sft", tmp_path, "model.max_pixels=50000"))


def test_vlm_adapter_merges_and_evaluates_with_its_processor(tmp_path):
    """Export and evaluation of a VLM adapter: the merged model keeps the processor and gives
    base + adapter's logits on an image prompt; align/eval.py scores it with images."""
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from align import eval as align_eval
    from align.merge import merge

    run_dir = tmp_path / "run"
    run_stage("dpo", compose_run("dpo", run_dir, "peft=lora", "callbacks=[]"))
    out = merge(run_dir, tmp_path / "merged")
    assert (out / "processor_config.json").exists() or (out / "preprocessor_config.json").exists()

    processor = AutoProcessor.from_pretrained(out)
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        add_generation_prompt=True)
    batch = processor(text=[text], images=[[image]], return_tensors="pt")
    adapter = run_dir / "final"
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    with torch.no_grad():
        expected = PeftModel.from_pretrained(
            AutoModelForImageTextToText.from_pretrained(base_path), adapter).eval()(**batch).logits
        got = AutoModelForImageTextToText.from_pretrained(out).eval()(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"run_dir={run_dir}", f"output_dir={tmp_path / 'eval'}",
                                         "eval.max_samples=8", "eval.max_new_tokens=3"])
    summary = align_eval.run(cfg)
    assert 0.0 <= summary["accuracy"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "eval" / "completions.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 8
