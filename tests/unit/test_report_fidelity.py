"""The fidelity-against-scale report: rows from finished oracle-mode cells, intervals, the figure."""

import json
import math

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


def _history(steps=400, spg=4):
    """ĉ grows with k and follows c only through a shared trend; |c| is the same at every k."""
    import numpy as np

    rng, rows = np.random.default_rng(0), []
    for step in range(1, steps + 1):
        k = (step - 1) % spg + 1
        trend = 3.0 * np.exp(-2.0 * step / steps)
        c = trend + rng.standard_normal()
        c_hat = 0.0 if k == 1 else (k - 1) * (trend + rng.standard_normal())
        rows.append({"step": step, "occ/oracle_c": c, "occ/c_hat": c_hat, "occ/oracle_v2": 1.0, "occ/v_hat2": 2.0,
                     "occ/oracle_lambda": c, "occ/lambda": 0.1, "occ/probe_gap_sq": 9.0,
                     "occ/probe_gap_dot": 9.5, "occ/probe_main_old_v2_micro": 10.0})
    return rows


def test_report_shows_per_k_fig8_and_shuffle_columns(tmp_path, monkeypatch):
    from occctl.proxy_fidelity import fidelity

    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path))
    out = fidelity(_history(), steps_per_generation=4)
    assert out["fidelity_abs_c_hat_mean_k4"] > 2.5 * out["fidelity_abs_c_hat_mean_k2"]  # ĉ grows with k
    assert out["fidelity_abs_c_hat_mean_k1"] == 0.0 and math.isnan(out["fidelity_pearson_c_k1"])
    assert out["fidelity_gap_share_v2"] == pytest.approx(0.9) and out["fidelity_gap_share_delta_mtp"] == pytest.approx(0.95)
    assert out["fidelity_fig8_moved_binned"] > 0.5  # a shared trend, no pairing ...
    assert abs(out["fidelity_fig8_moved_binned"] - out["fidelity_fig8_moved_binned_shuffled"]) < 0.25  # ... shown
    spec = load_specs(SPEC)[0]
    d = tmp_path / "runs" / spec.name
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    (d / "summary.json").write_text(json.dumps({k: v for k, v in out.items() if k != "fidelity_variants"}))
    text = to_markdown(collect(["fidelity_scale"]), "t", ["fidelity_scale"])
    assert "## Per within-generation step k" in text and "k=4:" in text and "0.9 / 0.95" in text
    lines = text.splitlines()
    fig8 = lines[lines.index(next(x for x in lines if x.startswith("## Fig. 8"))) + 4]  # heading, blank, head, rule
    binned = fig8.split(" | ")[3]
    assert binned.startswith(f"{out['fidelity_fig8_moved_binned']:+.2f} / ")
