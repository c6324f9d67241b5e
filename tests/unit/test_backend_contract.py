"""The Backend protocol is enough to add a backend: a fake third one, registered in a test, runs through
`occctl run` (killed half-way, then resumed), `occctl ls`, `occctl eval --suite tiny` (its export is a real tiny
checkpoint, ``occctl.models.save_checkpoint`` of the tiny preset), `occctl bench overhead` and the export of one of
its native checkpoints for `occctl eval`; its held-out numbers come from the runner, which evaluates the
exported checkpoint (the fake reports none of them), and an export that breaks the contract is refused in one line
before summary.json. Copy ``FakeBackend`` to start a real one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from occctl.backend import MetricSink, Plan, TrainResult
from occctl.cli import app
from backend_registration import register_backend  # tests/, on sys.path via its conftest
from occctl.rundir import RunDir
from occctl.spec import Spec

SPEC = """# a fake backend's run: 8 steps, a checkpoint every 2
name: fake_run
backend: fake
task: {heldout_problems: 16}
warmup: {enabled: false}
train: {steps: 8, save_every_steps: 2}
mtp: {regime: occ}
eval: {samples_per_problem: 2}
tracking: {experiment: fake}
"""
KILL_AT: dict[str, int] = {}  # run name -> the step at which train() dies (as a killed process would)
BROKEN_EXPORT: dict[str, str] = {}  # run name -> how its export breaks the contract (see FakeBackend.export)


class FakeBackend:
    """Writes a checkpoint folder (the untrained start model) every ``save_every_steps`` steps; reward = step / 10."""

    name: ClassVar[str] = "fake"

    def check(self, spec: Spec) -> list[str]:
        return [f"backend_options: the fake backend takes none; got {sorted(spec.backend_options)}"] \
            if spec.backend_options else []

    def prepare(self, spec: Spec, run_dir: RunDir) -> Plan:
        return Plan(spec=spec, run_dir=run_dir, native_config={"fake_steps": spec.train.steps})

    def resume_step(self, plan: Plan) -> int:
        steps = [int(p.name.split("-")[1]) for p in (plan.run_dir / "fake").glob("checkpoint-*")]
        return max(steps, default=0)

    def train(self, plan: Plan, sink: MetricSink, progress: Any = None) -> TrainResult:
        from occctl.models import save_checkpoint
        from occctl.pipeline import start_model

        spec = plan.spec
        assert plan.warm_start is None, "warmup.enabled is false: the runner passes no warm start"
        loaded = start_model(spec, plan.warm_start)
        task = progress.add_task("fake", total=spec.train.steps, unit="step") if progress else None
        for step in range(self.resume_step(plan) + 1, spec.train.steps + 1):
            if KILL_AT.get(spec.name) == step:
                raise RuntimeError(f"killed at step {step}")
            sink(step, {"reward": step / 10, "occ/lambda": 0.01 * step})
            if progress:
                progress.update(task, completed=step)
            if spec.train.save_every_steps and step % spec.train.save_every_steps == 0:
                native = save_checkpoint(plan.run_dir / "fake" / f"checkpoint-{step}", loaded)
                (native / "fake_state.json").write_text(json.dumps({"step": step, "mlflow": plan.mlflow_run_id}))
                sink.commit(step)
        final = plan.run_dir.final_checkpoint
        if BROKEN_EXPORT.get(spec.name) == "elsewhere":
            final = plan.run_dir / "fake" / "export"
        final = self.export(plan.run_dir / "fake" / f"checkpoint-{spec.train.steps}", final)
        return TrainResult(checkpoint=final, summary={"fake_note": 1.0})

    def export(self, checkpoint: Path, out_dir: Path) -> Path:
        """The native checkpoint is already ``save_checkpoint``'s output (HF weights, tokenizer, the head in the
        tiny preset's native layout, ``model-mtp.safetensors``): a copy."""
        shutil.copytree(checkpoint, out_dir)
        broken = next((BROKEN_EXPORT[part] for part in out_dir.parts if part in BROKEN_EXPORT), None)
        for name in {"config": ["config.json"], "tokenizer": ["tokenizer.json", "tokenizer_config.json"],
                     "head": ["model-mtp.safetensors"], "weights": ["model.safetensors"]}.get(broken, []):
            (out_dir / name).unlink()
        if broken == "truncated":
            (out_dir / "model.safetensors").write_bytes((out_dir / "model.safetensors").read_bytes()[:100])
        return out_dir

    def bench_overhead(self, plan: Plan, steps: int, progress: Any = None, resolve: float = 0.0) -> dict[str, Any]:
        return {"spec": plan.spec.name, "steps_timed": steps, "completions_per_step": plan.spec.completions_per_step,
                "median_step_s": {"plain": 1.0, "occ": 1.5}, "mean_step_s": {"plain": 1.1, "occ": 1.6},
                "occ_over_plain": 1.5, "occ_over_plain_ci95": [1.4, 1.6], "mean_occ_over_plain": 1.45}

    def bench_rollout(self, plan: Plan, rounds: int, progress: Any = None) -> dict[str, Any]:
        return {"rounds_timed": rounds, "completions_per_round": 4, "max_new_tokens": 8,
                "tokens_per_s": {"plain": 100.0, "speculative": 150.0}, "spec_speedup": 1.5,
                "spec_speedup_ci95": [1.4, 1.6], "accept_rate": 0.8, "mean_accept_len": 1.8,
                "load_average_1min": [1.0, 1.0], "model": plan.spec.model.path}


