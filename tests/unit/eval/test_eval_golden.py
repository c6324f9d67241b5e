"""Golden: `occctl eval`'s results JSON and markdown for a fixed tiny run stay byte-for-byte what they were.

A math6 eval on an untrained tiny checkpoint with a canned engine (fixed completions, so the graders see real
answers: right, wrong, unboxed, unit-suffixed), both graders, and the tiny suite with the real model. Fields that
name the machine or the moment (paths, timestamps, library versions) are replaced by placeholders; everything else
must match ``golden/``. To regenerate after an intended change: ``OCCCTL_UPDATE_GOLDEN=1 pytest <this file>``, and
review the diff.
"""

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.cli import app
from occctl.eval.engines import Completion

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("OCCCTL_UPDATE_GOLDEN") == "1"
BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
# two problems per benchmark: (gold answers, then the canned completion for samples 0, 1, 2)
ROWS = [
    (["21"], ["so \\boxed{21}", "\\boxed{22}", "no box: 21"]),
    (["\\frac{1}{2}"], ["\\boxed{0.5}", "\\boxed{\\frac12}", "<think>x</think> $\\boxed{1/3}$"]),
    (["9.6"], ["\\boxed{9.6 \\text{ cm}}", "\\boxed{9.60}", "\\boxed{9.6"]),
    (["(1,2)", "(2,1)"], ["\\boxed{(2,1)}", "\\boxed{(1,3)}", "\\boxed{ (1, 2) }"]),
]


class CannedEngine:
    """Stands in for the hf engine: completions in the order the runner asks for them (benchmark, problem,
    sample), taken from ROWS (the tiny model's 64-token context truncates every prompt to the same instruction
    tail, so prompts cannot tell problems apart); token ids are digits."""

    name = "canned"

    def __init__(self, texts: list[str] | None = None) -> None:
        default = [t for b in range(len(BENCHMARKS)) for i in range(2) for t in ROWS[(b + i) % len(ROWS)][1]]
        self.texts = texts or default
        self.calls = 0

    def generate(self, prompts, sampling, max_new_tokens, seed):
        out = []
        for _ in prompts:
            text = self.texts[self.calls]
            self.calls += 1
            out.append(Completion(token_ids=[4 + (len(text) + i) % 10 for i in range(6)], text=text,
                                  finish_reason="stop" if self.calls % 4 else "length"))
        return out

    def close(self) -> None:
        pass


