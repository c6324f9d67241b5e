"""Fixtures of the eval tests."""

import pytest


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An untrained tiny checkpoint (seed 0) with its MTP head, outside any run."""
    from occctl.models import build_tiny, save_checkpoint
    from occctl.spec import TinyModelSpec

    return save_checkpoint(tmp_path_factory.mktemp("golden") / "tiny_ckpt", build_tiny(TinyModelSpec(), seed=0))
