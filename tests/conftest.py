"""Shared test setup: offline, quiet, deterministic; a temporary results root per test."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The warm-up checkpoint is cached by config hash; tests share it with `occctl run` in this checkout.
os.environ.setdefault("OCCCTL_CACHE_DIR", str(REPO / "results" / "cache"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    """An isolated results root (runs, MLflow store); the warm-up cache stays shared across tests."""
    root = tmp_path / "results"
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root
