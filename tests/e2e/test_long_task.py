"""The long-response task end to end: the shipped long_* specs run (with a short warm-up, to stay fast)."""

import json
from pathlib import Path

import pytest

from occctl.runner import run_spec
from occctl.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
FAST = ["train.steps=4", "warmup.steps=20", "eval.samples_per_problem=1", "train.prompts_per_generation=8",
        "task.heldout_problems=20"]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("regime", ["detach", "occ"])
def test_long_spec_runs_and_scores_the_final_sum(results_dir, regime):
    spec = load_spec(REPO / "specs" / f"long_{regime}.yaml", [f"name=long_{regime}", *FAST])
    summary = run_spec(spec)
    assert summary["steps"] == 4 and 0.0 <= summary["heldout_acc_after"] <= 1.0
    rows = [json.loads(line) for line in (Path(summary["checkpoint"]).parents[1] / "metrics.jsonl").open()]
    lengths = [r["completions/mean_length"] for r in rows if "completions/mean_length" in r]
    assert lengths and max(lengths) > 10, "responses of a 26-token answer task are long"


@pytest.mark.parametrize("study", ["oracle_study", "oracle_study_faithful"])
def test_the_decisive_studies_run_every_variant(results_dir, study):
    """A smoke test of the shipped decisive studies: seed 0 of each of their five variants, a few steps."""
    from occctl.spec import load_specs

    cells = [s for s in load_specs(REPO / "specs" / f"{study}.yaml", FAST) if s.train.seed == 0]
    assert len(cells) == 5
    for spec in cells:
        summary = run_spec(spec)
        assert summary["steps"] == 4 and 0.0 <= summary["heldout_acc_after"] <= 1.0, spec.name


def test_the_decisive_study_v2_runs_every_variant_from_a_target_band(results_dir):
    """A smoke test of specs/decisive_v2.yaml: seed 0 of each variant, a few steps, the warm-up stopped by its
    warmup.target check (here a band every check is in: it stops at the first check, step 10)."""
    from occctl.spec import load_specs
    from occctl.warmup import DONE, warm_start_dir

    band = ["warmup.target=[0.0, 1.0]", "warmup.check_every_steps=10"]
    cells = [s for s in load_specs(REPO / "specs" / "decisive_v2.yaml", FAST + band) if s.train.seed == 0]
    assert len(cells) == 15
    for spec in cells:
        summary = run_spec(spec)
        assert summary["steps"] == 4 and 0.0 <= summary["heldout_acc_after"] <= 1.0, spec.name
    assert json.loads((warm_start_dir(cells[0]) / DONE).read_text())["steps"] == 10
