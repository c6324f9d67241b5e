"""Strict JSON: occctl writes a non-finite float as ``null`` (never a bare NaN / Infinity), and its readers treat
``null`` as missing (``occctl.jsonio``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from occctl.cli import app
from occctl.jsonio import dumps, finite, number
from occctl.rundir import RunDir, write_json_atomic


def strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as jq and browsers do."""
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_are_written_as_null():
    data = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": float("nan"), "e": "NaN"}, "f": None}
    assert finite(data) == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": None, "e": "NaN"}, "f": None}
    assert strict(dumps(data)) == finite(data)
    with pytest.raises(ValueError):
        strict(json.dumps(data))  # what the default json.dumps writes: refused by a strict parser
    assert math.isnan(number(None)) and number(True, 0.0) == 0.0 and number("1", -1.0) == -1.0
    assert number(3) == 3.0 and isinstance(number(3), float)


def test_a_summary_with_nan_is_strict_json_and_metrics_rows_read_back_as_nan(results_dir):
    run = RunDir(results_dir / "runs" / "r")
    run.write_summary({"name": "r", "train_loss": math.nan, "lambda_mean": -math.inf, "steps": 3, "warm_start": None})
    assert strict(run.summary_file.read_text()) == {"name": "r", "train_loss": None, "lambda_mean": None, "steps": 3,
                                                    "warm_start": None}
    write_json_atomic(run.path / "other.json", {"x": [math.nan]})
    assert strict((run.path / "other.json").read_text()) == {"x": [None]}
    run.metrics_file.write_text(dumps({"step": 1, "loss": math.nan, "reward": 0.5}) + "\n")
    assert strict(run.metrics_file.read_text()) == {"step": 1, "loss": None, "reward": 0.5}
    (row,) = run.read_metrics()
    assert math.isnan(row["loss"]) and row["reward"] == 0.5 and row["step"] == 1


def _finished_run(root: Path, name: str, summary_text: str) -> None:
    d = root / "runs" / name
    (d / "checkpoints").mkdir(parents=True)
    spec = {"name": name, "backend": "trl", "train": {"steps": 3}, "mtp": {"regime": "occ"},
            "tracking": {"mlflow": False}}
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    (d / "metrics.jsonl").write_text("".join(dumps({"step": s, "loss": math.nan}) + "\n" for s in (1, 2, 3)))
    (d / "summary.json").write_text(summary_text)


def test_ls_reads_a_summary_with_nulls(results_dir):
    summary = {"name": "nulls", "regime": "occ", "algorithm": "dapo", "seed": 0, "steps": 3, "wall_s": None,
               "heldout_acc_after": None, "mtp_acceptance_after": None, "lambda_mean": None, "train_loss": None}
    _finished_run(results_dir, "nulls", json.dumps(summary))
    listed = CliRunner().invoke(app, ["ls", "--json", "--no-mlflow"])
    assert listed.exit_code == 0, listed.output
    (row,) = strict(listed.stdout)
    assert (row["name"], row["status"], row["heldout_acc_after"], row["lambda_mean"]) == ("nulls", "finished", None,
                                                                                         None)
    table = CliRunner().invoke(app, ["ls", "--no-mlflow"], env={"COLUMNS": "160"})
    assert table.exit_code == 0 and "nulls" in table.stdout and "finished" in table.stdout


def test_the_fidelity_report_reads_a_summary_with_nulls(tmp_path, monkeypatch):
    from occctl.report.fidelity import collect, to_markdown
    from occctl.spec import load_specs

    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path))
    cell = load_specs(Path(__file__).resolve().parents[2] / "specs" / "fidelity_scale.yaml")[0]
    d = tmp_path / "runs" / cell.name
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(yaml.safe_dump(cell.model_dump(mode="json")))
    summary = {"oracle_steps": 100, "fidelity_pearson_c": math.nan, "fidelity_spearman_c": 0.4,
               "heldout_acc_before": 0.2, "heldout_acc_after": math.inf, "lambda_mean": math.nan}
    RunDir(d).write_summary(summary)
    (row,) = collect([cell.group])
    assert math.isnan(row.r["c"][0]) and row.r["c"][1] == 0.4 and math.isnan(row.r["v2"][0])
    assert math.isnan(row.heldout_after) and math.isnan(row.lambda_mean)
    assert "–" in to_markdown([row], "t", [cell.group])
