"""`occctl eval` on a real tiny run: math6 (limit 3, k 2) on CPU with MLflow, resume after an interruption
without regenerating, regrading from the cache, and the tiny suite against the run's own summary."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.cli import app
from occctl.eval import cache as evcache
from occctl.eval.engines import HfEngine
from occctl.runner import run_spec
from occctl.spec import load_spec
from occctl.tracking import Store

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "tiny_occ.yaml"
RUN = "ev_tiny"

pytestmark = pytest.mark.slow
cli = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One 2-step tiny run shared by this module's tests (the warm-up is cached in results/cache)."""
    root = tmp_path_factory.mktemp("eval_results") / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OCCCTL_RESULTS_DIR", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary = run_spec(load_spec(SPEC, [f"name={RUN}", "train.steps=2", "eval.samples_per_problem=2",
                                            "train.prompts_per_generation=16"]))
    return root, summary


@pytest.fixture
def env(tiny_run, monkeypatch):
    root, summary = tiny_run
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root, summary


def _needs_math6():
    from occctl.data import dataset_dir
    from occctl.errors import DataMissingError

    try:
        dataset_dir("math6", ["aime24.jsonl", "math500.jsonl", "olympiadbench.jsonl"])
    except DataMissingError as e:
        pytest.skip(f"math6 data not available: {e.message}")


def _uri(root):
    return f"sqlite:///{root / 'mlflow.db'}"


def _count_generate(monkeypatch, fail_on_call=None):
    """Wrap HfEngine.generate: record how many samples each call asked for; optionally raise on call N."""
    calls = []
    real = HfEngine.generate

    def generate(self, prompts, *args, **kwargs):
        calls.append(len(prompts))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt
        return real(self, prompts, *args, **kwargs)

    monkeypatch.setattr(HfEngine, "generate", generate)
    return calls


