"""The paper's task on the TRL backend, end to end on CPU: the shipped 1.5B math spec on the tiny_cpu preset (a
config-built model, a BPE tokenizer trained on DAPO-Math-17k), 3 steps with math-verify rewards in the grading pool."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.cli import app

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_three_steps_of_math_rl_on_cpu(results_dir):
    result = CliRunner().invoke(app, ["run", str(REPO / "specs" / "qwen25_math_1p5b_occ.yaml"),
                                      "--set", "model=tiny_cpu", "--set", "train.steps=3",
                                      "--set", "task.heldout_limit=2"])
    assert result.exit_code == 0, result.output
    run = results_dir / "runs" / "qwen25_math_1p5b_occ"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    graded = [r for r in rows if "reward" in r]  # one grading per generation round (2 optimizer steps each)
    assert [r["step"] for r in graded] == [1, 3]
    for r in graded:
        assert r["reward/timeouts"] >= 0 and r["time/reward_s"] > 0 and "rewards/math_verify_v1/mean" in r
        assert -1.0 <= r["reward"] <= 1.0
    assert all("occ/lambda" in r for r in rows if r["step"] in (1, 2, 3) and "loss" in r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and 0.0 <= summary["heldout_acc_after"] <= 1.0 and summary["heldout_k"] == 2
    final = rows[-1]
    assert final["step"] == 3 and final["eval/heldout/avg_at_k"] == summary["heldout_acc_after"]
    per_benchmark = [final[f"eval/heldout/{b}/avg_at_k"] for b in ("aime24", "math500")]
    assert final["eval/heldout/avg_at_k"] == pytest.approx(sum(per_benchmark) / 2)  # 2 problems each
    assert final["eval/heldout/grader_timeouts"] >= 0
    assert (run / "checkpoints" / "final" / "tokenizer.json").is_file()
