"""launch/vllm_server.sh as a user starts it (VLLM_SERVER_ONLY=1: the server alone, as on a
dedicated node), on the tiny model on CPU: the server it starts is the one trl 1.16's client
expects in vllm_mode=server (weight transfer configured, its development endpoints on, the
log-probability settings trl's trainers read), and it generates through trl's client."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _helpers():
    """The server helpers of this folder's conftest (server_env, serve, free_port)."""
    spec = importlib.util.spec_from_file_location("vllm_cpu_helpers",
                                                  Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script_server(tmp_path_factory, tiny_sft_path):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    helpers = _helpers()
    root = tmp_path_factory.mktemp("vllm_server_script")
    port = helpers.free_port()
    env = helpers.server_env(root)
    env.update(VLLM_SERVER_ONLY="1", VLLM_MODEL=str(tiny_sft_path), VLLM_HOST="127.0.0.1",
               VLLM_PORT=str(port), VLLM_ARGS="--dtype float32 --enforce-eager --max-model-len 512",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    yield from helpers.serve(["bash", str(REPO / "launch" / "vllm_server.sh"), "1"], env,
                             root / "server.log", f"http://127.0.0.1:{port}",
                             "launch/vllm_server.sh")


def test_the_server_script_serves_what_trls_client_needs(script_server, tiny_sft_path):
    from transformers import AutoTokenizer
    from trl.generation.vllm_client import VLLMClient

    from align.run.spec import check_vllm_server

    client = VLLMClient(base_url=script_server)
    info = client.get_server_info()  # 404 without VLLM_SERVER_DEV_MODE=1
    assert info["weight_transfer_config"] is not None  # what init_communicator requires
    assert info["model_config"]["logprobs_mode"] == "processed_logprobs"
    assert info["model_config"]["max_logprobs"] == -1
    assert client.get_world_size() == 1
    client.reset_prefix_cache()

    tokenizer = AutoTokenizer.from_pretrained(tiny_sft_path)
    prompt = tokenizer("What is 2+3?")["input_ids"]
    out = client.generate([prompt], temperature=0.0, max_tokens=4, logprobs=0)
    assert len(out["completion_ids"][0]) > 0
    check_vllm_server({"use_vllm": True, "vllm_mode": "server",
                       "vllm_server_base_url": script_server})
