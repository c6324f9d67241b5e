"""`occctl eval` help and laziness: --help works without importing torch, transformers, math-verify or mlflow."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from occctl.cli import app


@pytest.mark.parametrize("args", [["eval", "--help"], ["eval", "selfcheck", "--help"]])
def test_help(args):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--suite" in result.output
    if args == ["eval", "--help"]:
        for option in ("--run", "--checkpoint", "--model", "--limit", "--grader", "--engine", "--data-dir",
                       "selfcheck"):
            assert option in result.output, option


def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom occctl.cli import app\n"
            "r = CliRunner().invoke(app, ['eval', '--help'])\nassert r.exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'transformers', 'math_verify', 'mlflow', 'sympy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_help_names_every_suite_and_benchmark_of_the_registry():
    from occctl.eval.suites import SUITES

    result = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    for suite in SUITES.values():
        assert f"{suite.name} (" in text, suite.name
        for name in suite.all_benchmarks if suite.kind == "math" else ():
            assert name in text, name
