"""Nothing lost, nothing mixed up (issue 26), on the real CLI with 4-step tiny runs:

* a study on the local launcher SIGKILLed as a whole (its process group): its workers die with it; a cell that
  finished without its parent (run by hand, as an orphan did) is published by the rerun; after the rerun MLflow
  has every cell FINISHED with every step exactly once, and `occctl report` counts every seed without a warning;
* two `occctl run` of the same spec and name started together: one trains, the other exits 2 naming it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.rundir import RunDir
from occctl.tracking import resolve_store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CELLS = """# two seeds, 4 steps, a checkpoint every 2
matrix:
  train.seed: [0, 1]
train: {steps: 4, save_every_steps: 2, optimizer_steps_per_generation: 2, prompts_per_generation: 8}
eval: {samples_per_problem: 1}
tracking: {experiment: reliability}
"""


def _env(results: Path) -> dict[str, str]:
    return {**os.environ, "OCCCTL_RESULTS_DIR": str(results), "OMP_NUM_THREADS": "1"}


def _steps(results: Path, run_id: str, key: str) -> list[int]:
    store = resolve_store(f"sqlite:///{results / 'mlflow.db'}")
    return sorted(step for step, _ in store.metric_history(run_id, key))


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _worker_pids(study: Path) -> list[int]:
    return [int(m) for log in sorted(study.glob("*.log")) for m in re.findall(r"^cell \S+: pid (\d+)$",
                                                                               log.read_text(), re.M)]


def test_a_sigkilled_study_loses_no_cell(results_dir, tmp_path):
    spec = tmp_path / "k.yaml"
    spec.write_text(CELLS)
    runs, study = results_dir / "runs", results_dir / "studies" / "k"
    cells = [RunDir(runs / "k.seed-0"), RunDir(runs / "k.seed-1")]
    proc = subprocess.Popen([sys.executable, "-m", "occctl", "run", str(spec), "--launcher", "local", "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(results_dir),
                            start_new_session=True)  # its own process group, as a shell job
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not all((c.last_step() or 0) >= 1 for c in cells):
        time.sleep(0.1)
    assert proc.poll() is None, "the study ended before it could be killed"
    workers = _worker_pids(study)
    assert len(workers) == 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(map(_alive, workers)):
        time.sleep(0.1)
    assert not any(map(_alive, workers)), "a worker outlived its study"
    assert not any(c.is_finished() for c in cells)

    # seed-0 finishes without its study, as an orphan worker did: its folder is complete, MLflow never heard
    done = subprocess.run([sys.executable, "-m", "occctl.launchers.cell", "k.seed-0", str(tmp_path / "orphan.log")],
                          env=_env(results_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (tmp_path / "orphan.log").read_text()[-3000:]
    store = resolve_store(f"sqlite:///{results_dir / 'mlflow.db'}")
    orphan_id = cells[0].tracking_state().mlflow_run_id
    assert cells[0].is_finished() and store.run_info(orphan_id)["status"] == "RUNNING"

    again = subprocess.run([sys.executable, "-m", "occctl", "run", str(spec), "--launcher", "local", "--jobs", "2"],
                           env=_env(results_dir), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "published finished cell k.seed-0 to MLflow" in again.stderr
    for cell in cells:
        run_id = cell.tracking_state().mlflow_run_id
        info = store.run_info(run_id)
        assert info["status"] == "FINISHED" and "summary/heldout_acc_after" in info["metrics"], cell.name
        for key in ("occ/lambda", "loss"):
            assert _steps(results_dir, run_id, key) == [1, 2, 3, 4], (cell.name, key)
        assert _steps(results_dir, run_id, "summary/heldout_acc_after") == [4], "the summary once"
    names = [r["name"] for r in store.find_runs(["k"])]
    assert sorted(names) == ["k.seed-0", "k.seed-1"], "one MLflow run per cell"

    from occctl.cli import app

    report = CliRunner().invoke(app, ["report", "--group", "k", "--compare", "occ"],
                                env={"OCCCTL_RESULTS_DIR": str(results_dir), "COLUMNS": "200"})
    assert report.exit_code == 0, report.output
    assert "warning" not in report.stderr, report.stderr
    assert "| occ | 2 |" in (next((results_dir / "reports").iterdir()) / "table.md").read_text(), "n = 2 seeds"


def test_two_runs_of_one_name_started_together(results_dir):
    args = [sys.executable, "-m", "occctl", "run", str(REPO / "specs" / "tiny_occ.yaml"), "--set", "name=twice",
            "--set", "train.steps=4", "--set", "train.prompts_per_generation=8", "--set", "eval.samples_per_problem=1"]
    procs = [subprocess.Popen(args, env=_env(results_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 2)
    assert re.search(r"error: run 'twice': not started: pid \d+ on host \S+ since .* is writing it", loser), loser
    run = RunDir(results_dir / "runs" / "twice")
    store = resolve_store(f"sqlite:///{results_dir / 'mlflow.db'}")
    (found,) = [r for r in store.find_runs() if r["name"] == "twice"]
    assert found["run_id"] == run.tracking_state().mlflow_run_id
    for key in ("occ/lambda", "loss", "mtp/loss"):
        assert _steps(results_dir, found["run_id"], key) == [1, 2, 3, 4], key
    assert [r["step"] for r in run.read_metrics() if "loss" in r] == [1, 2, 3, 4]
