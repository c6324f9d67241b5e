"""The runner's pipeline on the TRL backend: the periodic held-out eval (``eval.every_steps``) goes through the runner's
``MetricLog.evaluate``, and the after-eval on the exported checkpoint lands at the last step."""

import json
from pathlib import Path

import pytest

from occctl.runner import run_spec
from occctl.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_periodic_and_final_heldout_evals_come_from_the_runner(results_dir):
    spec = load_spec(REPO / "specs" / "tiny_occ.yaml", ["name=periodic", "warmup.enabled=false", "train.steps=4",
                                                         "train.prompts_per_generation=8", "eval.every_steps=2",
                                                         "eval.samples_per_problem=1", "task.heldout_problems=8"])
    summary = run_spec(spec)
    rows = [json.loads(line) for line in (results_dir / "runs" / "periodic" / "metrics.jsonl").open()]
    evals = [r for r in rows if "eval/tiny/avg_at_k" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert evals[-1]["eval/tiny/avg_at_k"] == summary["heldout_acc_after"]
    assert summary["warm_start"] is None and summary["heldout_k"] == 1
