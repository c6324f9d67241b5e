"""Shared setup of the veRL backend's tests."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def prompt_files(tmp_path, monkeypatch):
    """The shipped veRL specs' prompt files under a data root of their own (CI has no ../shared/data)."""
    root = tmp_path / "data"
    (root / "math6" / "train").mkdir(parents=True)
    for name in ("train/dapo_math_17k.jsonl", "aime24.jsonl"):
        (root / "math6" / name).write_text('{"problem": "1+1?", "answer": "2"}\n')
    monkeypatch.setenv("OCCCTL_DATA_DIR", str(root))
    return root


@pytest.fixture
def profile_of():
    """``profile_of(*sets, spec=...)``: the ``actor.profile`` the launch hands every worker for a shipped spec."""
    from occctl.spec import load_spec

    from backends.verl_backend.options import parse_options
    from backends.verl_backend.translate import worker_profile

    def build(*sets: str, spec: str = "mimo7b_dapo_occ") -> dict:
        loaded = load_spec(REPO / "specs" / f"{spec}.yaml", list(sets))
        return worker_profile(loaded, parse_options(loaded.backend_options))

    return build
