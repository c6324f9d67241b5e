"""Every suite of the registry (``occctl.eval.suites.SUITES``), picked up by the parametrized tests, not by a
hand-written list: its entry is well formed, and a math suite runs ``occctl eval`` end to end on two rows per
benchmark (a canned engine: one right and one wrong answer per benchmark) into its results JSON and metric keys."""

import json

import pytest
from typer.testing import CliRunner

from occctl.cli import app
from occctl.eval.engines import Completion
from occctl.eval.runner import KINDS
from occctl.eval.suites import SUITES

MATH = sorted(name for name, suite in SUITES.items() if suite.kind == "math")


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_is_well_formed(name):
    suite = SUITES[name]
    assert suite.name == name and suite.kind in KINDS and suite.about, suite
    assert suite.benchmarks and len(set(suite.all_benchmarks)) == len(suite.all_benchmarks)
    assert not suite.hub or set(suite.hub) == set(suite.all_benchmarks), "--from-hub needs every benchmark's source"
    assert all("/" not in b and b == b.lower() for b in suite.all_benchmarks)  # file stems and metric segments
    assert suite.sampling.k >= 1 and suite.sampling.max_new_tokens >= 1


class BoxedOne:
    """Stands in for the hf engine: every completion answers 1."""

    name = "canned"

    def generate(self, prompts, sampling, max_new_tokens, seed):
        return [Completion(token_ids=[5, 6], text="so \\boxed{1}", finish_reason="stop") for _ in prompts]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("name", MATH)
def test_every_math_suite_evaluates_end_to_end(name, checkpoint, tmp_path, monkeypatch):
    suite = SUITES[name]
    root = tmp_path / "data" / name
    root.mkdir(parents=True)
    for benchmark in suite.all_benchmarks:
        rows = [{"id": f"{benchmark}-0", "problem": "1*1=?", "answer": "1"},
                {"id": f"{benchmark}-1", "problem": "1+1=?", "answers": ["2"]}]
        (root / f"{benchmark}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path / "results"))
    from occctl.eval import engines

    monkeypatch.setattr(engines, "make_engine", lambda *a, **kw: BoxedOne())
    result = CliRunner().invoke(app, ["eval", "--suite", name, "--checkpoint", str(checkpoint), "-k", "1",
                                      "--data-dir", str(tmp_path / "data"), "--no-mlflow", "--workers", "1"])
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "results").rglob("results_math_verify_v1_k1.json")
    out = json.loads(path.read_text())
    assert sorted(out["benchmarks"]) == sorted(suite.benchmarks)  # the defaults; optional ones on request
    assert all(b["avg_at_k"] == 0.5 for b in out["benchmarks"].values()), out["benchmarks"]
    for benchmark in suite.benchmarks:
        assert out["metrics"][f"eval/{name}/{benchmark}/avg_at_1/math_verify_v1"] == 0.5


def test_from_hub_without_a_hub_source_is_a_spec_error():
    from occctl.errors import SpecError
    from occctl.eval.suites import Suite, load_benchmarks

    local = Suite(name="local", kind="math", benchmarks=("a", "b"), about="files only")
    with pytest.raises(SpecError, match="suite local has no HF-hub source for a, b"):
        load_benchmarks(local, ["a", "b"], from_hub=True)
