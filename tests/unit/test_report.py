"""The comparison table (pure): grouping by row and seed, t-intervals, paired differences, ranks, markdown."""

import math

import pytest
from scipy import stats

from occctl.report.comparison import (build_comparison, estimate, ranks_by_column, to_markdown, to_rows,
                                      value_at_step)


def _run(regime, seed, acc, accept, variant=None):
    tags = {"occctl.regime": regime, "occctl.seed": str(seed)}
    if variant:
        tags["occctl.cell.variant"] = variant
    return {"run_id": f"{regime}{seed}{variant}", "tags": tags, "params": {"train.seed": str(seed)},
            "metrics": {"summary/heldout_acc_after": acc, "summary/mtp_acceptance_after": accept}}


RUNS = [_run("detach", 0, 0.50, 0.80), _run("detach", 1, 0.60, 0.82), _run("detach", 2, 0.55, 0.81),
        _run("occ", 0, 0.52, 0.70), _run("occ", 1, 0.63, 0.71), _run("occ", 2, 0.57, 0.69),
        _run("ce", 0, 0.40, 0.90)]


def test_estimate_is_a_t_interval():
    e = estimate([0.5, 0.6, 0.55])
    assert e.mean == pytest.approx(0.55) and e.n == 3
    assert e.half_width == pytest.approx(stats.t.ppf(0.975, 2) * 0.05 / math.sqrt(3))
    assert math.isnan(estimate([0.4]).half_width) and estimate([]).n == 0


def test_rows_follow_compare_and_paired_differences_use_common_seeds():
    comp = build_comparison(RUNS, ["detach", "occ", "policy"])
    assert comp.rows == ["detach", "occ"]  # policy has no runs; ce is not compared
    assert comp.columns == ["Held-out avg@k", "MTP accept."]  # only the tiny columns present
    assert comp.cells[("occ", "Held-out avg@k")].mean == pytest.approx(0.5733333, abs=1e-6)
    diff = comp.paired[("occ", "Held-out avg@k")]
    assert diff.mean == pytest.approx(0.0233333, abs=1e-6) and diff.n == 3
    assert diff.half_width < comp.cells[("occ", "Held-out avg@k")].half_width  # pairing removes seed variance
    assert ranks_by_column(comp)[("occ", "Held-out avg@k")] == 1
    assert ranks_by_column(comp)[("detach", "Held-out avg@k")] == 2
    md = to_markdown(comp, "t")
    assert "**0.573 ± " in md and "<u>0.550 ± " in md and "| occ − detach |" in md
    assert {r["row"] for r in to_rows(comp)} == {"detach", "occ"}


def test_rows_by_matrix_key_and_explicit_metrics():
    runs = [_run("occ", s, 0.5 + s / 10, 0.7, variant=v) for s in range(2) for v in ("clip", "lp2")]
    comp = build_comparison(runs, [], rows="variant", metrics=["summary/mtp_acceptance_after"])
    assert comp.rows == ["clip", "lp2"] and comp.columns == ["mtp_acceptance_after"] and comp.row_key == "variant"


def test_math6_columns_get_an_unweighted_average():
    runs = []
    for seed in range(2):
        metrics = {f"eval/math6/{b}/avg_at_4": v for b, v in (("aime24", 0.1), ("math500", 0.5 + seed / 10))}
        runs.append({"run_id": str(seed), "tags": {"occctl.regime": "occ", "occctl.seed": str(seed)},
                     "params": {}, "metrics": metrics})
    comp = build_comparison(runs, ["occ"])
    assert comp.columns == ["aime24", "math500", "Avg"]
    assert comp.cells[("occ", "Avg")].mean == pytest.approx((0.1 + 0.55) / 2)


