"""Shared pytest fixtures.

The tiny models are built once into the default cache (``$ALIGN_CACHE`` or ``~/.cache/align``)
and reused by every later session; the first build takes about a minute on 2 CPU cores.
"""

import pytest


@pytest.fixture(scope="session")
def tiny_base_path():
    from align.models.tiny import tiny_model_path

    return tiny_model_path("base")


@pytest.fixture(scope="session")
def tiny_sft_path():
    from align.models.tiny import tiny_model_path

    return tiny_model_path("sft")


@pytest.fixture(scope="session")
def seven_b(tmp_path_factory):
    """A Llama-2-7B-shaped config folder (no weights): planning and decisions never load any."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("llama7b")
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32,
                vocab_size=32000).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tools_path():
    from align.models.tiny import tiny_tools_path

    return tiny_tools_path()
