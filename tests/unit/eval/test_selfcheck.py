"""Gold self-agreement on the real math6 files, both graders, every benchmark >= 99% (timing printed, not
asserted: `occctl eval selfcheck --suite math6` reports it)."""

import pytest
from rich.console import Console
from typer.testing import CliRunner

from occctl.cli import app
from occctl.data import dataset_dir
from occctl.errors import DataMissingError
from occctl.eval.selfcheck import selfcheck
from occctl.eval.suites import get_suite


def _math6_or_skip():
    suite = get_suite("math6")
    try:
        return dataset_dir("math6", [f"{n}.jsonl" for n in suite.all_benchmarks])
    except DataMissingError as e:
        pytest.skip(f"math6 data not available: {e.message}")


def test_gold_answers_agree_with_themselves_for_both_graders():
    _math6_or_skip()
    result = selfcheck("math6", ["math_verify@1", "deepscaler@2"], None, False, 5.0, None, Console(quiet=True))
    assert set(result["graders"]) == {"math_verify@1", "deepscaler@2"}
    suite = get_suite("math6")
    for grader, r in result["graders"].items():
        assert set(r["benchmarks"]) == set(suite.all_benchmarks)
        assert sum(b["answers"] for b in r["benchmarks"].values()) == result["answers"]
        for name, b in r["benchmarks"].items():
            assert b["agreement"] >= 0.99, (grader, name, b["disagreeing"])
            assert b["timeouts"] == 0, (grader, name)
        print(f"{grader}: {result['answers']} answers in {r['seconds']:.1f} s")
    assert result["ok"] and result["answers"] > 1500
    assert result["graders"]["math_verify@1"]["benchmarks"]["amc23"]["answers"] == 83


def test_selfcheck_cli_prints_agreement_and_time():
    _math6_or_skip()
    result = CliRunner().invoke(app, ["eval", "selfcheck", "--suite", "math6", "--grader", "deepscaler@2"])
    assert result.exit_code == 0, result.output
    assert "olympiadbench" in result.output and "amc23_40" in result.output
    assert "answers graded in" in result.output and "ok" in result.output


def test_selfcheck_rejects_the_tiny_suite():
    result = CliRunner().invoke(app, ["eval", "selfcheck", "--suite", "tiny"])
    assert result.exit_code == 2 and "has none" in result.output
