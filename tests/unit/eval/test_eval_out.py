"""`occctl eval --out`: results go where the user says (outside results/ too), never over existing ones without
--force."""

import json

from typer.testing import CliRunner

from occctl.cli import app


def test_out_writes_anywhere_and_refuses_to_overwrite_without_force(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path / "results"))
    out = tmp_path / "elsewhere" / "paper"  # outside the results root, created on demand
    args = ["eval", "--suite", "tiny", "--checkpoint", str(checkpoint), "--limit", "3", "-k", "1", "--no-mlflow",
            "--out", str(out)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    written = sorted(p.name for p in out.iterdir())
    assert written == ["results_exact_match_v1_k1_limit3.json", "results_exact_match_v1_k1_limit3.md"]
    result = json.loads((out / written[0]).read_text())
    assert result["files"] == [str(out / written[0]), str(out / written[1])]
    assert not list((tmp_path / "results").rglob("results_*.json"))  # not also beside the cache
    (out / written[1]).write_text("edited by hand")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "results_exact_match_v1_k1_limit3.json exists" in again.output
    assert "--force" in again.output and (out / written[1]).read_text() == "edited by hand"
    forced = CliRunner().invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / written[1]).read_text().startswith("# tiny_limit3")


def test_out_that_is_a_file_is_a_usage_error(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path / "results"))
    (tmp_path / "taken").write_text("x")
    result = CliRunner().invoke(app, ["eval", "--suite", "tiny", "--checkpoint", str(checkpoint), "--limit", "2",
                                      "--no-mlflow", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "not a directory" in result.output
