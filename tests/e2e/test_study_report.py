"""A two-regime miniature study: resume skips finished cells, `occctl report` writes and logs its tables."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.cli import app

pytestmark = pytest.mark.slow

STUDY = """# two regimes x two seeds, a few steps
matrix:
  mtp.regime: [detach, occ]
  train.seed: [0, 1]
train: {steps: 4, prompts_per_generation: 8}
eval: {samples_per_problem: 1}
tracking: {experiment: study_test}
"""


def test_study_resumes_and_report_compares(results_dir, tmp_path):
    spec = tmp_path / "mini.yaml"
    spec.write_text(STUDY)
    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)}
    runs = results_dir / "runs"
    # an interrupted study: one cell finished, one died half-way (directory without summary.json)
    first = subprocess.run([sys.executable, "-m", "occctl", "run", str(spec), "--set", "train.steps=4"],
                           capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    names = sorted(p.name for p in runs.iterdir())
    assert names == ["mini.regime-detach.seed-0", "mini.regime-detach.seed-1", "mini.regime-occ.seed-0",
                     "mini.regime-occ.seed-1"]
    finished = runs / names[0] / "summary.json"
    stamp = finished.stat().st_mtime_ns
    (runs / names[3] / "summary.json").unlink()  # as if killed before the end
    again = subprocess.run([sys.executable, "-m", "occctl", "run", str(spec), "--set", "train.steps=4"],
                           capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert finished.stat().st_mtime_ns == stamp, "a finished cell was rerun"
    assert "cell 4/4" in again.stderr and "cell 1/4" not in again.stderr
    assert (runs / names[3] / "summary.json").is_file()
    assert "starting it again in place" in again.stderr  # no checkpoint (save_every_steps=0): from the start

    result = CliRunner().invoke(app, ["report", "--compare", "detach,occ", "--group", "mini", "--name", "mini_rep"])
    assert result.exit_code == 0, result.output
    assert "detach" in result.output and "occ − detach" in result.output
    out = results_dir / "reports" / "mini_rep"
    for name in ("table.md", "table.csv", "fig6_reward.png", "fig4_lambda.png"):
        assert (out / name).is_file(), name
    csv_rows = (out / "table.csv").read_text().splitlines()
    assert csv_rows[0].startswith("row,column,n,mean") and len(csv_rows) == 1 + 2 * 4

    from occctl.tracking import resolve_store

    client = resolve_store().client()
    report_runs = client.search_runs([client.get_experiment_by_name("occctl-reports").experiment_id])
    artifacts = {a.path for a in client.list_artifacts(report_runs[0].info.run_id, "report")}
    assert {"report/table.md", "report/table.csv", "report/table.json"} <= artifacts

    missing = CliRunner().invoke(app, ["report", "--compare", "detach,occ", "--group", "nothing_here"])
    assert missing.exit_code == 2 and "no finished runs" in missing.output
    elsewhere = tmp_path / "papers" / "occ"  # --out is the user's: outside results/ is fine
    mine = CliRunner().invoke(app, ["report", "--group", "mini", "--out", str(elsewhere)])
    assert mine.exit_code == 0, mine.output
    assert (elsewhere / "table.md").read_text() == (out / "table.md").read_text()
    again = CliRunner().invoke(app, ["report", "--group", "mini", "--out", str(elsewhere)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
