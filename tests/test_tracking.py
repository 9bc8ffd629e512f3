"""W&B without an API key: offline, no prompt, no crash, secrets never written."""

from hydra import compose, initialize_config_dir

from align import sft
from align.run.conf import CONF_DIR, register

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


def test_a_resumed_launch_continues_the_same_wandb_run(tmp_path, monkeypatch):
    from align.run.tracking import WANDB_ID_FILE, LoggerConfig, start_tracking

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = LoggerConfig(mode="offline")

    def launch(resume):
        tracker = start_tracking(cfg, name="run", group=None, out_dir=tmp_path, config={},
                                 is_main=True, resume=resume)
        run_id = tracker.run.id
        tracker.run.finish()
        return run_id

    first = launch(resume=True)  # the first launch of a requeueable job: nothing to resume
    assert (tmp_path / WANDB_ID_FILE).read_text() == first
    assert launch(resume=True) == first
    fresh = launch(resume=False)  # a fresh start is a new W&B run, which a resume continues
    assert fresh != first
    assert launch(resume=True) == fresh
