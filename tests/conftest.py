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
