"""Registering a test's own backend for the length of the test, and the spec file that selects it."""

from __future__ import annotations

from pathlib import Path

import occctl.backend


def register_backend(monkeypatch, tmp_path: Path, name: str, target: str, spec_text: str) -> Path:
    """``BACKENDS[name] = target`` ("module:Class") until the test ends; returns ``<tmp>/<name>_run.yaml``."""
    monkeypatch.setitem(occctl.backend.BACKENDS, name, target)
    spec = tmp_path / f"{name}_run.yaml"
    spec.write_text(spec_text)
    return spec
