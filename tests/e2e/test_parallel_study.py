"""Parallel studies: the local, Ray and SLURM (submitit's local executor) launchers run a 2-cell study of 2-step
tiny runs to the same summaries as the sequential launcher; with the local launcher a killed cell and a failing
cell are reported while the others finish, the rerun resumes them, and MLflow holds every step exactly once."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from occctl.rundir import RunDir
from occctl.tracking import resolve_store

pytestmark = pytest.mark.slow

TWO_CELLS = """# two seeds, 2 steps
matrix:
  train.seed: [0, 1]
train: {steps: 2, prompts_per_generation: 8}
eval: {samples_per_problem: 1}
tracking: {experiment: launch_test}
"""
VARIES = ("wall_s", "rollout_tokens_per_s", "checkpoint", "mlflow_run_id")  # timings, run folder, MLflow run


def _occctl(results: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results), "OMP_NUM_THREADS": "1"}  # as cpus_per_cell: 1
    return subprocess.run([sys.executable, "-m", "occctl", "run", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _summaries(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/summary.json"))}


def _store(results: Path):
    return resolve_store(f"sqlite:///{results / 'mlflow.db'}")


def _steps_in_mlflow(results: Path, run_id: str, key: str = "occ/lambda") -> list[int]:
    """The steps of one metric in MLflow, a step as often as it was logged (logged every optimizer step)."""
    return sorted(step for step, _ in _store(results).metric_history(run_id, key))


def _ray_daemons() -> int:
    """Ray's daemons running on this machine (a local Ray left behind would keep them)."""
    return sum(1 for p in Path("/proc").glob("[0-9]*/cmdline")
               if any(daemon in _cmdline(p).split(" ")[0] for daemon in ("raylet", "gcs_server")))


def _cmdline(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    spec = root / "two.yaml"
    spec.write_text(TWO_CELLS)
    done = _occctl(root / "results", str(spec))
    assert done.returncode == 0, done.stderr[-3000:]
    return spec, root / "results", _summaries(root / "results")


@pytest.mark.parametrize("launcher", [["local"], ["ray"], ["slurm", "--set", "launcher.slurm.cluster=local"]],
                         ids=["local", "ray", "slurm"])
def test_a_parallel_study_matches_the_sequential_one(sequential, launcher, results_dir):
    if launcher[0] == "ray":
        pytest.importorskip("ray")
    if launcher[0] == "slurm":
        pytest.importorskip("submitit")
    spec, _, expected = sequential
    daemons = _ray_daemons()
    done = _occctl(results_dir, str(spec), "--launcher", launcher[0], "--jobs", "2", *launcher[1:],
                   "--set", "launcher.cpus_per_cell=1")  # one thread per cell, as the sequential runs
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cell two.seed-1  finished  step 2/2" in done.stderr, "plain view lines when not on a terminal"
    got = _summaries(results_dir)
    assert list(got) == list(expected) == ["two.seed-0", "two.seed-1"]
    for name, summary in got.items():
        assert {k: v for k, v in summary.items() if k not in VARIES} == \
            {k: v for k, v in expected[name].items() if k not in VARIES}, name
        assert (results_dir / "studies" / "two" / f"{name}.log").is_file()
        info = _store(results_dir).run_info(summary["mlflow_run_id"])
        assert info["status"] == "FINISHED" and info["tags"]["occctl.group"] == "two"
        assert _steps_in_mlflow(results_dir, summary["mlflow_run_id"]) == [1, 2]
        assert "summary/heldout_acc_after" in info["metrics"]
    assert _ray_daemons() == daemons, "the local Ray that occctl started is stopped"


def _worker_pid(log: Path, cell: str) -> int | None:
    """The pid that the cell's process wrote first into its log, if that process is alive."""
    pids = re.findall(rf"^cell {re.escape(cell)}: pid (\d+)$", log.read_text() if log.exists() else "", re.M)
    return int(pids[-1]) if pids and Path(f"/proc/{pids[-1]}").exists() else None


def test_a_killed_and_a_failing_cell_do_not_stop_the_study_and_resume(results_dir, tmp_path):
    spec = tmp_path / "three.yaml"
    spec.write_text(TWO_CELLS.replace("[0, 1]", "[0, 1, 2]").replace("steps: 2,", "steps: 8, save_every_steps: 4,"))
    runs = results_dir / "runs"
    broken = runs / "three.seed-2" / "trl" / "checkpoint-4"  # a corrupt checkpoint: resuming from it fails
    broken.mkdir(parents=True)
    (broken / "trainer_state.json").write_text("not json")
    (broken / "occctl_checkpoint.json").write_text('{"step": 4}')  # marked complete: resume takes it

    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "occctl", "run", str(spec), "--launcher", "local", "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killed = RunDir(runs / "three.seed-0")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and (killed.last_step() or 0) < 5:
        time.sleep(0.1)  # past its checkpoint at step 4
    pid = _worker_pid(results_dir / "studies" / "three" / "three.seed-0.log", "three.seed-0")
    assert proc.poll() is None and pid is not None, "the cell ended before it could be killed"
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err[-3000:]
    assert "study three: 1/3 cells done, 2 failed" in err
    assert "failed: three.seed-0: exit code -9" in err
    assert "failed: three.seed-2: exit code 1" in err and "3 cells failed: three.seed-0, three.seed-2" in err
    assert RunDir(runs / "three.seed-1").is_finished() and not killed.is_finished()

    (broken / "trainer_state.json").unlink()
    (broken / "occctl_checkpoint.json").unlink()  # no longer complete: skipped
    finished_stamp = (runs / "three.seed-1" / "summary.json").stat().st_mtime_ns
    again = _occctl(results_dir, str(spec), "--launcher", "local", "--jobs", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (runs / "three.seed-1" / "summary.json").stat().st_mtime_ns == finished_stamp, "a finished cell reran"
    log = (results_dir / "studies" / "three" / "three.seed-0.log").read_text()
    assert re.search(r"resuming run 'three.seed-0' from step (4|8)\n", log), log  # killed before or after step 8's
    assert "step 9/8" not in log
    for name, summary in _summaries(results_dir).items():
        run_id = summary["mlflow_run_id"]
        assert RunDir(runs / name).tracking_state().mlflow_run_id == run_id
        for key in ("occ/lambda", "mtp/loss"):
            assert _steps_in_mlflow(results_dir, run_id, key) == list(range(1, 9)), (name, key)


def test_a_changed_spec_is_refused_before_any_cell_starts(sequential):
    spec, results, _ = sequential
    changed = _occctl(results, str(spec), "--launcher", "local", "--jobs", "2", "--set", "train.lr=0.001")
    assert changed.returncode == 2
    assert "run 'two.seed-0' exists with a different spec" in changed.stderr
    assert "run 'two.seed-1' exists with a different spec" in changed.stderr
    assert not (results / "studies").exists(), "no cell was started"
