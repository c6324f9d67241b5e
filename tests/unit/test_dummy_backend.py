"""A backend written from the Backend docstring alone (``occctl/backend.py``: "Adding a backend") runs through
`occctl run`, `occctl ls`, `occctl eval --suite tiny` and `occctl report`, registered by this test only. It logs a
NaN loss, so its summary.json holds nulls (strict JSON, ``occctl.jsonio``) that every command reads."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from occctl.backend import MetricSink, Plan, TrainResult
from occctl.cli import app
from backend_registration import register_backend  # tests/, on sys.path via its conftest
from occctl.errors import EnvError
from occctl.rundir import RunDir
from occctl.spec import Spec

SPEC = """# a dummy backend's run: 3 steps on the embedded task
name: dummy_run
backend: dummy
task: {heldout_problems: 8}
warmup: {enabled: false}
train: {steps: 3, save_every_steps: 3}
mtp: {regime: occ}
eval: {samples_per_problem: 2}
tracking: {experiment: dummy}
"""


class DummyBackend:
    """Trains nothing: the spec's model, saved as the docstring says (``occctl.models.save_checkpoint``)."""

    name: ClassVar[str] = "dummy"

    def check(self, spec: Spec) -> list[str]:
        return []

    def prepare(self, spec: Spec, run_dir: RunDir) -> Plan:
        return Plan(spec=spec, run_dir=run_dir, native_config={"dummy_steps": spec.train.steps})

    def resume_step(self, plan: Plan) -> int:
        return plan.spec.train.steps if (plan.run_dir / "dummy" / "done").is_dir() else 0

    def train(self, plan: Plan, sink: MetricSink, progress: Any = None) -> TrainResult:
        from occctl.models import load_checkpoint, load_model, save_checkpoint

        spec = plan.spec
        loaded = load_checkpoint(plan.warm_start) if plan.warm_start else load_model(spec.model, spec.train.seed)
        for step in range(1, spec.train.steps + 1):
            sink(step, {"reward": 0.25, "loss": math.nan, "mtp/loss": 1.0})
        native = save_checkpoint(plan.run_dir / "dummy" / "done", loaded)
        sink.commit(spec.train.steps)
        return TrainResult(checkpoint=self.export(native, plan.run_dir.final_checkpoint),
                           summary={"dummy_inf": math.inf})

    def export(self, checkpoint: Path, out_dir: Path) -> Path:
        shutil.copytree(checkpoint, out_dir, dirs_exist_ok=True)
        return out_dir

    def bench_overhead(self, plan: Plan, steps: int, progress: Any = None, resolve: float = 0.0) -> dict[str, Any]:
        raise EnvError("the dummy backend has no MTP regimes to time")

    def bench_rollout(self, plan: Plan, rounds: int, progress: Any = None) -> dict[str, Any]:
        raise EnvError("the dummy backend has no rollouts to time")


def _strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def dummy(monkeypatch, results_dir, tmp_path):
    return register_backend(monkeypatch, tmp_path, "dummy", f"{__name__}:DummyBackend", SPEC)


def test_a_dummy_backend_runs_and_is_listed_evaluated_and_reported(dummy, results_dir, tmp_path):
    cli = CliRunner()
    ran = cli.invoke(app, ["run", str(dummy)])
    assert ran.exit_code == 0, ran.output
    run = RunDir(results_dir / "runs" / "dummy_run")
    summary = _strict(run.summary_file.read_text())
    assert summary["train_loss"] is None and summary["dummy_inf"] is None and summary["lambda_mean"] is None
    assert summary["steps"] == 3 and summary["reward_last"] == 0.25 and summary["heldout_k"] == 2
    assert all(_strict(line)["loss"] is None for line in run.metrics_file.read_text().splitlines()[:3])

    listed = cli.invoke(app, ["ls", "--json", "--no-mlflow"])
    assert listed.exit_code == 0, listed.output
    (row,) = _strict(listed.stdout)
    assert (row["name"], row["status"], row["steps_done"], row["lambda_mean"]) == ("dummy_run", "finished", 3, None)

    scored = cli.invoke(app, ["eval", "--run", "dummy_run", "--suite", "tiny"], env={"COLUMNS": "160"})
    assert scored.exit_code == 0, scored.output
    assert f"heldout_acc_after {summary['heldout_acc_after']} at k=2 (matches)" in scored.stdout
    (results,) = (run.path / "eval" / "tiny").glob("results_*.json")
    assert _strict(results.read_text())["benchmarks"]

    out = tmp_path / "report"
    reported = cli.invoke(app, ["report", "--compare", "all", "--experiment", "dummy", "--out", str(out)],
                          env={"COLUMNS": "160"})
    assert reported.exit_code == 0, reported.output
    assert "occ" in reported.stdout and (out / "table.md").is_file()
