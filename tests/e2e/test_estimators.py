"""Oracle-lambda training and the authors' estimator preset, end to end on the embedded default."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from occctl.tracking import Store

from tiny_runs import run_tiny  # tests/, on sys.path via its conftest


pytestmark = pytest.mark.slow


def _rows(summary):
    rows = {}
    for row in map(json.loads, (Path(summary["checkpoint"]).parents[1] / "metrics.jsonl").read_text().splitlines()):
        rows.setdefault(row["step"], {}).update(row)
    return rows


def _rows_with(summary, key: str, n: int) -> list[dict]:
    """The run's metric rows (one per step, in order) that log ``key``; there must be ``n``."""
    rows = [r for _, r in sorted(_rows(summary).items()) if key in r]
    assert len(rows) == n, (key, len(rows))
    return rows


def test_oracle_estimator_trains_with_lambda_plus_times_the_oracle_slope(results_dir):
    summary = run_tiny("oracle", "mtp.occ.estimator=oracle", "mtp.occ.lambda_plus=0.5", "train.steps=5",
                   "train.micro_batches_per_step=2")
    rows = _rows_with(summary, "occ/oracle_lambda", 5)
    for r in rows:
        assert r["occ/lambda"] == pytest.approx(0.5 * r["occ/oracle_lambda"], rel=1e-6)
        assert r["mtp/coef"] == pytest.approx(r["occ/lambda"], rel=1e-6)
    assert any(abs(r["occ/lambda"] - r["occ/proxy_lambda"]) > 1e-6 for r in rows)  # not the proxies' lambda
    assert rows[0]["occ/proxy_lambda"] == 0.0 and rows[0]["occ/lambda"] != 0.0  # the oracle sees step 1
    uri = f"sqlite:///{results_dir / 'mlflow.db'}"
    logged = dict(Store(uri).metric_history(summary["mlflow_run_id"], "occ/lambda"))
    oracle = dict(Store(uri).metric_history(summary["mlflow_run_id"], "occ/oracle_lambda"))
    assert len(logged) == 5 and all(logged[s] == pytest.approx(0.5 * oracle[s], rel=1e-6) for s in logged)


def test_hidden_grad_estimator_trains_with_lambda_plus_times_the_slope_at_the_trunk_output(results_dir):
    """estimator hidden_grad: lambda_t = lambda_+ <dL_RL/dh, dL_MTP/dh> / ||dL_MTP/dh||^2, logged beside the
    oracle's (oracle_every_steps=1) as the ``hidden`` probe; it sees step 1, where the delta proxies are 0."""
    summary = run_tiny("hidden", "mtp.occ.estimator=hidden_grad", "mtp.occ.lambda_plus=0.5", "train.steps=4",
                       "mtp.occ.oracle_every_steps=1")
    rows = _rows_with(summary, "occ/probe_hidden_c_micro", 4)
    assert all(r["occ/probe_hidden_v2_micro"] > 0 for r in rows)
    assert [r["occ/lambda"] for r in rows] == pytest.approx(
        [0.5 * r["occ/probe_hidden_lambda_ratio_of_sums_micro"] for r in rows], rel=1e-6)
    assert rows[0]["occ/proxy_lambda"] == 0.0 and rows[0]["occ/lambda"] != 0.0  # sees step 1
    assert any(r["occ/lambda"] != pytest.approx(0.5 * r["occ/oracle_lambda"], rel=1e-3) for r in rows)  # not the oracle
    assert "hidden/micro" in summary["fidelity_variants"]  # in the fidelity grid beside the delta baselines


def test_reference_preset_trains_differently_from_the_paper_estimator(results_dir):
    ref = run_tiny("ref", "mtp.occ.preset=reference", "train.steps=4")
    paper = run_tiny("paper", "train.steps=4")
    ref_rows, paper_rows = _rows(ref), _rows(paper)
    # same trajectory until the MTP term first differs (step 1: lambda = 0 in both), then different lambdas
    assert ref_rows[1]["occ/lambda"] == paper_rows[1]["occ/lambda"] == 0.0
    assert all(ref_rows[s]["occ/lambda"] != paper_rows[s]["occ/lambda"] for s in (2, 3, 4))
    a, b = load_file(str(Path(ref["checkpoint"]) / "model-mtp.safetensors")), \
        load_file(str(Path(paper["checkpoint"]) / "model-mtp.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_oracle_applies_lambda_times_the_unit_mtp_gradient_where_c_is_negative(results_dir):
    """On micro-batches with the measured c < 0 (so lambda < 0) the MTP head's applied gradient is lambda * g_MTP(+1)
    with oracle_negative: loss_scale, and not with advantage (the control). One micro-batch per step, so each
    metrics row is one micro-batch; seed 2 has c < 0 at step 2."""
    residual = {}
    for negative in ("loss_scale", "advantage"):
        summary = run_tiny(negative, "mtp.occ.estimator=oracle", f"mtp.occ.oracle_negative={negative}",
                           "train.steps=3", "train.seed=2")
        rows = [r for _, r in sorted(_rows(summary).items()) if "occ/oracle_lambda" in r]
        assert len(rows) == 3 and all(r["occ/lambda"] == pytest.approx(r["occ/oracle_lambda"], rel=1e-6) for r in rows)
        assert any(r["occ/oracle_c"] < 0 for r in rows)  # the case under test happened
        assert all((r["occ/lambda"] < 0) == (r["occ/oracle_c"] < 0) for r in rows)
        residual[negative] = [(r["occ/lambda"] < 0, r["occ/oracle_applied_residual"]) for r in rows]
    assert all(res < 1e-5 for _, res in residual["loss_scale"])  # exactly lambda * g on every step
    assert all(res > 0.1 for neg, res in residual["advantage"] if neg)  # the surrogate's own clipping where lambda < 0
    assert all(res < 1e-5 for neg, res in residual["advantage"] if not neg)  # lambda > 0: the modes agree
