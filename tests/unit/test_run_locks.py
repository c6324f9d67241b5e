"""The run-folder lock between processes: a holder killed with SIGKILL leaves a lock the next run takes over; a
study dispatches no cell another process holds, on any launcher, and says who holds it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from occctl.rundir import RunDir, TrackingState
from occctl.runlock import hold_run, holder
from reliability import invoke

STUDY = """# two seeds
matrix:
  train.seed: [0, 1]
train: {steps: 2}
tracking: {mlflow: false}
"""


def test_the_lock_of_a_sigkilled_holder_is_taken_over(results_dir):
    code = textwrap.dedent("""
        import os, signal, sys
        from occctl.rundir import RunDir, TrackingState
        from occctl.runlock import hold_run
        with hold_run(RunDir.named("r")):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)})
    assert proc.stdout.readline().strip() == "held"
    run = RunDir.named("r")
    assert holder(run).startswith(f"pid {proc.pid} on host ")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert holder(run) is None, "the kernel released the dead holder's lock"
    with hold_run(run):
        assert json.loads((run.path / "run.lock").read_text())["pid"] == os.getpid()


def test_a_study_dispatches_no_cell_another_process_holds(results_dir, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(STUDY)
    for launcher in (["--launcher", "local", "--jobs", "2"], []):
        with hold_run(RunDir.named("s.seed-0")), hold_run(RunDir.named("s.seed-1")):
            result = invoke(["run", str(spec), *launcher])
        assert result.exit_code == 1, result.output
        assert "2 of 2 cells failed" in result.stderr
        assert result.stderr.count(f"pid {os.getpid()}") >= 2, result.stderr
        assert not (results_dir / "runs" / "s.seed-0" / "spec.yaml").exists(), "a held folder was written"


@pytest.mark.parametrize("launcher", [[], ["--launcher", "local", "--jobs", "2"]], ids=["sequential", "local"])
def test_a_rerun_publishes_finished_cells_mlflow_lacks_exactly_once(results_dir, tmp_path, launcher):
    """Cells whose folders finished while their study was dead (MLflow still RUNNING, no metrics)."""
    from mlflow.tracking import MlflowClient

    from occctl.spec import dump_spec, load_specs

    spec = tmp_path / "s.yaml"
    spec.write_text(STUDY.replace("{mlflow: false}", "{experiment: e}"))
    results_dir.mkdir(parents=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{results_dir / 'mlflow.db'}")
    experiment = client.create_experiment("e")
    ids = {}
    for cell in load_specs(spec, []):
        run = RunDir.named(cell.name)
        run.path.mkdir(parents=True)
        ids[cell.name] = client.create_run(experiment, run_name=cell.name).info.run_id
        run.write_spec(cell)
        run.write_tracking_state(TrackingState(mlflow_run_id=ids[cell.name]))
        run.metrics_file.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2)))
        run.write_summary({"name": cell.name, "steps": 2, "heldout_acc_after": 0.5, "mlflow_run_id": ids[cell.name]})
        assert dump_spec(cell) == run.spec_text()
    for attempt in range(2):
        result = invoke(["run", str(spec), *launcher])
        assert result.exit_code == 0, result.output
        for name, run_id in ids.items():
            assert client.get_run(run_id).info.status == "FINISHED", name
            assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2], (name, attempt)
            assert [m.step for m in client.get_metric_history(run_id, "summary/heldout_acc_after")] == [2]
