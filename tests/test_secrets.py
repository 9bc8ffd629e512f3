"""Secret redaction: credentials leave saved configs, ordinary keys that mention tokens stay."""

import pytest
import yaml
from hydra import compose, initialize_config_dir

from align.run.conf import CONF_DIR, register
from align.secrets import REDACTED, is_secret_key, redact

register()
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like a real one
HF_SECRET = "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"

ORDINARY = {
    "heldout.max_new_tokens": 16, "eval.max_new_tokens": 32, "model.tokenizer": "tiny://base",
    "model.pad_token": "<pad>", "trainer.pad_token": "<|endoftext|>", "trainer.eos_token": "</s>",
    "trainer.max_completion_length": 64, "trainer.max_prompt_length": 128,
    "model.bos_token_id": 1, "trainer.pad_token_id": 0, "processor.image_token": "<image>",
    "trainer.use_liger_kernel": True, "data.tokenized": False, "model.tokenizer_kwargs.x": "y",
    "trainer.num_tokens": 5, "model.key": "value", "data.keys": ["a"], "trainer.secretary": "s",
    "logger.api_key_file": "/path/to/file", "model.password_hint": "ask me",
    "trainer.dataset_kwargs.skip_prepare_dataset": True, "model.max_tokens": 3,
    "model.token_budget": 100, "rewards.tokenizer_name": "gpt2",
}
SECRET = {
    "model.model_kwargs.token": "hf_abc", "trainer.hub_token": "hf_abc", "model.hf_token": "x",
    "logger.api_key": "k", "logger.apikey": "k", "logger.apiKey": "k", "judge.API-KEY": "k",
    "judge.client_secret": "s", "judge.secret": "s", "db.password": "p", "db.passwd": "p",
    "db.DB_PASSWORD": "p", "auth.access_token": "a", "auth.auth_token": "a",
    "auth.accessToken": "a", "ssh.private_key": "k", "aws.aws_secret_access_key": "k",
    "model.use_auth_token": "hf_abc", "github.github_token": "g", "auth.bearer_token": "b",
    "judge.headers.x_api_key": "k", "rewards.judge.kwargs.openai_api_key": "sk-1",
}


def nested(flat: dict) -> dict:
    out: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@pytest.mark.parametrize("dotted,value", ORDINARY.items())
def test_ordinary_keys_survive(dotted, value, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    assert not is_secret_key(dotted.rsplit(".", 1)[-1])
    assert redact(nested({dotted: value})) == nested({dotted: value})


@pytest.mark.parametrize("dotted,value", SECRET.items())
def test_secret_keys_are_removed(dotted, value):
    assert redact(nested({dotted: value})) == nested({dotted: REDACTED})


@pytest.mark.parametrize("value", [None, "", True, False])
def test_a_secret_key_without_a_secret_keeps_its_value(value):
    assert redact({"token": value}) == {"token": value}  # token: null, use_auth_token: true


@pytest.mark.parametrize("env,value", [
    ("WANDB_API_KEY", WANDB_KEY),
    ("HF_TOKEN", HF_SECRET),
    ("OPENAI_API_KEY", "sk-not-a-real-key-1234"),
    ("GITHUB_TOKEN", "ghp_notARealTokenEither"),
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG"),
    ("MY_SERVICE_PASSWORD", "correct horse battery"),
])
def test_values_holding_an_environment_secret_are_removed_under_any_key(env, value, monkeypatch):
    monkeypatch.setenv(env, value)
    cfg = {"model": {"name_or_path": value, "tokenizer": f"https://x/?key={value}"},
           "logger": {"tags": ["a", value]}, "heldout": {"max_new_tokens": 16}}
    assert redact(cfg) == {"model": {"name_or_path": REDACTED, "tokenizer": REDACTED},
                           "logger": {"tags": ["a", REDACTED]}, "heldout": {"max_new_tokens": 16}}


def test_short_values_of_secret_named_variables_are_not_matched(monkeypatch):
    monkeypatch.setenv("SOME_TOKEN", "1")  # would otherwise redact every value holding a "1"
    assert redact({"model": {"name_or_path": "tiny://1"}}) == {"model": {"name_or_path":
                                                                         "tiny://1"}}


def test_a_run_folder_keeps_ordinary_keys_and_never_the_environment_secrets(tmp_path,
                                                                            monkeypatch):
    """End to end: what `python align/eval.py run_dir=<run>` reads back is usable."""
    from align import sft
    from align.eval import prepare

    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    run_dir = tmp_path / "run"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sft", overrides=[
            "trainer.max_steps=2", "logger=none", "trainer.per_device_train_batch_size=8",
            "trainer.save_strategy=no", "heldout.max_samples=8", "heldout.max_new_tokens=6",
            "model.tokenizer=tiny://base", f"output_dir={run_dir}",
            f"+model.model_kwargs.token={HF_SECRET}",  # a secret pasted into the config
            f"logger.tags=[{WANDB_KEY}]",
        ])
        sft.run(cfg)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["model"]["tokenizer"] == "tiny://base"
        assert saved["heldout"]["max_new_tokens"] == 6
        assert saved["model"]["model_kwargs"]["token"] == REDACTED
        assert saved["logger"]["tags"] == [REDACTED]
        for path in run_dir.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                data = path.read_bytes()
                assert WANDB_KEY.encode() not in data and HF_SECRET.encode() not in data, path
        job = prepare(compose("eval", overrides=[f"run_dir={run_dir}",
                                                 f"output_dir={tmp_path / 'eval'}"]))
    assert job.model.tokenizer == "tiny://base"  # not "<redacted>"
