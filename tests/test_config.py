"""Config tree: every file composes, keys are checked with suggestions, secrets stay out."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from align.device import CARDS
from align.errors import ConfigError, MissingExtraError
from align.models.tiny import tiny_model_path
from align.run.conf import CONF_DIR, register
from align.run.job import Job
from align.run.spec import decide, parse_spec
from align.secrets import redact

#: the config files in conf/'s groups: a fixed count, so that a walk that silently finds fewer
#: fails (update it when adding a config file)
N_GROUP_FILES = 53

REPO = Path(__file__).resolve().parent.parent
STAGES = ("sft", "dpo", "kto", "rm", "grpo")
# Groups a stage does not use (rewards and tools are GRPO's); their files are composed into grpo.
GROUP_STAGES = {"rewards": ("grpo",), "tools": ("grpo",)}
# Files meant to be used together with another choice.
COMPANIONS = {("rewards", "math"): ["trainer=grpo_gpu"],
              ("rewards", "reward_model"): ["rewards.rm.kwargs.model=my-org/my-reward-model"]}
# Choices a stage refuses at setup, and the words of its refusal: a reward model is a text
# sequence classifier, not a vision-language model.
REFUSED = {("rm", "model", "tiny_vlm"): "the rm stage trains text reward models"}

register()


def compose_stage(stage: str, overrides=()):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(stage, overrides=[*overrides, "output_dir=/tmp/align-test-unused"])


def group_files():
    """Every YAML file in a config group, found by walking the tree recursively."""
    found = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONF_DIR)
        if len(rel.parts) > 1:
            found.append(("/".join(rel.parts[:-1]), path.stem))
    return found


def test_walk_finds_every_group_file():
    files = group_files()
    groups = {g for g, _ in files}
    assert groups == {"model", "peft", "data", "trainer", "rewards", "tools", "logger",
                      "experiment", "hydra/sweeper", "hydra/launcher"}
    assert len(files) == N_GROUP_FILES
    # minus the top-level sft/dpo/kto/rm/grpo/eval/generate/run
    assert len(files) == len(list(CONF_DIR.rglob("*.yaml"))) - 8


@pytest.mark.parametrize("group,choice", group_files())
def test_every_config_file_composes_and_checks(group, choice):
    """Compose each group file into each stage that uses it and run align's key checks (no
    model or data is loaded). Configs that need an extra not installed here say which."""
    stages = GROUP_STAGES.get(group, STAGES)
    if group == "trainer":  # trainer/<stage>[_gpu].yaml belongs to its stage
        stages = (choice.split("_")[0],)
    if group == "experiment":
        head = (CONF_DIR / group / f"{choice}.yaml").read_text().splitlines()
        assert head[0] == "# @package _global_"
        stages = tuple(s for s in STAGES if any(f"align/{s}.py" in line for line in head[:3]))
        assert stages, "an experiment file must start with the command that runs it"
    checked = 0
    for stage in stages:
        cfg = compose_stage(stage, [f"{group}={choice}", *COMPANIONS.get((group, choice), [])])
        OmegaConf.to_container(cfg, resolve=False)
        if OmegaConf.is_missing(cfg.data, "path"):
            cfg.data.path = "train.jsonl"
        if not str(cfg.model.name_or_path).startswith("tiny://"):
            # No hub here: the tiny model has the module names of Llama and Qwen.
            cfg.model.name_or_path = str(tiny_model_path("base"))
        if (stage, group, choice) in REFUSED:
            with pytest.raises(ConfigError, match=REFUSED[stage, group, choice]):
                parse_spec(cfg, stage)
            checked += 1
            continue
        try:
            parse_spec(cfg, stage)  # every value, trl's and peft's own checks, on this CPU
            decide(cfg, stage, facts=CARDS["h200"])  # and the decisions for a GPU
        except MissingExtraError as exc:
            assert "pip install -e '.[" in str(exc)
        except ConfigError as exc:  # a method that needs a GPU, on a machine without one
            assert (group, choice) == ("peft", "loftq") and "CUDA device" in str(exc)
            decide(cfg, stage, facts=CARDS["h200"])
        checked += 1
    assert checked == len(stages)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("trainer.learnng_rate=1e-3", "'trainer.learnng_rate'"),
        ("trainer.lr=1e-3", "learning_rate"),
        ("model.dtyp=float32", "Did you mean: dtype"),
        ("peft=lora", None),
        ("data.pth=x.jsonl", "Did you mean: path"),
        ("logger.projct=x", "Did you mean: project"),
        ("heldout.max_sample=3", "Did you mean: max_samples"),
        ("rewards.accuracy.fn=acuracy", "did you mean 'accuracy'"),
        ("rewards.accuracy.wieght=2", "weight"),
        ("trainer.output_dir=/tmp/x", "top-level `output_dir`"),
        ("trainer.report_to=wandb", "logger"),
        ("model.dtype=float8", "choose one of"),
        ("peft.method=lorra", "lora"),
    ],
)
def test_bad_keys_fail_before_loading_with_suggestions(override, expected):
    cfg = compose_stage("grpo", [override])
    if expected is None:
        Job.start(cfg, "grpo")
        return
    with pytest.raises(ConfigError) as err:
        Job.start(cfg, "grpo")
    assert expected in str(err.value)


def test_peft_keys_are_checked_against_peft_dataclass():
    cfg = compose_stage("sft", ["peft=lora", "peft.rank=8", "peft.lora_alpah=16"])
    with pytest.raises(ConfigError) as err:
        Job.start(cfg, "sft")
    msg = str(err.value)
    assert "'peft.rank'" in msg and "Did you mean: r" in msg
    assert "'peft.lora_alpah'" in msg and "lora_alpha" in msg
    assert "2 problems" in msg


def test_any_trl_field_can_be_set_without_plus():
    cfg = compose_stage("dpo", ["trainer.max_grad_norm=0.5", "trainer.loss_type=[sigmoid,sft]"])
    job = Job.start(cfg, "dpo")
    assert job.args.max_grad_norm == 0.5
    assert list(job.args.loss_type) == ["sigmoid", "sft"]


def test_use_vllm_without_vllm_names_the_extra():
    pytest.importorskip("trl")
    if __import__("importlib").util.find_spec("vllm"):
        pytest.skip("vllm is installed here")
    cfg = compose_stage("grpo", ["trainer.use_vllm=true"])
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[vllm\]'"):
        Job.start(cfg, "grpo")


def test_cli_typo_exits_2_with_suggestion_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "align" / "grpo.py"), "trainer.learnig_rate=1e-4",
         f"output_dir={out}", "logger=none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "trainer.learnig_rate" in proc.stderr and "learning_rate" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not (tmp_path / "outputs").exists(), "a failed run left a folder behind"


def test_cli_top_level_typo_is_one_line_with_a_suggestion(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "align" / "sft.py"), "seeed=3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key 'seeed'. Did you mean: seed? To add a key that is not in the "
        "config, write +seeed=<value>"]


def test_redact_removes_secrets(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "abc123secretvalue")
    cfg = {"logger": {"api_key": "k", "note": "key=abc123secretvalue"},
           "model": {"hub_token": "hf_x", "name_or_path": "m", "trust_remote_code": False}}
    clean = redact(cfg)
    assert clean["logger"]["api_key"] == "<redacted>"
    assert clean["logger"]["note"] == "<redacted>"
    assert clean["model"]["hub_token"] == "<redacted>"
    assert clean["model"]["name_or_path"] == "m"
    assert clean["model"]["trust_remote_code"] is False
    # No config file holds a secret: each one's values are saved as they are (a redacted
    # `heldout.max_new_tokens` or `model.tokenizer` breaks `align/eval.py run_dir=...`).
    monkeypatch.delenv("WANDB_API_KEY")
    checked = 0
    for group, choice in group_files():
        stage = GROUP_STAGES.get(group, STAGES)[-1]  # grpo has every section
        if group in ("trainer", "experiment"):  # these belong to one stage: the one they name
            head = (CONF_DIR / group / f"{choice}.yaml").read_text()[:300]
            stage = next(s for s in STAGES if choice.startswith(s) or f"align/{s}.py" in head)
        extra = COMPANIONS.get((group, choice), [])
        plain = OmegaConf.to_container(
            compose_stage(stage, [f"{group}={choice}", *extra]), resolve=True)
        assert redact(plain) == plain, f"{group}={choice}"
        checked += 1
    assert checked == len(group_files()) == N_GROUP_FILES


def test_cli_bad_data_row_names_file_row_field_and_leaves_nothing(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                    '{"prompt": "2+2=", "chosen": 4, "rejected": "5"}\n')
    proc = subprocess.run(
        [sys.executable, str(REPO / "align" / "dpo.py"), "data=local", f"data.path={data}",
         "logger=none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "pairs.jsonl: row 1 (line 2): field 'chosen'" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_slurm_launcher_composes_into_every_stage():
    """`-m hydra/launcher=slurm` submits each sweep candidate as a SLURM job (submitit)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the `slurm` extra")
    for stage in STAGES:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(stage, overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                            "output_dir=/tmp/x"], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
        assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
        assert launcher.submitit_folder.endswith(".submitit/%j")


