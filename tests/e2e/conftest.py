"""Fixtures of the end-to-end tests that run an engine in this process."""

import os

import pytest


@pytest.fixture(scope="module")
def vllm_env():
    """vLLM's engine in the test's process (one engine after another) with a 1 GiB KV cache, for one module."""
    saved = dict(os.environ)
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
    yield
    os.environ.clear()
    os.environ.update(saved)