def test_math6_on_a_tiny_run_completes_and_logs_to_the_training_run(env):
    _needs_math6()
    root, summary = env
    result = cli.invoke(app, ["eval", "--suite", "math6", "--run", RUN, "--limit", "3", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert "math6_limit3" in result.output and "math_verify@1" in result.output
    files = sorted((root / "runs" / RUN / "eval" / "math6").glob("*/results_math_verify_v1_k2_limit3.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())
    assert res["grader"] == "math_verify@1" and res["mlflow_run_id"] == summary["mlflow_run_id"]
    assert set(res["benchmarks"]) == {"aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench"}
    for b in res["benchmarks"].values():
        assert b["n_problems"] == 3 and b["k"] == 2 and 0.0 <= b["avg_at_k"] <= b["pass_at_k"] <= 1.0
        assert 0.0 <= b["mtp_acceptance"] <= 1.0 and b["mtp_tokens"] > 0  # the tiny run has an MTP head
    # the tiny model's 64-token context: capped and recorded, not silently
    assert res["effective"]["max_new_tokens"] == 32 and res["effective"]["context_length"] == 64
    gens = evcache.read_rows(Path(res["cache"]) / "generations" / "aime24.jsonl")
    assert len(gens) == 6 and all(len(g["token_ids"]) <= 32 and g["prompt_tokens"] <= 32 for g in gens.values())
    assert files[0].with_suffix(".md").read_text().count("| aime24 |") == 1
    # MLflow: metrics on the training run, named eval/<suite>/<benchmark>/<metric>/<grader>
    info = Store(_uri(root)).run_info(summary["mlflow_run_id"])
    assert info["status"] == "FINISHED"  # attached, not re-terminated or re-opened
    for name in ("aime24", "olympiadbench"):
        assert info["metrics"][f"eval/math6_limit3/{name}/avg_at_2/math_verify_v1"] == res["benchmarks"][name][
            "avg_at_k"]
        assert f"eval/math6_limit3/{name}/pass_at_2/math_verify_v1" in info["metrics"]
    assert info["metrics"]["eval/math6_limit3/avg_at_2/math_verify_v1"] == res["average"]["avg_at_k"]
    assert "eval/math6_limit3/mtp_acceptance" in info["metrics"]


def test_an_interrupted_eval_resumes_without_regenerating(env, monkeypatch):
    _needs_math6()
    root, _ = env
    args = ["eval", "--suite", "math6", "--run", RUN, "--benchmarks", "aime24,math500", "--limit", "2", "-k", "3",
            "--seed", "7", "--batch-size", "4", "--no-mlflow"]
    calls = _count_generate(monkeypatch, fail_on_call=2)
    first = cli.invoke(app, args)
    assert first.exit_code == 130, first.output
    assert calls == [4, 2]  # aime24: the first batch finished and was stored; the second was interrupted
    (cache_dir,) = [d for d in (root / "runs" / RUN / "eval" / "math6").iterdir() if "_s7-" in d.name]
    stored = evcache.read_rows(evcache.generations_path(cache_dir, "aime24"))
    assert len(stored) == 4
    with evcache.generations_path(cache_dir, "aime24").open("a") as f:
        f.write('{"id": "aime24-001", "sample": 2, "text": "tor')  # a kill mid-write leaves a torn line

    calls = _count_generate(monkeypatch)
    second = cli.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert sum(calls) == 2 * 2 * 3 - 4  # only the 8 missing samples were generated
    after = evcache.read_rows(evcache.generations_path(cache_dir, "aime24"))
    assert len(after) == 6 and all(after[key] == row for key, row in stored.items())
    assert len(evcache.read_rows(evcache.generations_path(cache_dir, "math500"))) == 6

    # everything cached: regrading with the other grader builds no engine and generates nothing
    def no_engine(*a, **kw):
        raise AssertionError("an engine was built although every generation is cached")

    monkeypatch.setattr(HfEngine, "__init__", no_engine)
    third = cli.invoke(app, [*args, "--grader", "deepscaler@2", "--grader", "math_verify@1"])
    assert third.exit_code == 0, third.output
    assert "all 12 cached" in third.output
    names = {p.name for p in cache_dir.glob("results_*.json")}
    assert {"results_deepscaler_v2_k3_aime24+math500_limit2.json",
            "results_math_verify_v1_k3_aime24+math500_limit2.json"} <= names
    graded = evcache.read_rows(evcache.grades_path(cache_dir, "deepscaler_v2", "aime24"))
    assert len(graded) == 6 and all(r["status"] == "ok" for r in graded.values())


def test_tiny_suite_reproduces_the_run_summary(env):
    root, summary = env
    result = cli.invoke(app, ["eval", "--suite", "tiny", "--run", RUN])
    assert result.exit_code == 0, result.output
    res = json.loads((root / "runs" / RUN / "eval" / "tiny" / "results_exact_match_v1_k2.json").read_text())
    heldout = res["benchmarks"]["heldout"]
    assert res["grader"] == "exact_match@1" and heldout["k"] == summary["heldout_k"] == 2
    assert heldout["n_problems"] == 200
    # same problems, k, temperature, token budget and seed as the run's own held-out eval: identical numbers
    assert heldout["avg_at_k"] == summary["heldout_acc_after"]
    assert heldout["greedy"] == summary["heldout_greedy_after"]
    assert res["run_summary"]["matches"] is True and "matches" in result.output
    info = Store(_uri(root)).run_info(summary["mlflow_run_id"])
    assert info["metrics"]["eval/tiny/heldout/avg_at_2/exact_match_v1"] == summary["heldout_acc_after"]


def test_a_checkpoint_outside_any_run_gets_its_own_eval_run(env, tmp_path):
    root, summary = env
    copy = tmp_path / "exported"
    shutil.copytree(summary["checkpoint"], copy)
    args = ["eval", "--suite", "tiny", "--checkpoint", str(copy), "--limit", "20", "-k", "2"]
    first = cli.invoke(app, args)
    assert first.exit_code == 0, first.output
    (res_file,) = (root / "evals").glob("*/eval/tiny/results_exact_match_v1_k2_limit20.json")
    res = json.loads(res_file.read_text())
    assert res["run"] is None and res["mlflow_run_id"] not in (None, summary["mlflow_run_id"])
    info = Store(_uri(root)).run_info(res["mlflow_run_id"])
    assert info["tags"]["occctl.kind"] == "eval" and "eval/tiny_limit20/heldout/avg_at_2/exact_match_v1" in \
        info["metrics"]
    second = cli.invoke(app, args)  # the same target reuses its eval run
    assert second.exit_code == 0
    assert json.loads(res_file.read_text())["mlflow_run_id"] == res["mlflow_run_id"]
    # while the run's own checkpoint, passed by path, still belongs to the run
    own = cli.invoke(app, ["eval", "--suite", "tiny", "--checkpoint", summary["checkpoint"], "--limit", "10"])
    assert own.exit_code == 0, own.output
    res = json.loads((root / "runs" / RUN / "eval" / "tiny" / "results_exact_match_v1_k2_limit10.json").read_text())
    assert res["run"] == RUN and res["mlflow_run_id"] == summary["mlflow_run_id"]


def test_bad_targets_are_usage_errors(env):
    for args, needle in ((["eval", "--suite", "math6"], "exactly one of"),
                         (["eval", "--suite", "math6", "--run", "nope"], "no run named 'nope'"),
                         (["eval", "--suite", "math7", "--run", RUN], "did you mean 'math6'"),
                         (["eval", "--suite", "math6", "--run", RUN, "--grader", "mathverify@1"], "did you mean"),
                         (["eval", "--suite", "math6", "--run", RUN, "--engine", "vlm"], "did you mean 'vllm'")):
        result = cli.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output, (args, result.output)


def test_sglang_without_the_package_is_a_clear_environment_error(env):
    _needs_math6()
    try:
        import sglang  # noqa: F401
        pytest.skip("sglang is installed here")
    except ImportError:
        pass
    result = cli.invoke(app, ["eval", "--suite", "math6", "--run", RUN, "--limit", "1", "-k", "1",
                              "--seed", "11", "--engine", "sglang", "--no-mlflow"])
    assert result.exit_code == 3 and "sglang" in result.output and "pip install" in result.output
