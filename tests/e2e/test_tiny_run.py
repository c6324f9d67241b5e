"""The real pipeline on the embedded default: warm-up (cached), TRL GRPO + MTP regimes, eval, MLflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from occctl.models import load_checkpoint
from occctl.mtp_layouts import layout_for, native_state
from occctl.tracking import Store

from tiny_runs import SPEC, run_tiny  # tests/, on sys.path via its conftest


pytestmark = pytest.mark.slow


def _main_weights(summary):
    return load_file(str(Path(summary["checkpoint"]) / "model.safetensors"))


def test_cli_smoke_run_writes_summary_and_mlflow(results_dir):
    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)}
    proc = subprocess.run([sys.executable, "-m", "occctl", "run", str(SPEC), "--set", "train.steps=5",
                           "--set", "name=smoke"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((results_dir / "runs" / "smoke" / "summary.json").read_text())
    for key in ("name", "regime", "steps", "wall_s", "reward_first", "reward_last", "heldout_acc_before",
                "heldout_acc_after", "lambda_mean", "mlflow_run_id"):
        assert key in summary
    assert summary["steps"] == 5 and summary["regime"] == "occ"
    uri = f"sqlite:///{results_dir / 'mlflow.db'}"
    for key in ("reward", "mtp/loss", "mtp/acc", "occ/lambda", "occ/c_hat", "occ/v_hat2"):
        assert Store(uri).metric_history(summary["mlflow_run_id"], key), key
    assert len(Store(uri).metric_history(summary["mlflow_run_id"], "occ/lambda")) == 5
    assert "step 5/5" in proc.stderr, "plain progress lines when stderr is not a terminal"
    # the same command again: the run is finished, nothing is rerun or overwritten
    stamp = (results_dir / "runs" / "smoke" / "summary.json").stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "occctl", "run", str(SPEC), "--set", "train.steps=5",
                            "--set", "name=smoke"], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "nothing to do" in again.stderr and "Traceback" not in again.stderr
    assert (results_dir / "runs" / "smoke" / "summary.json").stat().st_mtime_ns == stamp
    changed = subprocess.run([sys.executable, "-m", "occctl", "run", str(SPEC), "--set", "train.steps=6",
                              "--set", "name=smoke"], capture_output=True, text=True, env=env, timeout=600)
    assert changed.returncode == 2 and "different spec" in changed.stderr and "Traceback" not in changed.stderr


@pytest.mark.parametrize("regime", ["detach", "ce", "policy", "occ"])
def test_every_regime_runs_and_reloads(results_dir, regime):
    summary = run_tiny(f"r_{regime}", f"mtp.regime={regime}", "train.steps=4")
    assert summary["steps"] == 4 and summary["regime"] == regime
    loaded = load_checkpoint(summary["checkpoint"], new_head_if_missing=False)
    assert loaded.mtp_head is not None
    saved = load_file(str(Path(summary["checkpoint"]) / "model-mtp.safetensors"))  # the MiMo layout
    exported = native_state(loaded.model, loaded.mtp_head, layout_for(loaded.model.config))
    assert exported.keys() == saved.keys() and "model.mtp_layers.0.input_proj.weight" in saved
    for k, v in exported.items():
        assert torch.equal(v, saved[k]), k


def test_detach_leaves_the_main_model_exactly_as_without_mtp(results_dir):
    # clipping is active (small max_grad_norm), so a shared clip would couple MTP and main gradients
    common = ["train.steps=8", "train.max_grad_norm=0.05", "mtp.coef=1.0"]
    detach = run_tiny("eq_detach", "mtp.regime=detach", *common)
    plain = run_tiny("eq_plain", "mtp.enabled=false", *common)
    ce = run_tiny("eq_ce", "mtp.regime=ce", *common)  # negative control: the same check must fail for ce
    assert plain["reward_mean"] > 0, "no reward, no gradient: the comparison would be vacuous"
    w_detach, w_plain, w_ce = _main_weights(detach), _main_weights(plain), _main_weights(ce)
    warm = load_file(str(Path(plain["warm_start"]) / "model.safetensors"))
    assert any(not torch.equal(w_plain[k], warm[k]) for k in w_plain), "RL did not move the model"
    assert w_detach.keys() == w_plain.keys()
    worst = max((w_detach[k] - w_plain[k]).abs().max().item() for k in w_plain)
    assert worst <= 1e-6
    assert max((w_ce[k] - w_plain[k]).abs().max().item() for k in w_plain) > 1e-6


@pytest.mark.parametrize("algorithm", ["grpo", "gspo"])
def test_other_algorithms_run(results_dir, algorithm):
    summary = run_tiny(f"a_{algorithm}", f"algorithm.name={algorithm}", "train.steps=4")
    assert summary["algorithm"] == algorithm and summary["steps"] == 4
    native = json.loads((Path(summary["checkpoint"]).parents[1] / "native_config.json").read_text())
    assert native["importance_sampling_level"] == ("sequence" if algorithm == "gspo" else "token")
    assert native["loss_type"] == "grpo"


def test_oracle_mode_logs_the_true_geometry_and_changes_nothing(results_dir):
    common = ["mtp.regime=occ", "train.steps=6"]
    with_oracle = run_tiny("o_on", *common, "mtp.occ.oracle_every_steps=1")
    without = run_tiny("o_off", *common)
    for key in ("oracle_steps", "fidelity_pearson_c", "fidelity_spearman_c", "fidelity_pearson_v2",
                "fidelity_spearman_v2"):
        assert key in with_oracle and key not in without
    assert with_oracle["oracle_steps"] == 6
    for f in ("model.safetensors", "model-mtp.safetensors"):
        a = load_file(str(Path(with_oracle["checkpoint"]) / f))
        b = load_file(str(Path(without["checkpoint"]) / f))
        assert all(torch.equal(a[k], b[k]) for k in a), f
    rows = [json.loads(line) for line in (Path(with_oracle["checkpoint"]).parents[1] / "metrics.jsonl").open()]
    v2 = [r["occ/oracle_v2"] for r in rows if "occ/oracle_v2" in r]
    assert len(v2) == 6 and all(v > 0 for v in v2)
