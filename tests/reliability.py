"""Builders of damaged inputs for the reliability tests (importable: tests/ is on sys.path via conftest): a tiny
real checkpoint, fake finished run folders, damaged .safetensors files, an MLflow store of a small study, and the
check that a CLI result is one error line with no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from occctl.checkpoint_marker import mark_complete
from occctl.spec import dump_spec, load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "tiny_occ.yaml"


def tiny_checkpoint(directory: Path) -> Path:
    """The tiny preset's untrained model saved as an occctl checkpoint (HF weights + native MTP head), <1 s."""
    from occctl.models import build_tiny, save_checkpoint
    from occctl.spec import TinyModelSpec

    return save_checkpoint(directory, build_tiny(TinyModelSpec(), seed=0))


def damage(file: Path, how: str) -> None:
    """``truncated`` (half its bytes), ``empty`` (0 bytes) or ``header`` (a header length beyond the file)."""
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        file.write_bytes(b"")
    elif how == "header":
        file.write_bytes((10**9).to_bytes(8, "little") + data[8:])
    else:
        raise ValueError(how)


def fake_run(results: Path, name: str, checkpoint: Path, *overrides: str, marker: bool = True) -> Path:
    """A finished run folder as `occctl run` leaves it (spec.yaml, summary.json, checkpoints/final), trained by
    nobody: ``checkpoint`` is copied in as its final export."""
    spec = load_spec(SPEC, [f"name={name}", "train.steps=2", *overrides])
    run = results / "runs" / name
    final = run / "checkpoints" / "final"
    shutil.copytree(checkpoint, final)
    if marker:
        mark_complete(final)
    (run / "spec.yaml").write_text(dump_spec(spec))
    (run / "summary.json").write_text(json.dumps({"name": name, "regime": "occ", "steps": 2, "seed": 0,
                                                  "checkpoint": str(final), "mlflow_run_id": None}))
    return run


def log_runs(uri: str, cells: list[tuple[str, int, str]], group: str = "g") -> None:
    """MLflow runs of a study as `occctl run` leaves them: (regime, seed, status) each, with summary metrics."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    exp_id = exp.experiment_id if exp else client.create_experiment("tiny")
    for regime, seed, status in cells:
        tags = {"occctl.regime": regime, "occctl.seed": str(seed), "occctl.group": group,
                "occctl.cell.mtp.regime": regime}
        run = client.create_run(exp_id, run_name=f"{group}.regime-{regime}.seed-{seed}", tags=tags)
        client.log_param(run.info.run_id, "train.seed", str(seed))
        if status == "FINISHED":
            client.log_batch(run.info.run_id, metrics=[Metric("summary/heldout_acc_after", 0.5 + seed / 10, 0, 2),
                                                       Metric("summary/reward_mean", 0.3, 0, 2)])
        client.set_terminated(run.info.run_id, status)


def invoke(args: list[str], **env: str):
    """``occctl ARGS`` in-process (CliRunner), stderr apart, lines unwrapped."""
    from typer.testing import CliRunner

    from occctl.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "300", **env})


def error_lines(result) -> list[str]:
    """The ``error:`` lines of a CliRunner result's stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(result, code: int, fragment: str) -> None:
    """Exit ``code``, exactly one ``error:`` line holding ``fragment``, no traceback, no uncaught exception."""
    shown = f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exit_code == code, shown
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    assert "Traceback" not in result.output, shown
    lines = error_lines(result)
    assert len(lines) == 1 and fragment in lines[0], shown
