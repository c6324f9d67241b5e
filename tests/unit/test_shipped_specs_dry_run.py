"""Every shipped spec (by glob: a new one is picked up) passes `occctl run --dry-run` on CPU without weights:
the TRL math specs check their task and context against the spec's model_shape, the veRL ones their launch."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.cli import app
from occctl.spec import load_specs

REPO = Path(__file__).resolve().parents[2]
SINGLE_RUNS = [p for p in sorted((REPO / "specs").glob("*.yaml")) if len(load_specs(p)) == 1]


@pytest.mark.parametrize("path", SINGLE_RUNS, ids=lambda p: p.name)
def test_shipped_spec_dry_runs(path, results_dir):
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not (results_dir / "runs").exists(), "--dry-run writes nothing"


@pytest.mark.parametrize("path", [p for p in SINGLE_RUNS if load_specs(p)[0].task.name == "dataset"],
                         ids=lambda p: p.name)
def test_math_specs_take_the_cpu_preset(path, results_dir):
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run", "--set", "model=tiny_cpu",
                                      "--set", "train.steps=3"])
    assert result.exit_code == 0, result.output
    assert "preset: tiny" in result.output and "max_new_tokens: 32" in result.output
