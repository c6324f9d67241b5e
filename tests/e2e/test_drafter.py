"""The MTP head as a drafter in real TRL runs: speculative rollouts and the decoupled draft loss."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


from tiny_runs import SPEC, run_tiny  # tests/, on sys.path via its conftest


pytestmark = pytest.mark.slow


def _main_weights(summary):
    return load_file(str(Path(summary["checkpoint"]) / "model.safetensors"))


def test_speculative_rollouts_log_acceptance_per_generation(results_dir):
    summary = run_tiny("spec_on", "train.speculative=true", "train.steps=4")
    rows = [json.loads(line) for line in (Path(summary["checkpoint"]).parents[1] / "metrics.jsonl").open()]
    accept = [r["spec/accept_rate"] for r in rows if "spec/accept_rate" in r]
    length = [r["spec/mean_accept_len"] for r in rows if "spec/mean_accept_len" in r]
    assert len(accept) == len(length) == 1, "4 steps at 4 optimizer steps per generation: one generation"
    assert 0.0 <= accept[0] <= 1.0 and 1.0 <= length[0] <= 2.0
    assert summary["spec_accept_rate"] == accept[0] and summary["rollout_tokens_per_s"] > 0
    plain = run_tiny("spec_off", "train.steps=4")
    assert "spec_accept_rate" not in plain and plain["rollout_tokens_per_s"] > 0


def test_speculation_without_a_head_exits_2_with_one_line(results_dir):
    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)}
    proc = subprocess.run([sys.executable, "-m", "occctl", "run", str(SPEC), "--set", "train.speculative=true",
                           "--set", "mtp.enabled=false"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == \
        [line for line in proc.stderr.splitlines() if "speculative" in line]


@pytest.mark.parametrize("draft", ["ce", "soft_ce"])
def test_draft_loss_leaves_the_main_model_exactly_as_without_mtp(results_dir, draft):
    """``ce`` at coef 0 sends the main model a zero MTP gradient; the draft loss on top must not change that,
    neither by a gradient nor through a shared clip (clipping is active: small max_grad_norm)."""
    common = ["train.steps=8", "train.max_grad_norm=0.05"]
    drafted = run_tiny(f"d_{draft}", "mtp.regime=ce", "mtp.coef=0.0", f"mtp.draft_loss={draft}", *common)
    plain = run_tiny(f"d_plain_{draft}", "mtp.enabled=false", *common)
    assert plain["reward_mean"] > 0, "no reward, no gradient: the comparison would be vacuous"
    w_drafted, w_plain = _main_weights(drafted), _main_weights(plain)
    assert max((w_drafted[k] - w_plain[k]).abs().max().item() for k in w_plain) <= 1e-6
    warm = load_file(str(Path(drafted["warm_start"]) / "model-mtp.safetensors"))
    head = load_file(str(Path(drafted["checkpoint"]) / "model-mtp.safetensors"))
    assert any(not torch.equal(head[k], warm[k]) for k in head), "the draft loss trained the head"


def test_bench_rollout_writes_the_speedup_and_both_speeds(results_dir, tmp_path):
    env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_dir)}
    out = tmp_path / "rollout.json"
    proc = subprocess.run([sys.executable, "-m", "occctl", "bench", "rollout", str(SPEC), "--rounds", "2",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["tokens_per_s"]) == {"plain", "speculative"} and min(result["tokens_per_s"].values()) > 0
    low, high = result["spec_speedup_ci95"]
    assert low <= result["spec_speedup"] <= high and 0 <= result["accept_rate"] <= 1
    refused = subprocess.run([sys.executable, "-m", "occctl", "bench", "rollout", str(SPEC), "--set",
                              "mtp.enabled=false"], capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "mtp.enabled=false" in refused.stderr and "Traceback" not in refused.stderr