def test_vllm_server_mode_checks_the_server_before_loading(tmp_path):
    """Server mode fails at setup, with the fix, when nothing answers at the server's URL; and
    goes past that check when a server answers /health (a real HTTP server on loopback)."""
    import http.server
    import socket
    import threading

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    cfg = compose_stage("grpo", ["trainer.use_vllm=true", "trainer.vllm_mode=server",
                                 f"+trainer.vllm_server_base_url=http://127.0.0.1:{closed_port}"])
    with pytest.raises(ConfigError, match="unreachable.*vllm serve"):
        Job.start(cfg, "grpo")

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = compose_stage("grpo", ["trainer.use_vllm=true", "trainer.vllm_mode=server",
                                     f"+trainer.vllm_server_base_url=http://127.0.0.1:{server.server_port}"])
        if __import__("importlib").util.find_spec("vllm") is None:
            with pytest.raises(MissingExtraError):  # the server answered; vLLM itself is missing
                Job.start(cfg, "grpo")
        else:
            Job.start(cfg, "grpo")
    finally:
        server.shutdown()


def test_typos_and_bad_values_are_reported_before_torch_or_trl_is_imported(tmp_path):
    """The checks that catch a typo or a bad trl/peft value import neither torch nor trl (those
    take 5-10 s to import), so the report comes at once."""
    code = f"""
import sys
from hydra import compose, initialize_config_dir
from align.run.conf import CONF_DIR, register
from align.errors import AlignError
from align.run.spec import decide
register()
named = []
for overrides, key in ((["trainer.learnig_rate=1"], "trainer.learnig_rate"),
                       (["peft=lora", "peft.rnk=4"], "peft.rnk"),
                       (["trainer.learning_rate=abc"], "trainer.learning_rate="),
                       (["peft=lora", "peft.r=0"], "peft.r="),
                       (["trainer.loss_type=foo"], "trainer.loss_type="),
                       (["trainer.max_steps=-5"], "trainer.max_steps="),
                       (["seed=abc"], "seed=")):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("grpo", overrides=overrides + ["output_dir={tmp_path}/out"])
    try:
        decide(cfg, "grpo")
    except AlignError as exc:
        named.append(key in str(exc))
print(named, sorted(m for m in ("torch", "trl", "transformers", "peft") if m in sys.modules))
"""
    # Twice: the first run may fill the field-schema cache (that imports trl once).
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{[True] * 7} []", out.stderr[-2000:]