@pytest.fixture
def fake(monkeypatch, results_dir, tmp_path):
    return register_backend(monkeypatch, tmp_path, "fake", f"{__name__}:FakeBackend", SPEC)


def test_a_fake_backend_runs_resumes_and_is_listed(fake, results_dir):
    from occctl.tracking import resolve_store

    cli = CliRunner()
    KILL_AT["fake_run"] = 5
    killed = cli.invoke(app, ["run", str(fake)])
    assert isinstance(killed.exception, RuntimeError) and "killed at step 5" in str(killed.exception)
    run = RunDir(results_dir / "runs" / "fake_run")
    assert run.last_step() == 4 and not run.is_finished()
    listed = json.loads(cli.invoke(app, ["ls", "--json"]).stdout)
    assert [(r["name"], r["status"], r["mlflow_status"], r["steps_done"]) for r in listed] == [
        ("fake_run", "failed", "FAILED", 4)]

    del KILL_AT["fake_run"]
    resumed = cli.invoke(app, ["run", str(fake)])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming run 'fake_run' from step 4" in resumed.stderr
    assert "step 8/8" in resumed.stderr, "plain progress lines when the console is not a terminal"
    summary = run.read_summary()
    assert summary["steps"] == 8 and summary["reward_last"] == 0.8 and summary["fake_note"] == 1.0
    assert Path(summary["checkpoint"]) == run.final_checkpoint
    expected = _heldout_of(run.final_checkpoint, fake)
    assert summary["heldout_acc_after"] == expected["avg_at_k"] and summary["heldout_k"] == 2
    assert summary["heldout_greedy_after"] == expected["greedy"]
    assert summary["mtp_acceptance_after"] == expected["mtp_acceptance"]
    assert summary["heldout_acc_before"] == summary["heldout_acc_after"], "the fake never moves the start model"
    assert run.read_metrics()[-1] == {"step": 8, **{f"eval/tiny/{k}": v for k, v in expected.items()}}
    state = run.tracking_state()
    assert state.mlflow_run_id == summary["mlflow_run_id"] and state.published_step == 8
    native = json.loads((run.final_checkpoint / "fake_state.json").read_text())
    assert native["mlflow"] == summary["mlflow_run_id"], "the Plan carried the run's MLflow run id"
    history = resolve_store().metric_history(summary["mlflow_run_id"], "reward")
    assert sorted(step for step, _ in history) == list(range(1, 9)), "every step reaches MLflow exactly once"

    table = cli.invoke(app, ["ls", "--no-mlflow"], env={"COLUMNS": "160"})
    assert "fake_run" in table.stdout and "finished" in table.stdout and "8/8" in table.stdout
    assert f"{expected['avg_at_k']:.3f}" in table.stdout

    scored = cli.invoke(app, ["eval", "--run", "fake_run", "--suite", "tiny"], env={"COLUMNS": "160"})
    assert scored.exit_code == 0, scored.output
    assert f"run summary: heldout_acc_after {expected['avg_at_k']} at k=2 (matches)" in scored.stdout


def _heldout_of(checkpoint: Path, spec_file: Path) -> dict[str, float]:
    """The runner's held-out evaluation, redone here on the checkpoint."""
    from occctl.pipeline import HeldoutEval, load_export
    from occctl.spec import load_spec

    spec = load_spec(spec_file)
    evaluate = HeldoutEval(spec)
    try:
        return evaluate(load_export(checkpoint, spec))
    finally:
        evaluate.close()


