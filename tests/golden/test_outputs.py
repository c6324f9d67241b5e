"""Golden outputs of `occctl ls` and `occctl report` on fixed inputs (a run tree and an MLflow store built here).

The expected files under ``tests/golden/expected/`` were produced by the code as it was before the run folder,
tracking and report modules were reorganised; a change to them is a change users see. Regenerate (after
checking the difference is intended) with ``OCCCTL_REGEN_GOLDEN=1 python -m pytest tests/golden``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from occctl.cli import app

EXPECTED = Path(__file__).parent / "expected"
AGE = 1_700_000_000.0  # fixed mtimes: wall times of unfinished runs come from them


def check(name: str, text: str) -> None:
    path = EXPECTED / name
    if os.environ.get("OCCCTL_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"missing golden file {path}: regenerate with OCCCTL_REGEN_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"output differs from {path}"


def make_run(root: Path, name: str, spec: dict | None, summary: dict | bytes | None = None,
             steps: tuple[int, ...] = ()) -> None:
    d = root / "runs" / name
    (d / "checkpoints").mkdir(parents=True)
    if spec is not None:
        (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    if steps:
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.1}) + "\n" for s in steps))
    if summary is not None:
        (d / "summary.json").write_bytes(summary if isinstance(summary, bytes) else json.dumps(summary).encode())
    for path in [d, *d.rglob("*")]:
        os.utime(path, (AGE + len(path.parts), AGE + len(path.parts)))


def spec(name: str, regime: str = "occ", seed: int = 0, group: str | None = None, enabled: bool = True) -> dict:
    data = {"name": name, "backend": "trl", "algorithm": {"name": "dapo"}, "train": {"steps": 40, "seed": seed},
            "mtp": {"enabled": enabled, "regime": regime}, "tracking": {"mlflow": True, "experiment": "tiny"}}
    return {**data, "group": group} if group else data


def summary(name: str, regime: str, seed: int, acc: float, **kw) -> dict:
    return {"name": name, "regime": regime, "algorithm": "dapo", "seed": seed, "steps": 40, "wall_s": 3723.0,
            "heldout_acc_after": acc, "mtp_acceptance_after": 0.41 + seed / 100, "lambda_mean": 0.0123, **kw}


@pytest.fixture
def run_tree(results_dir):
    for seed, regime in ((0, "detach"), (1, "detach"), (0, "occ")):
        name = f"study.regime-{regime}.seed-{seed}"
        make_run(results_dir, name, spec(name, regime, seed, "study"), summary(name, regime, seed, 0.5 + seed / 7))
    make_run(results_dir, "solo", spec("solo", enabled=False), summary("solo", "none", 3, 0.25, wall_s=42.4))
    make_run(results_dir, "half", spec("half", seed=5), steps=(1, 2, 3, 20))
    make_run(results_dir, "torn", spec("torn"), summary=b'{"steps": 4', steps=(1, 2))
    make_run(results_dir, "nospec", None, steps=(7,))
    make_run(results_dir, "nan", spec("nan"), summary=b'{"steps": 40, "heldout_acc_after": NaN, "wall_s": 59.6}')
    return results_dir


def test_ls_table_and_json(run_tree):
    runner = CliRunner()
    table = runner.invoke(app, ["ls", "--no-mlflow"], env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    check("ls_table.txt", table.stdout)
    narrow = runner.invoke(app, ["ls", "--no-mlflow", "--all"], env={"COLUMNS": "70"})
    check("ls_table_narrow.txt", narrow.stdout)
    listed = runner.invoke(app, ["ls", "--json", "--no-mlflow"])
    assert listed.exit_code == 0, listed.output
    check("ls.json", listed.stdout.replace(str(run_tree), "<results>"))


def log_study(uri: str) -> None:
    """Finished MLflow runs as `occctl run` leaves them: tags, params, per-step and summary metrics."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("tiny")
    for regime, base in (("detach", 0.50), ("occ", 0.53), ("ce", 0.47)):
        for seed in range(3 if regime != "ce" else 1):
            tags = {"occctl.regime": regime, "occctl.seed": str(seed), "occctl.group": "study",
                    "occctl.cell.variant": f"v{seed % 2}"}
            run = client.create_run(exp, run_name=f"study.{regime}.{seed}", tags=tags)
            rid = run.info.run_id
            client.log_param(rid, "train.seed", str(seed))
            acc = base + 0.01 * seed + (0.02 if regime == "occ" and seed == 1 else 0.0)
            metrics = [Metric("summary/heldout_acc_after", acc, 0, 40),
                       Metric("summary/heldout_greedy_after", acc - 0.05, 0, 40),
                       Metric("summary/reward_mean", 0.3 + seed / 50, 0, 40),
                       Metric("summary/mtp_acceptance_after", 0.6 - (0.1 if regime == "occ" else 0) + seed / 100,
                              0, 40),
                       Metric("eval/math6/aime24/avg_at_4/math_verify_v1", 0.1 + seed / 30, 0, 40),
                       Metric("eval/math6/math500/avg_at_4/math_verify_v1", 0.6 - seed / 40, 0, 40)]
            metrics += [Metric("reward", 0.1 * step + seed, 0, step) for step in range(1, 5)]
            metrics += [Metric("occ/lambda", 0.01 * step, 0, step) for step in range(1, 5)] if regime == "occ" else []
            client.log_batch(rid, metrics=metrics)
            client.set_terminated(rid, "FINISHED")


@pytest.fixture
def store(results_dir):
    results_dir.mkdir(parents=True)
    log_study(f"sqlite:///{results_dir / 'mlflow.db'}")
    return results_dir


def test_report_tables(store):
    runner = CliRunner()
    cases = {
        "report_regimes": ["report", "--group", "study", "--compare", "detach,occ,ce", "--metric",
                           "summary/heldout_acc_after", "--metric", "summary/mtp_acceptance_after"],
        "report_math6": ["report", "--group", "study", "--compare", "detach,occ", "--name", "m6"],
        "report_variant": ["report", "--experiment", "tiny", "--rows", "variant", "--compare", "all",
                           "--regime", "detach", "--metric", "summary/heldout_acc_after"],
        "report_at_step": ["report", "--group", "study", "--rows", "mtp.regime,variant", "--compare",
                           "detach/v1,detach,occ", "--metric", "reward", "--metric", "occ/lambda",
                           "--at-step", "2", "--at-step", "4"],
    }
    for case, args in cases.items():
        result = runner.invoke(app, args, env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.output
        directory = Path(result.stderr.split(" files to ")[1].split(";")[0].strip())
        check(f"{case}.stdout.txt", result.stdout)
        check(f"{case}.table.md", (directory / "table.md").read_text())
        check(f"{case}.table.csv", (directory / "table.csv").read_text())
        check(f"{case}.files.txt", "\n".join(sorted(p.name for p in directory.iterdir())) + "\n")