def _data(tmp_path: Path) -> Path:
    root = tmp_path / "math6"
    root.mkdir()
    for b, name in enumerate(BENCHMARKS):
        rows = [ROWS[(b + i) % len(ROWS)] for i in range(2)]
        lines = [json.dumps({"id": f"{name}-{i}", "problem": f"Problem {i} of {name}: 1+{b}=?", "answer": gold[0],
                             "answers": gold}) for i, (gold, _) in enumerate(rows)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _stable(text: str, tmp_path: Path, checkpoint: Path) -> str:
    text = text.replace(str(checkpoint), "<checkpoint>").replace(str(tmp_path), "<tmp>")
    return re.sub(r"/evals/[^/]+/", "/evals/<slug of the checkpoint path>/", text)


def _normalized_json(path: Path, tmp_path: Path, checkpoint: Path) -> str:
    result = json.loads(_stable(path.read_text(), tmp_path, checkpoint))
    result["created"] = "<created>"
    result["versions"] = {k: "<version>" for k in result["versions"]}
    return json.dumps(result, indent=2) + "\n"  # key order is part of the output


def _compare(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with OCCCTL_UPDATE_GOLDEN=1 once"
    assert text == path.read_text(), f"{name} differs from the golden file"


def _results(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(root.rglob("results_*.*"))}


def test_eval_outputs_match_the_golden_files(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path / "results"))
    data = _data(tmp_path)
    from occctl.eval import engines

    monkeypatch.setattr(engines, "make_engine", lambda *a, **kw: CannedEngine())
    runner = CliRunner()
    math = runner.invoke(app, ["eval", "--suite", "math6", "--checkpoint", str(checkpoint), "-k", "3",
                               "--data-dir", str(data), "--grader", "math_verify@1", "--grader", "deepscaler@2",
                               "--no-mlflow", "--workers", "1"])
    assert math.exit_code == 0, math.output
    tiny = runner.invoke(app, ["eval", "--suite", "tiny", "--checkpoint", str(checkpoint), "--limit", "6", "-k", "2",
                               "--no-mlflow"])
    assert tiny.exit_code == 0, tiny.output
    files = _results(tmp_path / "results")
    assert sorted(files) == ["results_deepscaler_v2_k3.json", "results_deepscaler_v2_k3.md",
                             "results_exact_match_v1_k2_limit6.json", "results_exact_match_v1_k2_limit6.md",
                             "results_math_verify_v1_k3.json", "results_math_verify_v1_k3.md"]
    for name, path in files.items():
        if name.endswith(".json"):
            _compare(name, _normalized_json(path, tmp_path, checkpoint))
        else:
            _compare(name, _stable(path.read_text(), tmp_path, checkpoint))


def test_grading_timeouts_are_counted_warned_about_and_regraded(checkpoint, tmp_path, monkeypatch):
    """An answer that overruns the grading deadline: incorrect, but counted per benchmark (JSON, markdown, MLflow
    metric names), warned about, and graded again on the next run."""
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path / "results"))
    data = _data(tmp_path)
    from occctl.eval import cache as evcache
    from occctl.eval import engines

    hang = "\\boxed{9^{9^{9^{9}}}}"  # math-verify evaluates the tower in C: only the deadline stops it
    monkeypatch.setattr(engines, "make_engine", lambda *a, **kw: CannedEngine([hang, "\\boxed{0.5}"]))
    args = ["eval", "--suite", "math6", "--checkpoint", str(checkpoint), "-k", "1", "--benchmarks", "aime24",
            "--data-dir", str(data), "--grade-timeout", "0.5", "--no-mlflow", "--workers", "1"]
    first = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert first.exit_code == 0, first.output
    assert "1 answers hit the 0.5 s grading deadline" in first.output and "1 grading workers replaced" in first.output
    (path,) = (tmp_path / "results").rglob("results_math_verify_v1_k1_aime24.json")
    result = json.loads(path.read_text())
    bench = result["benchmarks"]["aime24"]
    assert (bench["timeouts"], bench["worker_replacements"], bench["avg_at_k"]) == (1, 1, 0.5)
    assert result["grade_timeout_s"] == 0.5
    assert result["metrics"]["eval/math6/aime24/grade_timeouts/math_verify_v1"] == 1
    assert result["metrics"]["eval/math6/aime24/worker_replacements/math_verify_v1"] == 1
    assert "**Warning:** 1 answers hit the 0.5 s grading deadline" in path.with_suffix(".md").read_text()
    # the next run grades the timed-out answer again (and only it)
    grades = evcache.grades_path(Path(result["cache"]), "math_verify_v1", "aime24")
    assert len(grades.read_text().splitlines()) == 2
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert len(grades.read_text().splitlines()) == 3


def test_a_model_that_cannot_load_is_one_environment_error(tmp_path, monkeypatch):
    """The math scorer loads its tokenizer with the engines' loader: the same one-line error and hint as an
    engine (tests/unit/eval/test_engines.py), exit 3."""
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["eval", "--suite", "math6", "--model", "nobody/no-such-model", "-k", "1", "--benchmarks", "aime24",
            "--data-dir", str(_data(tmp_path)), "--no-mlflow", "--workers", "1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 3, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot load model nobody/no-such-model: "), result.output
    assert "hint: pass a local HF directory, or a hub id on a machine with network access" in result.output
