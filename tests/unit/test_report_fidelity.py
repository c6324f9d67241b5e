"""The fidelity-against-scale report: rows from finished oracle-mode cells, intervals, the figure."""

import json

import pytest
import yaml

from occctl.errors import SpecError
from occctl.report.fidelity import collect, interval, to_markdown, write_fidelity_report
from occctl.spec import load_specs

from pathlib import Path

SPEC = Path(__file__).resolve().parents[2] / "specs" / "fidelity_scale.yaml"


def _cell(root, spec, r_c, oracle_steps=100):
    d = root / "runs" / spec.name
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    summary = {"oracle_steps": oracle_steps, "fidelity_pearson_c": r_c, "fidelity_spearman_c": r_c / 2,
               "fidelity_pearson_v2": 0.1, "fidelity_spearman_v2": 0.2, "fidelity_pearson_lambda": -0.1,
               "fidelity_spearman_lambda": 0.0, "heldout_acc_before": 0.2, "heldout_acc_after": 0.3,
               "lambda_mean": 0.01}
    (d / "summary.json").write_text(json.dumps(summary))


def test_report_rows_intervals_and_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path))
    cells = load_specs(SPEC)
    _cell(tmp_path, cells[0], 0.8)
    _cell(tmp_path, cells[1], 0.05)
    rows = collect(["fidelity_scale"])
    assert [(c.task, c.factor) for c in rows] == [(s.task.name, s.cell["factor"]) for s in cells[:2]]
    text = to_markdown(rows, "t", ["fidelity_scale"])
    assert "**+0.80**" in text and f"{rows[0].task}/{rows[0].factor}" in text.splitlines()[-3]
    assert text.splitlines()[-1] == "Produced by `occctl report --fidelity --group fidelity_scale`."
    lo, hi = interval(0.8, 100)
    assert lo < 0.8 < hi and f"[{lo:+.2f}, {hi:+.2f}]" in text
    out = write_fidelity_report(["fidelity_scale"], tmp_path / "rep")
    assert (out / "table.md").is_file() and (out / "fidelity_vs_factor.png").stat().st_size > 1000


def test_no_runs_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path))
    with pytest.raises(SpecError, match="no finished oracle-mode runs"):
        write_fidelity_report(["nothing"], tmp_path / "rep")
