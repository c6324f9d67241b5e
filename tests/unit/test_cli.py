import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["validate", "--help"], ["schema", "--help"]])
def test_help(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    if args == ["--help"]:
        for command in ("run", "validate", "schema"):
            assert command in result.output


def test_validate_ok_for_shipped_specs():
    specs = sorted((REPO / "specs").glob("*.yaml"))  # every shipped spec, found by glob
    result = runner.invoke(app, ["validate", *map(str, specs)])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok:") == len(specs) >= 20
    assert "20 matrix cells" in result.output  # tiny_study: 4 regimes x 5 seeds


def test_validate_malformed_spec_is_one_line_exit_2(tmp_path, results_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mtp: {regime: sometimes}\n")
    proc = subprocess.run([sys.executable, "-m", "occctl", "validate", str(bad)], capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mtp.regime" in lines[0] and "Traceback" not in proc.stderr
    assert not results_dir.exists(), "validate must write nothing"


def test_run_with_bad_override_writes_nothing(results_dir):
    result = runner.invoke(app, ["run", str(REPO / "specs" / "tiny_occ.yaml"), "--set", "train.stpes=5"])
    assert result.exit_code == 2
    assert "did you mean 'steps'" in result.output
    assert not (results_dir / "runs").exists()


def test_occ_with_one_step_per_generation_is_refused():
    result = runner.invoke(app, ["validate", str(REPO / "specs" / "tiny_occ.yaml"), "--set",
                                 "train.optimizer_steps_per_generation=1"])
    assert result.exit_code == 2 and "identically 0" in result.output


def test_unknown_backend_is_an_environment_error(monkeypatch):
    """A backend whose module cannot be imported (its extra is not installed) is an environment error."""
    import occctl.backend

    monkeypatch.setitem(occctl.backend.BACKENDS, "trl", "backends.no_such_backend.adapter:NoSuchBackend")
    result = runner.invoke(app, ["validate", str(REPO / "specs" / "tiny_occ.yaml")])
    assert result.exit_code == 3
    assert "backend 'trl' cannot be imported" in result.output


def test_schema_and_dry_run():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output)["title"] == "Spec"
    dry = runner.invoke(app, ["run", str(REPO / "specs" / "tiny_occ.yaml"), "--dry-run"])
    assert dry.exit_code == 0 and '"loss_type": "dapo"' in dry.output


def test_run_names_cannot_escape_results(results_dir):
    from occctl.errors import SpecError
    from occctl.rundir import run_dir

    for name in ("../x", "/etc", "a/b", "..", ".", ""):
        with pytest.raises(SpecError):
            run_dir(name)
    outside = results_dir.parent / "outside"
    outside.mkdir()
    (results_dir / "runs").mkdir(parents=True)
    (results_dir / "runs" / "evil").symlink_to(outside, target_is_directory=True)  # a planted symlink
    with pytest.raises(SpecError, match="outside"):
        run_dir("evil")
    from occctl.report.writer import report_dir

    for name in ("../x", "a/../../b"):  # report names come from runs: they stay under results/reports
        with pytest.raises(SpecError, match="outside"):
            report_dir(name)
    assert run_dir("ok_name-1.2").parent == results_dir / "runs"


def test_report_out_goes_where_the_user_says_but_never_overwrites(tmp_path, results_dir):
    from occctl.errors import SpecError
    from occctl.report.writer import report_dir

    elsewhere = tmp_path / "papers" / "occ"
    assert report_dir("r", str(elsewhere)) == elsewhere.resolve()  # outside results/: allowed
    elsewhere.mkdir(parents=True)
    assert report_dir("r", str(elsewhere)) == elsewhere.resolve()  # empty: nothing to overwrite
    (elsewhere / "table.md").write_text("mine")
    with pytest.raises(SpecError, match="not empty") as e:
        report_dir("r", str(elsewhere))
    assert e.value.exit_code == 2 and "--force" in e.value.hint
    assert report_dir("r", str(elsewhere), force=True) == elsewhere.resolve()
    with pytest.raises(SpecError, match="is a file"):
        report_dir("r", str(elsewhere / "table.md"), force=True)


def test_bench_out_refuses_an_existing_file_before_any_work(tmp_path, results_dir):
    existing = tmp_path / "bench.json"
    existing.write_text("{}")
    result = runner.invoke(app, ["bench", "overhead", str(REPO / "specs" / "tiny_occ.yaml"), "--out", str(existing)])
    assert result.exit_code == 2 and "refusing to overwrite" in result.output
    assert existing.read_text() == "{}" and not (results_dir / "runs").exists()
