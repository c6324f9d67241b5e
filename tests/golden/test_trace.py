"""Golden trace of the embedded default: per optimizer step, the loss, lambda_t (``occ/lambda``) and the reward of
the first 8 steps of ``specs/tiny_occ.yaml``, against ``expected/trace_tiny_occ.json``. A change to the GRPO loss,
the OCC calibration, the MTP term, the optimizer or the sampling shows here as a changed number.

The run skips the default's learned warm-up (550 steps, machine-dependent near its loss transition) but not a
warm-up altogether: with ``warmup.enabled=false`` the random model earns no reward, so every advantage, the loss and
lambda_t are exactly 0 and no parameter moves, and the trace could not see any drift. Instead it warms up for 100
steps on 1-digit additions (memorised smoothly, no loss transition; cached by config hash under results/cache like
any warm-up, about 25 s the first time on one core): rewards near 0.5, mixed groups, lambda_t of both signs.
Held-out eval uses one sample per problem and there is no MLflow. One torch thread (tests/conftest.py), as always.

Tolerance: loss and lambda_t rel 1e-4 (abs 1e-9 for the exact zeros of a round's first step, where the rollout
policy is the current one); the reward is a mean of 256 grades (multiples of 1/256), so it allows float noise
only (abs 1e-9): one completion graded differently fails the test.

Regenerate (after checking the difference is intended): ``OCCCTL_REGEN_GOLDEN=1 python -m pytest
tests/golden/test_trace.py``, then review ``git diff tests/golden/expected/trace_tiny_occ.json``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from occctl.runner import run_spec
from occctl.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "tiny_occ.yaml"
EXPECTED = Path(__file__).parent / "expected" / "trace_tiny_occ.json"
STEPS = 8
OVERRIDES = [f"train.steps={STEPS}", "task.digits=1", "task.heldout_problems=20", "task.train_problems=80",
             "warmup.steps=100", "eval.samples_per_problem=1", "tracking.mlflow=false"]
KEYS = ("loss", "occ/lambda", "reward")  # reward: logged on a generation round's first step only
TOLERANCE = {"loss": {"rel": 1e-4, "abs": 1e-9}, "occ/lambda": {"rel": 1e-4, "abs": 1e-9},
             "reward": {"rel": 0.0, "abs": 1e-9}}

pytestmark = pytest.mark.slow


def trace(metrics_path: Path) -> list[dict]:
    """The training rows of a run's metrics.jsonl (the held-out rows of the last step carry no loss), ``KEYS``
    only."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], **{k: r[k] for k in KEYS if k in r}} for r in rows if "loss" in r]


def mismatches(got: list[dict], want: list[dict]) -> list[str]:
    problems = []
    if [r["step"] for r in got] != [r["step"] for r in want]:
        return [f"steps {[r['step'] for r in got]} != {[r['step'] for r in want]}"]
    for g, w in zip(got, want):
        if set(g) != set(w):
            problems.append(f"step {g['step']}: keys {sorted(g)} != {sorted(w)}")
            continue
        for key in KEYS:
            if key in w and not math.isclose(g[key], w[key], rel_tol=TOLERANCE[key]["rel"],
                                             abs_tol=TOLERANCE[key]["abs"]):
                problems.append(f"step {g['step']} {key}: {g[key]!r} != {w[key]!r}")
    return problems


def test_first_steps_of_the_embedded_default_match_the_golden_trace(results_dir):
    summary = run_spec(load_spec(SPEC, ["name=golden_trace", *OVERRIDES]))
    assert summary["steps"] == STEPS
    got = trace(results_dir / "runs" / "golden_trace" / "metrics.jsonl")
    if os.environ.get("OCCCTL_REGEN_GOLDEN"):
        head = {"spec": "specs/tiny_occ.yaml", "overrides": OVERRIDES, "tolerance": TOLERANCE}
        body = ",\n".join("  " + json.dumps(row) for row in got)  # one step a line: a diff names the step
        EXPECTED.write_text(json.dumps(head, indent=1)[:-2] + ',\n "steps": [\n' + body + "\n ]\n}\n")
    assert EXPECTED.is_file(), f"missing golden file {EXPECTED}: regenerate with OCCCTL_REGEN_GOLDEN=1"
    expected = json.loads(EXPECTED.read_text())
    assert expected["overrides"] == OVERRIDES, "the run's overrides changed: regenerate with OCCCTL_REGEN_GOLDEN=1"
    assert any(r["reward"] > 0 for r in got if "reward" in r), "no reward: the trace would see no drift"
    assert any(r["occ/lambda"] != 0 for r in got), "lambda_t is 0 throughout: the trace would see no drift"
    problems = mismatches(got, expected["steps"])
    assert not problems, "the trace differs from " + str(EXPECTED) + ":\n" + "\n".join(problems)