@pytest.mark.parametrize("broken, message", [
    ("config", "is not an HF model directory (no config.json)"),
    ("tokenizer", "has no tokenizer files"),
    ("head", "has no MTP head (mtp.enabled is true)"),
    ("weights", "has no model weights"),
    ("truncated", "model.safetensors is not a readable safetensors file"),
    ("elsewhere", "checkpoints/final, the folder `occctl eval` reads"),
])
def test_an_export_that_breaks_the_contract_writes_no_summary(fake, results_dir, broken, message):
    BROKEN_EXPORT["fake_run"] = broken
    try:
        result = CliRunner().invoke(app, ["run", str(fake)])
    finally:
        del BROKEN_EXPORT["fake_run"]
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), f"no traceback: {result.exception!r}"
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: the backend's export ") and message in line, result.stderr
    assert str(results_dir / "runs" / "fake_run") in line, "the message names the folder"
    assert not RunDir(results_dir / "runs" / "fake_run").is_finished()


def test_a_native_checkpoint_is_exported_for_eval(fake, results_dir):
    from occctl.eval.targets import resolve_target

    assert CliRunner().invoke(app, ["run", str(fake)]).exit_code == 0
    run = RunDir(results_dir / "runs" / "fake_run")
    target = resolve_target(None, str(run / "fake" / "checkpoint-4"), None)
    assert Path(target.model) == run.checkpoints / "step-4" and target.step == 4 and target.run_name == "fake_run"
    from occctl.models import has_mtp_head

    assert has_mtp_head(run.checkpoints / "step-4")
    final = resolve_target(None, str(run.final_checkpoint), None)
    assert Path(final.model) == run.final_checkpoint and final.step == 8


def test_bench_goes_through_the_registry(fake, tmp_path):
    out = tmp_path / "bench" / "fake.json"
    result = CliRunner().invoke(app, ["bench", "overhead", str(fake), "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "occ_over_plain 1.500 [1.400, 1.600]" in result.stdout and "mean_occ_over_plain" not in result.stdout
    assert json.loads(out.read_text())["occ_over_plain"] == 1.5
    again = CliRunner().invoke(app, ["bench", "overhead", str(fake), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    assert CliRunner().invoke(app, ["bench", "overhead", str(fake), "--out", str(out), "--force"]).exit_code == 0


def test_an_unregistered_backend_is_a_spec_error(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.replace("backend: fake", "backend: trll"))
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2 and "unknown backend 'trll' (did you mean 'trl'?)" in result.output


def test_bench_rollout_goes_through_the_registry(fake, tmp_path):
    out = tmp_path / "rollout.json"
    result = CliRunner().invoke(app, ["bench", "rollout", str(fake), "--rounds", "3", "--out", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["rounds_timed"] == 3 and saved["goal"]["met"] and "1.500 [1.400, 1.600]" in result.output


def test_bench_rollout_from_each_checkpoint_in_turn(fake, tmp_path):
    from occctl.models import build_tiny, save_checkpoint
    from occctl.spec import TinyModelSpec

    tiny = build_tiny(TinyModelSpec(), seed=0)
    starts = [save_checkpoint(tmp_path / "runs" / f"study.{name}" / "checkpoints" / "final", tiny) for name in "ab"]
    out, table = tmp_path / "rollout.json", tmp_path / "rollout.md"
    result = CliRunner().invoke(app, ["bench", "rollout", str(fake), "--rounds", "2", "--out", str(out),
                                      "--markdown", str(table), *(a for c in starts for a in ("--checkpoint", str(c)))])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert [r["checkpoint"] for r in saved["checkpoints"]] == [str(c) for c in starts]
    assert [r["model"] for r in saved["checkpoints"]] == [str(c) for c in starts], "the backend got each start"
    rows = [line for line in table.read_text().splitlines() if line.startswith("| study.")]
    assert [row.split(" | ")[0] for row in rows] == ["| study.a", "| study.b"] and "1.500 [1.400, 1.600]" in rows[0]
    headless = tmp_path / "plain"
    headless.mkdir()
    (headless / "config.json").write_text("{}")
    refused = CliRunner().invoke(app, ["bench", "rollout", str(fake), "--checkpoint", str(headless)])
    assert refused.exit_code == 2 and "no MTP head" in refused.output