def test_best_and_second_follow_each_metrics_direction():
    runs = [{"run_id": f"{r}{s}", "tags": {"occctl.regime": r, "occctl.seed": str(s)}, "params": {},
             "metrics": {"summary/heldout_acc_after": acc, "summary/wall_s": wall}}
            for s in range(2) for r, acc, wall in (("detach", 0.5, 30.0), ("occ", 0.6, 40.0), ("ce", 0.4, 35.0))]
    comp = build_comparison(runs, ["detach", "occ", "ce"], metrics=["summary/heldout_acc_after", "summary/wall_s"])
    assert comp.higher_is_better == {"heldout_acc_after": True, "wall_s": False}
    rank = ranks_by_column(comp)
    assert (rank[("occ", "heldout_acc_after")], rank[("detach", "heldout_acc_after")]) == (1, 2)
    assert (rank[("detach", "wall_s")], rank[("ce", "wall_s")]) == (1, 2), "less wall time is better"
    assert ("occ", "wall_s") not in rank


def test_benchmark_columns_come_from_the_suite_registry():
    from occctl.eval.suites import SUITES

    metrics = {f"eval/math6/{b}/avg_at_4/math_verify_v1": 0.5 for b in reversed(SUITES["math6"].all_benchmarks)}
    run = {"run_id": "x", "tags": {"occctl.regime": "occ", "occctl.seed": "0"}, "params": {}, "metrics": metrics}
    comp = build_comparison([run], ["occ"])
    assert comp.columns == [*SUITES["math6"].benchmarks, "Avg"], "the suite's order; optional benchmarks left out"


def test_rows_of_two_keys_and_compare_by_the_first_value():
    runs = [_run(r, s, 0.5 + s / 10, 0.7, variant=v) for r in ("occ", "detach") for s in range(2) for v in ("b", "a")]
    comp = build_comparison(runs, ["detach/b", "detach", "occ"], rows="mtp.regime,variant")
    assert comp.rows == ["detach/b", "detach/a", "occ/a", "occ/b"]  # the named row first, then by first value
    assert comp.reference == "detach/b" and comp.row_key == "regime / variant"
    assert build_comparison(runs, ["occ/a"], rows="regime,variant").rows == ["occ/a"]


def test_value_at_step_is_the_last_value_logged_at_or_before_it():
    history = [(4, 0.4), (8, 0.8), (12, 1.2)]
    assert value_at_step(history, 8) == 0.8 and value_at_step(history, 11) == 0.8 and value_at_step(history, 12) == 1.2
    assert math.isnan(value_at_step(history, 13)), "the run never reached the step"
    assert math.isnan(value_at_step(history, 3)) and math.isnan(value_at_step([], 1))
    assert value_at_step(history, 14, reached=14) == 1.2, "a rollout metric's last value holds to the run's end"
    assert math.isnan(value_at_step(history, 15, reached=14))


@pytest.mark.parametrize("args, message", [(["--at-step", "200"], "name the metrics with --metric"),
                                           (["--at-step", "0", "--metric", "reward"], "optimizer steps ≥ 1")])
def test_at_step_needs_metrics_with_a_history_and_positive_steps(args, message, results_dir):
    from typer.testing import CliRunner

    from occctl.cli import app

    result = CliRunner().invoke(app, ["report", "--group", "g", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_at_step_holds_a_rollout_metric_to_the_end_of_a_finished_run():
    from occctl.report.writer import _at_step

    class Store:  # spec/* logged once per generation (steps 1, 5, 9), loss every step up to 12
        def metric_history(self, run_id, key):
            return {"spec": [(1, 0.1), (5, 0.5), (9, 0.9)], "loss": [(s, float(s)) for s in range(1, 13)]}[key]

    run = {"run_id": "r", "params": {}}
    assert _at_step([run], Store(), ["spec", "loss"], 12)[0]["metrics"] == {"spec": 0.9, "loss": 12.0}
    assert math.isnan(_at_step([run], Store(), ["spec"], 12)[0]["metrics"]["spec"]), "reach unknown: 9 < 12"
    finished = {**run, "params": {"train.steps": "12"}}
    assert _at_step([finished], Store(), ["spec"], 12)[0]["metrics"] == {"spec": 0.9}
    assert math.isnan(_at_step([finished], Store(), ["spec"], 13)[0]["metrics"]["spec"])
