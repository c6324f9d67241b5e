"""Shared test setup: offline, quiet, deterministic; a temporary results root per test."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The warm-up checkpoint is cached by config hash; tests share it with `occctl run` in this checkout.
os.environ.setdefault("OCCCTL_CACHE_DIR", str(REPO / "results" / "cache"))

# One torch thread, as `occctl run` uses for the tiny preset: the warm-up a test trains must be the one `occctl run`
# trains. With torch's default (one per core) the 550-step warm-up ended elsewhere: held-out 0.0 instead of 0.076 on
# a CI clone, and the oracle/estimator e2e tests saw zero rewards (5 failures). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
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
