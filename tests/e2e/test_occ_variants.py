"""Estimator variants and the overhead bench on the embedded default (no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from occctl.runner import run_spec
from occctl.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "tiny_occ.yaml"

pytestmark = pytest.mark.slow


def _history(summary):
    path = Path(summary["checkpoint"]).parents[1] / "metrics.jsonl"
    rows = {}
    for row in map(json.loads, path.read_text().splitlines()):
        rows.setdefault(row["step"], {}).update(row)
    return rows


def test_mtp_old_baseline_is_zero_before_the_policy_moves(results_dir):
    """With the MTP head's own rollout log-probs as baseline, delta_MTP is 0 on the first optimizer step of
    each generation (nothing has been updated yet), so v_hat2 vanishes there and only there. This checks
    that the rollout-time MTP log-probs are captured and stay aligned through TRL's shuffle and split."""
    overrides = ["eval.samples_per_problem=1", "train.prompts_per_generation=16", "train.steps=5",
                 "train.micro_batches_per_step=2"]
    rows = {}
    for baseline in ("mtp_old", "main_old"):
        spec = load_spec(SPEC, [f"name=b_{baseline}", f"mtp.occ.baseline={baseline}", *overrides])
        rows[baseline] = _history(run_spec(spec))
    first, moved = (1, 5), (2, 3, 4)  # 4 optimizer steps per generation: steps 1 and 5 start a round
    assert all(rows["mtp_old"][s]["occ/v_hat2"] < 1e-8 for s in first)
    assert all(rows["mtp_old"][s]["occ/v_hat2"] > 1e-6 for s in moved)
    assert all(rows["main_old"][s]["occ/v_hat2"] > 1e-2 for s in first)  # the heads differ from the start


def test_oracle_mode_logs_every_variant(results_dir):
    spec = load_spec(SPEC, ["name=probe", "eval.samples_per_problem=1", "train.prompts_per_generation=16",
                            "train.steps=6", "mtp.occ.oracle_every_steps=1", "train.micro_batches_per_step=2"])
    summary = run_spec(spec)
    assert summary["oracle_steps"] == 6
    variants = summary["fidelity_variants"]
    assert set(variants) == {f"{b}/{s}" for b in ("main_old", "mtp_old") for s in ("micro", "step", "full", "prev")
                             } | {"hidden/micro"}  # the hidden_grad estimator's probe: per micro-batch only
    assert {"pearson_c", "pearson_v2", "pearson_lambda_ratio_of_sums"} <= set(variants["hidden/micro"])
    assert {"pearson_c", "pearson_v2", "pearson_lambda_ratio_of_sums", "pearson_lambda_mean_of_ratios"} <= set(
        variants["mtp_old/step"])
    row = _history(summary)[3]
    assert row["occ/oracle_v2"] > row["occ/oracle_v2_trunk"] > 0  # embeddings + lm_head add to the geometry


def test_bench_overhead_writes_the_ratio_json(results_dir, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)}
    proc = subprocess.run([sys.executable, "-m", "occctl", "bench", "overhead", str(SPEC), "--steps", "2",
                           "--json", str(out), "--set", "train.prompts_per_generation=8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("occ_over_policy", "occ_over_detach", "detach_over_vanilla", "oracle_over_detach", "hidden_over_occ"):
        low, high = result[f"{key}_ci95"]
        assert 0 < low <= result[key] <= high, key
    assert set(result["median_step_s"]) == {"vanilla", "detach", "policy", "occ", "hidden", "oracle"}
    assert "occ_over_detach" in proc.stdout
    assert result["steps_timed"] == 2  # the resolution is first checked after 20 rounds
    assert result["resolution"]["target"] == 0.01


def test_bench_overhead_stops_once_the_ratio_is_resolved(results_dir, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)}
    proc = subprocess.run([sys.executable, "-m", "occctl", "bench", "overhead", str(SPEC), "--steps", "60",
                           "--resolve", "0.9", "--json", str(out), "--set", "train.prompts_per_generation=4",
                           "--set", "algorithm.samples_per_prompt=2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    # checked after round 20; the round in progress then finishes: 21 timed rounds, every variant the same
    assert result["steps_timed"] == 21 and result["steps_max"] == 60
    assert result["resolution"]["met"] and result["resolution"]["halfwidth"] <= 0.9
    low, high = result["occ_over_policy_ci95"]
    assert high / result["occ_over_policy"] - 1 <= 0.9 and 1 - low / result["occ_over_policy"] <= 0.9
