"""Merging an adapter gives a standalone model with the same forward pass as base + adapter."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from align import dpo
from align.merge import main, merge
from align.run.conf import CONF_DIR, register

register()


@pytest.fixture(scope="module", params=["lora", "dora"])
def adapter_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"run-{request.param}")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("dpo", overrides=[
            f"peft={request.param}", "trainer.max_steps=3", "trainer.warmup_steps=0",
            "trainer.logging_steps=1", "trainer.save_strategy=no", "logger=none",
            "trainer.per_device_train_batch_size=8", "heldout.max_samples=16",
            f"output_dir={out}"])
    dpo.run(cfg)
    return out


def logits(model, tokenizer):
    batch = tokenizer(["<|im_start|>user\n12+30=<|im_end|>\n<|im_start|>assistant\n", "7+8=15"],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_merged_model_matches_base_plus_adapter(adapter_run, tmp_path):
    out = merge(adapter_run, tmp_path / "merged")
    adapter_cfg = json.loads((adapter_run / "final" / "adapter_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(adapter_run / "final")
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"])
    base_logits = logits(base, tokenizer)
    with_adapter = PeftModel.from_pretrained(base, adapter_run / "final").eval()
    expected = logits(with_adapter, tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    got = logits(merged, tokenizer)

    assert not torch.allclose(base_logits, expected, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())

    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} <= files
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # nothing left aside
    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded("12+30=")["input_ids"] == tokenizer("12+30=")["input_ids"]
    assert reloaded.chat_template == tokenizer.chat_template
    assert GenerationConfig.from_pretrained(out).eos_token_id == tokenizer.eos_token_id

    card = (out / "README.md").read_text()
    metrics = json.loads((adapter_run / "metrics.json").read_text())
    assert f"| accuracy | {metrics['heldout_before']['accuracy']:.3f} | " \
           f"{metrics['heldout_after']['accuracy']:.3f} |" in card
    assert "preference_accuracy" in card and "stage: dpo" in card
    assert adapter_cfg["peft_type"] in card


def test_merge_refuses_to_overwrite_and_names_bad_folders(adapter_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main([str(adapter_run), "--out", str(tmp_path / "taken")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(tmp_path / "taken")]) == 2
    assert "no adapter_config.json or config.json" in capsys.readouterr().err


def test_eval_of_the_adapter_equals_eval_of_the_merged_model(adapter_run, tmp_path):
    from align.eval import run

    out = merge(adapter_run, tmp_path / "merged")
    summaries = []
    for name, path in (("adapter", adapter_run / "final"), ("merged", out)):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("eval", overrides=[f"model.name_or_path={path}", "eval.max_samples=32",
                                             f"output_dir={tmp_path / name}"])
        summaries.append(run(cfg))
    texts = [(tmp_path / n / "completions.jsonl").read_text() for n in ("adapter", "merged")]
    assert texts[0] == texts[1]
    assert summaries[0]["accuracy"] == summaries[1]["accuracy"]
