"""W&B without an API key: offline, no prompt, no crash, secrets never written."""

from hydra import compose, initialize_config_dir

from align import sft
from align.config import CONF_DIR, register

register()
SECRET = "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"


def test_wandb_without_key_runs_offline_and_keeps_secrets_out(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sft", overrides=[
            "logger=wandb", "trainer.max_steps=2", "trainer.per_device_train_batch_size=8",
            "trainer.save_strategy=no", "heldout.max_samples=8", f"output_dir={tmp_path}",
            # A secret pasted into a config value must not reach the saved config or W&B.
            f"+model.model_kwargs.token={SECRET}",
        ])
    sft.run(cfg)

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "no W&B run file written"
    out = capsys.readouterr().out
    assert "W&B run saved offline" in out and "wandb sync" in out
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), f"secret leaked into {path}"
    assert "<redacted>" in (tmp_path / "config.yaml").read_text()
