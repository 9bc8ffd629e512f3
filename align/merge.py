"""Export a trained run as a standalone Hugging Face model: adapter merged into its base.

    python -m align.merge outputs/dpo/<run id>                    # -> outputs/dpo/<run id>/merged
    python -m align.merge outputs/dpo/<run id> --out exported/my-model --dtype bfloat16
    python -m align.merge outputs/dpo/<run id> --push-to-hub my-org/my-model --private

The run folder's `final/` holds either a PEFT adapter (LoRA, DoRA, rsLoRA, PiSSA ... anything
peft's `merge_and_unload` merges) or a full model. An adapter is merged into its base model
(the base recorded in adapter_config.json, loaded with the run's own model settings); a full
model is exported as it is. The output folder holds:

  model.safetensors (+ config.json)   the merged weights
  tokenizer files                      the tokenizer the run trained with (chat template included)
  generation_config.json               the base model's generation settings
  README.md                            a model card: base model, method, the run's resolved
                                       config and its held-out figures (metrics.json, and
                                       eval/summary.json when `align/eval.py` wrote one there)

The folder is written aside and renamed into place, so it is never half-written. Prompt-tuning
adapters (soft prompts) cannot be merged into weights and are refused. `--push-to-hub` uploads
the folder with huggingface_hub (token from HF_TOKEN or `huggingface-cli login`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from align.errors import AlignError, ConfigError, report_user_error

#: peft types whose adapter lives in the weights and can be merged
MERGEABLE = ("LORA", "ADALORA", "IA3", "LOHA", "LOKR", "OFT", "BOFT", "VERA", "FOURIERFT")


def model_folder(run_dir: Path) -> Path:
    """The folder holding the adapter or model: RUN_DIR/final, or the folder itself."""
    for candidate in (run_dir / "final", run_dir):
        if (candidate / "adapter_config.json").is_file() or (candidate / "config.json").is_file():
            return candidate
    raise AlignError(f"{run_dir}: neither a run folder with final/ nor a model/adapter folder "
                     "(no adapter_config.json or config.json)")


def load_run_config(run_dir: Path) -> dict:
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(config_file))


def load_merged(folder: Path, run_cfg: dict, dtype: str | None = None):
    """(merged model, tokenizer, adapter info or None) for an adapter or full-model folder."""
    from dataclasses import replace

    from align.device import CPU, placement
    from align.models import ModelConfig, load_model, load_processing_class
    from align.schema import check_dataclass

    # Merging and saving need no card, and the host's memory holds models no single card does.
    on_cpu = placement(CPU)

    model_cfg, errors = check_dataclass(run_cfg.get("model") or {}, ModelConfig, "model")
    if errors:
        raise ConfigError(f"{folder.parent / 'config.yaml'}: " + "; ".join(errors))
    if dtype:
        model_cfg = replace(model_cfg, dtype=dtype)
    model_cfg = replace(model_cfg, gradient_checkpointing=False, tokenizer=None,
                        name_or_path=str(folder))
    # The processor of a vision-language model (saved with the merged model), else the tokenizer.
    tokenizer = load_processing_class(model_cfg)
    adapter_file = folder / "adapter_config.json"
    if not adapter_file.is_file():
        return load_model(model_cfg, place=on_cpu), tokenizer, None
    adapter = json.loads(adapter_file.read_text())
    if adapter.get("peft_type") not in MERGEABLE:
        raise AlignError(f"{folder}: a {adapter.get('peft_type')} adapter cannot be merged into "
                         "the weights (soft prompts stay separate); load it with "
                         "PeftModel.from_pretrained instead")
    from peft import PeftModel

    base = load_model(replace(model_cfg, name_or_path=adapter["base_model_name_or_path"]),
                      place=on_cpu)
    model = PeftModel.from_pretrained(base, str(folder))
    return model.merge_and_unload(), tokenizer, adapter


def model_card(run_dir: Path, run_cfg: dict, adapter: dict | None, name: str) -> str:
    """A short README.md: what the model is, how it was trained, what it scored."""
    from omegaconf import OmegaConf

    from align.secrets import redact

    stage = run_cfg.get("stage", "?")
    base = (adapter or {}).get("base_model_name_or_path") or \
        (run_cfg.get("model") or {}).get("name_or_path", "?")
    method = f"{adapter['peft_type']} adapter merged into the base" if adapter else \
        "full fine-tuning"
    lines = ["---", "library_name: transformers", "tags: [align, trl, " + str(stage) + "]",
             "---", "", f"# {name}", "",
             f"Trained with align ({str(stage).upper()}, trl) from `{base}`: {method}.", ""]
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    before, after = metrics.get("heldout_before") or {}, metrics.get("heldout_after") or {}
    names = [k for k, v in after.items() if isinstance(v, (int, float)) and "/" not in k
             and k not in ("samples", "preference_pairs")]
    if names:
        lines += ["## Held-out evaluation", "",
                  f"{int(after.get('samples', 0)) or ''} held-out prompts, greedy decoding.", "",
                  "| metric | before training | after training |", "|---|---|---|"]
        for n in names:
            b = before.get(n)
            lines.append(f"| {n} | {'' if b is None else f'{b:.3f}'} | {after[n]:.3f} |")
        lines.append("")
    summary_file = run_dir / "eval" / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        figures = {k: v for k, v in summary.items()
                   if k == "accuracy" or k.startswith("pass@") or k == "truncated_rate"}
        lines += ["## align/eval.py", "",
                  f"{summary.get('prompts')} prompts x {summary.get('samples_per_prompt')} "
                  f"samples at temperature {summary.get('temperature')}: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), ""]
    train = metrics.get("train") or {}
    if train:
        lines += ["## Training", "",
                  (f"{train.get('global_step', '?')} steps, final loss "
                  f"{train.get('final_loss', float('nan')):.4f}, "
                  f"{train.get('train_runtime', float('nan')):.0f} s."), ""]
    if run_cfg:
        config = {k: v for k, v in redact(run_cfg).items() if k not in ("output_dir",)}
        lines += ["## Training config", "", "```yaml",
                  OmegaConf.to_yaml(OmegaConf.create(config)).rstrip(), "```", ""]
    return "\n".join(lines)


def merge(run_dir: str | Path, out: str | Path | None = None, dtype: str | None = None,
          overwrite: bool = False, push_to_hub: str | None = None,
          private: bool = False) -> Path:
    """Merge/export the run and write the standalone model folder; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AlignError(f"{run_dir}: no such folder")
    folder = model_folder(run_dir)
    run_home = folder.parent if folder.name == "final" else folder
    out = Path(out) if out else run_home / "merged"
    if out.exists() and not overwrite:
        raise AlignError(f"{out} exists: choose another --out or pass --overwrite")
    run_cfg = load_run_config(run_home)
    model, tokenizer, adapter = load_merged(folder, run_cfg, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(run_home, run_cfg, adapter, out.name))
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if push_to_hub:
        push(out, push_to_hub, private)
    return out


def push(folder: Path, repo_id: str, private: bool) -> str:  # pragma: no cover - network
    """Upload the folder to a hub model repo (created when missing); return its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message="Upload model exported by align.merge")
    return str(getattr(commit, "commit_url", repo_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m align.merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run folder (with final/) or an adapter/model folder")
    parser.add_argument("--out", help="output folder (default RUN_DIR/merged)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the saved weights (default: the run's model.dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload to this hub repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo private")
    args = parser.parse_args(argv)
    try:
        out = merge(args.run_dir, args.out, args.dtype, args.overwrite, args.push_to_hub,
                    args.private)
    except AlignError as exc:
        return report_user_error(exc)
    print(f"standalone model: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
