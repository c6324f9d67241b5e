"""Resume after SIGKILL: the rerun ends where an uninterrupted run ends, with every step logged exactly once."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from occctl.tracking import resolve_store

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "tiny_occ.yaml"
SETTINGS = ["train.steps=12", "train.save_every_steps=4", "train.prompts_per_generation=8", "eval.samples_per_problem=1",
            "mtp.occ.ema=0.5"]  # ema: the calibrator carries state across steps, so it must be restored too

pytestmark = pytest.mark.slow


def _cmd(name):
    args = [sys.executable, "-m", "occctl", "run", str(SPEC), "--set", f"name={name}"]
    for item in SETTINGS:
        args += ["--set", item]
    return args


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_rerun_matches_an_uninterrupted_run(results_dir):
    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir), "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cmd("straight"), capture_output=True, text=True, env=env, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = results_dir / "runs" / "killed"
    kill_at = random.Random().randint(5, 11)  # after the checkpoint at step 4 or 8, before the end
    proc = subprocess.Popen(_cmd("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and any(r["step"] >= kill_at for r in _rows(run)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before step {kill_at}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()

    again = subprocess.run(_cmd("killed"), capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming run 'killed' from step" in again.stderr

    final = lambda name, f: load_file(str(results_dir / "runs" / name / "checkpoints" / "final" / f))  # noqa: E731
    for file in ("model.safetensors", "model-mtp.safetensors"):
        a, b = final("straight", file), final("killed", file)
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst <= 1e-6, f"{file}: parameters differ by {worst} (killed at step {kill_at})"

    ref_rows, rows = _rows(results_dir / "runs" / "straight"), _rows(run)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows], "a step is missing or logged twice"
    for a, b in zip(ref_rows, rows):
        for key in ("loss", "reward", "occ/lambda", "mtp/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    summary = json.loads((run / "summary.json").read_text())
    steps = [s for s, _ in resolve_store().metric_history(summary["mlflow_run_id"], "occ/lambda")]
    assert steps == list(range(1, 13)), "MLflow: every step exactly once, in the same run"

    # the last TRL checkpoint, exported as `occctl eval --checkpoint` does, is the final checkpoint
    from backends.trl_backend.adapter import TrlBackend

    exported = TrlBackend().export(results_dir / "runs" / "straight" / "trl" / "checkpoint-12", results_dir / "x12")
    for file in ("model.safetensors", "model-mtp.safetensors"):
        a, b = final("straight", file), load_file(str(exported / file))
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a), file


def test_a_nan_loss_stops_the_run_and_the_rerun_resumes(results_dir, monkeypatch):
    import backends.trl_backend.hooks as hooks
    from occctl.errors import RunError
    from occctl.runner import run_spec
    from occctl.spec import load_spec

    spec = load_spec(SPEC, ["name=nan", "train.steps=8", "train.save_every_steps=4", "train.prompts_per_generation=8",
                            "eval.samples_per_problem=1"])
    real, calls = hooks.mtp_objective, []

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 6:  # the 6th optimizer step's loss becomes NaN
            return type(out)(loss=out.loss * float("nan"), coef=out.coef, stats=out.stats)
        return out

    monkeypatch.setattr(hooks, "mtp_objective", poisoned)
    with pytest.raises(RunError, match="training stopped before updating the weights"):
        run_spec(spec)
    run = results_dir / "runs" / "nan"
    assert not (run / "summary.json").exists() and (run / "trl" / "checkpoint-4").is_dir()
    assert max(r["step"] for r in _rows(run)) == 5  # step 6 never completed

    monkeypatch.setattr(hooks, "mtp_objective", real)
    summary = run_spec(spec)
    assert summary["steps"] == 8
    assert [r["step"] for r in _rows(run) if "loss" in r] == list(range(1, 9))


def test_killed_after_its_last_checkpoint_the_rerun_takes_no_extra_step(results_dir):
    """Killed between the last checkpoint and the summary (e.g. in the final eval): the rerun resumes at the last
    step, and must not train on (HF's loop checks max_steps only after a step)."""
    import shutil

    from occctl.runner import run_spec
    from occctl.spec import load_spec

    spec = load_spec(SPEC, ["name=late", "train.steps=8", "train.save_every_steps=4", "train.prompts_per_generation=8",
                            "eval.samples_per_problem=1"])
    run_spec(spec)
    run = results_dir / "runs" / "late"
    before = {f: load_file(str(run / "checkpoints" / "final" / f)) for f in ("model.safetensors", "model-mtp.safetensors")}
    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints" / "final")
    summary = run_spec(spec)
    assert summary["steps"] == 8
    assert [r["step"] for r in _rows(run) if "loss" in r] == list(range(1, 9))
    for file, a in before.items():
        b = load_file(str(run / "checkpoints" / "final" / file))
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a), file
