"""align/generate.py's endpoint backend against vLLM's own OpenAI-compatible server (`vllm
serve` on the tiny model, float32 on CPU, an API key checked): the README's command, run from
another folder, writes scored, consistent files and no key; a wrong key fails in one line; a
seed repeats the samples; greedy completions through both APIs are HF generate's.

    bash tests/vllm_cpu/run.sh -k generate_endpoint
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed in this environment; these tests run in their own: "
           "bash tests/vllm_cpu/run.sh")

REPO = Path(__file__).resolve().parents[2]
PROMPTS, N = 16, 4
GREEDY_PROMPTS, MAX_NEW_TOKENS = 24, 8


def generate(cwd: Path, server, key: str, *overrides: str, base_url: str | None = None):
    """`python align/generate.py generator.backend=endpoint ...` as the README shows it, in
    `cwd`, with `key` in OPENAI_API_KEY, on `server` (or `base_url`); align from this
    checkout, in this environment (which has align's dependencies too)."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OPENAI_API_KEY": key, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(REPO / "align" / "generate.py"), "generator.backend=endpoint",
         f"generator.base_url={base_url or server.base_url}",
         f"generator.model={server.model}",
         f"generator.n={N}", f"prompts.max_prompts={PROMPTS}", "generator.max_tokens=8",
         *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_folder(cwd: Path) -> Path:
    folders = list((cwd / "outputs" / "generate").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def test_generate_endpoint_on_vllm_server_writes_scored_files(vllm_openai_server, tmp_path):
    server = vllm_openai_server
    done = generate(tmp_path / "a", server, server.api_key)
    assert done.returncode == 0, done.stderr[-3000:]
    out = run_folder(tmp_path / "a")
    samples = read_jsonl(out / "samples.jsonl")
    sft, pairs = read_jsonl(out / "sft.jsonl"), read_jsonl(out / "pairs.jsonl")
    stats = json.loads((out / "stats.json").read_text())
    assert not (out / "partial").exists()

    # n samples per prompt, in prompt order, each scored by accuracy against `solution`
    assert len(samples) == PROMPTS * N
    assert [(s["prompt_index"], s["sample_index"]) for s in samples] == \
           [(i, k) for i in range(PROMPTS) for k in range(N)]
    assert all(s["rewards"].keys() == {"accuracy"} and s["reward"] == s["rewards"]["accuracy"]
               in (0.0, 1.0) for s in samples)
    numbers = [s for s in samples if re.fullmatch(r"\d+", s["completion"])]
    assert len(numbers) > len(samples) // 2  # the tiny model answers with a number
    assert all(s["reward"] == float(s["completion"] == s["solution"]) for s in numbers)
    assert 0 < stats["histograms"]["reward"]["mean"] < 1
    # the server sampled n different completions per prompt (n and the seed reached it)
    groups = [[s["completion"] for s in samples if s["prompt_index"] == i]
              for i in range(PROMPTS)]
    assert sum(len(set(g)) > 1 for g in groups) > PROMPTS // 2

    # the counts agree with the files, and the files with the samples
    assert (stats["prompts"], stats["samples"], stats["samples_per_prompt"]) == \
           (PROMPTS, PROMPTS * N, N)
    assert (stats["backend"], stats["model"], stats["endpoint"]) == \
           ("endpoint", server.model, server.base_url)
    assert stats["kept"] == len(sft) > 0 and stats["pairs"] == len(pairs) > 0
    assert stats["histograms"]["reward"]["n"] == len(samples)
    scored = {(json.dumps(s["prompt"]), s["completion"]): s["reward"] for s in samples}
    assert all(scored[json.dumps(r["prompt"]), r["completion"]] >= 1.0 for r in sft)
    assert all(scored[json.dumps(r["prompt"]), r["chosen"]] >
               scored[json.dumps(r["prompt"]), r["rejected"]] for r in pairs)
    assert len({json.dumps(r["prompt"]) for r in sft}) == len(sft)  # max_per_prompt=1

    # the key is in no file the run wrote (its variable's name is, in config.yaml)
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            assert server.api_key not in path.read_text(errors="replace"), path
    assert "OPENAI_API_KEY" in (out / "config.yaml").read_text()
    assert server.api_key not in done.stdout + done.stderr

    # the same seed: the server samples the same completions again
    again = generate(tmp_path / "b", server, server.api_key)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [s["completion"] for s in read_jsonl(run_folder(tmp_path / "b") / "samples.jsonl")] \
           == [s["completion"] for s in samples]


def test_generate_endpoint_on_vllm_server_refuses_a_wrong_key_in_one_line(
        vllm_openai_server, tmp_path):
    server = vllm_openai_server
    wrong = "sk-not-the-served-key-000"
    done = generate(tmp_path, server, wrong)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"error: generator.base_url={server.base_url} refused the API "
                         "key (HTTP 401): check the variable generator.api_key_env names")
    assert "Traceback" not in done.stderr and wrong not in done.stdout + done.stderr
    assert not (tmp_path / "outputs").exists()
    # a model name the server does not serve, and the URL without /v1: one line each
    other = generate(tmp_path, server, server.api_key, "generator.model=other")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: generator.model='other' is not served at {server.base_url}; it serves: "
        f"{server.model}")
    root = server.base_url.removesuffix("/v1")
    bare = generate(tmp_path, server, server.api_key, base_url=root)
    assert bare.returncode == 2
    assert bare.stderr.strip().splitlines()[-1].endswith(f"set generator.base_url={root}/v1")
    assert not (tmp_path / "outputs").exists()


def test_generate_endpoint_greedy_on_vllm_server_matches_hf(vllm_openai_server, tiny_sft_path):
    """Greedy (temperature 0, n=1) through chat completions, and through completions with the
    chat template rendered by hand: both are HF generate's completions, prompt for prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.data import DataConfig, load_stage_data
    from align.measure.generation import generate_completions
    from align.models.endpoint import Endpoint, EndpointSampler

    heldout = load_stage_data(DataConfig(), "grpo").heldout.select(range(GREEDY_PROMPTS))
    server = vllm_openai_server
    chats = list(heldout["prompt"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_sft_path)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
             for p in chats]
    model = AutoModelForCausalLM.from_pretrained(tiny_sft_path, dtype=torch.float32)
    hf = generate_completions(model, tokenizer, chats, max_new_tokens=MAX_NEW_TOKENS)

    sampler = EndpointSampler(Endpoint(
        base_url=server.base_url, model=server.model, api_key=server.api_key, n=1,
        temperature=0.0, max_tokens=MAX_NEW_TOKENS, concurrency=4))
    try:
        chat = [c[0] for c in sampler.sample(chats, range(len(chats)))]
        plain = [c[0] for c in sampler.sample(texts, range(len(texts)))]
    finally:
        sampler.close()
    # float32 on both sides: token for token, as eval's vLLM backend is against HF
    assert chat == hf
    assert plain == hf
    # the warm-up model answers about half: a comparison of empty strings could not fail
    right = sum(c == s for c, s in zip(hf, heldout["solution"]))
    assert 0.2 * GREEDY_PROMPTS < right < 0.95 * GREEDY_PROMPTS
    assert len(set(hf)) > GREEDY_PROMPTS // 2
