"""Bad inputs a demanding user gives (issue 26): each is one `error:` line with the exit code errors.py documents
(2 bad input, 3 environment), never a traceback, never a silent success. Nothing here trains: every case fails
before the first optimizer step (the disk-full and read-only cases are in test_disk_faults.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
from occctl.runlock import hold_run
from occctl.rundir import RunDir
from occctl.spec import load_spec
from occctl.warmup import DONE, warmup_key
from reliability import SPEC, assert_one_line_error, damage, fake_run, invoke, log_runs, tiny_checkpoint

SETS = ["name=r", "train.steps=2", "tracking.mlflow=false"]  # no MLflow store to create: these fail before it
RUN_ARGS = ["run", str(SPEC), *(arg for s in SETS for arg in ("--set", s))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture
def copy(checkpoint, tmp_path):
    """A private copy of the tiny checkpoint (the case may damage it)."""
    return shutil.copytree(checkpoint, tmp_path / "copy")


# ---- damaged weights: eval --checkpoint, bench rollout --checkpoint, the warm-up cache -------------------------

DAMAGES = ["truncated", "empty", "header"]
FILES = ["model.safetensors", "model-mtp.safetensors"]


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("how", DAMAGES)
def test_eval_of_damaged_weights(copy, results_dir, file, how):
    damage(copy / file, how)
    result = invoke(["eval", "--suite", "tiny", "--checkpoint", str(copy), "--limit", "2", "-k", "1"])
    assert_one_line_error(result, 2, f"{file} is not a readable safetensors file")


def test_eval_of_a_checkpoint_without_its_tokenizer(copy, results_dir):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (copy / name).unlink(missing_ok=True)
    result = invoke(["eval", "--suite", "tiny", "--checkpoint", str(copy), "--limit", "2", "-k", "1"])
    assert_one_line_error(result, 2, "no tokenizer files (tokenizer.json or tokenizer_config.json)")


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("how", DAMAGES)
def test_bench_rollout_of_damaged_weights(copy, results_dir, file, how):
    damage(copy / file, how)
    result = invoke(["bench", "rollout", str(SPEC), "--checkpoint", str(copy), "--rounds", "2"])
    assert_one_line_error(result, 2, f"{file} is not a readable safetensors file")


@pytest.mark.parametrize("how", DAMAGES)
def test_run_from_a_damaged_warmup_cache(checkpoint, results_dir, tmp_path, monkeypatch, how):
    spec = load_spec(SPEC, SETS)
    cached = shutil.copytree(checkpoint, tmp_path / "cache" / "warmup" / warmup_key(spec))
    (cached / DONE).write_text(json.dumps({"key": warmup_key(spec)}))
    damage(cached / "model.safetensors", how)
    monkeypatch.setenv("OCCCTL_CACHE_DIR", str(tmp_path / "cache"))
    assert_one_line_error(invoke(RUN_ARGS), 2, "model.safetensors is not a readable safetensors file")


# ---- eval options -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--suite", "tiny", "--dtype", "float7"], "--dtype 'float7'"),
    (["--suite", "math6", "--dtype", "float7"], "--dtype 'float7'"),
    (["--suite", "tiny", "--engine", "vllmx"], "--engine vllmx: the tiny suite scores through the training run's held-out eval"),
    (["--suite", "tiny", "--dtype", "bfloat16"], "--dtype: not used by the tiny suite"),
    (["--suite", "tiny", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--suite", "tiny", "--batch-size", "8"], "--batch-size: not used by the tiny suite"),
    (["--suite", "tiny", "--top-p", "0.5"], "--top-p: not used by the tiny suite"),
    (["--suite", "tiny", "--benchmarks", "aime24"], "--benchmarks: not used by the tiny suite"),
    (["--suite", "math6", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--suite", "math6", "--tp-size", "0"], "--tp-size must be >= 1"),
    (["--suite", "math6", "--engine", "vllmx"], "unknown engine 'vllmx'"),
    (["--suite", "tiny", "-k", "0"], "-k must be >= 1"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_eval_options_that_cannot_apply(checkpoint, results_dir, args, fragment):
    result = invoke(["eval", *args, "--checkpoint", str(checkpoint), "--limit", "1"])
    assert_one_line_error(result, 2, fragment)


def test_missing_math6_data_exits_3(checkpoint, results_dir, tmp_path):
    result = invoke(["eval", "--suite", "math6", "--checkpoint", str(checkpoint), "--limit", "1", "-k", "1"],
                    OCCCTL_DATA_DIR=str(tmp_path / "nowhere"))
    assert_one_line_error(result, 3, "math6 data not found")


# ---- eval --run: the run's own, complete checkpoint ------------------------------------------------------------

def test_eval_of_a_run_without_completion_marker(checkpoint, results_dir):
    fake_run(results_dir, "r", checkpoint, marker=False)
    assert_one_line_error(invoke(["eval", "--suite", "tiny", "--run", "r"]), 2, "no occctl_complete.json")


def test_eval_of_a_half_exported_run(checkpoint, results_dir):
    """A full disk during the export: weights written, the MTP file lost; the marker lists it."""
    run = fake_run(results_dir, "r", checkpoint)
    (run / "checkpoints" / "final" / "model-mtp.safetensors").unlink()
    assert_one_line_error(invoke(["eval", "--suite", "tiny", "--run", "r"]), 2, "model-mtp.safetensors is missing")


def test_eval_of_a_run_whose_weights_changed_size(checkpoint, results_dir):
    run = fake_run(results_dir, "r", checkpoint)
    damage(run / "checkpoints" / "final" / "model.safetensors", "truncated")
    assert_one_line_error(invoke(["eval", "--suite", "tiny", "--run", "r"]), 2, "the export wrote")


def test_eval_of_the_final_checkpoint_by_path_needs_the_marker_too(checkpoint, results_dir):
    run = fake_run(results_dir, "r", checkpoint, marker=False)
    result = invoke(["eval", "--suite", "tiny", "--checkpoint", str(run / "checkpoints" / "final")])
    assert_one_line_error(result, 2, "is incomplete")


def test_eval_of_an_unfinished_runs_half_export_by_path(checkpoint, results_dir):
    """The export died (a full disk): no summary.json, no marker; by path it is still the run's, and refused."""
    run = fake_run(results_dir, "r", checkpoint, marker=False)
    (run / "summary.json").unlink()
    (run / "checkpoints" / "final" / "model-mtp.safetensors").unlink()
    result = invoke(["eval", "--suite", "tiny", "--checkpoint", str(run / "checkpoints" / "final")])
    assert_one_line_error(result, 2, "run 'r' (unfinished): checkpoint")


def test_eval_of_a_missing_run(results_dir):
    assert_one_line_error(invoke(["eval", "--suite", "tiny", "--run", "nope"]), 2, "no run named 'nope'")


def test_eval_run_scores_its_own_folder_after_fresh(checkpoint, results_dir):
    """--fresh moved the old run aside; its summary.json still names the new folder's checkpoint path."""
    from occctl.eval.targets import resolve_target
    from occctl.rundir import move_aside

    old = move_aside(fake_run(results_dir, "r", checkpoint))
    fake_run(results_dir, "r", checkpoint)
    assert json.loads((old / "summary.json").read_text())["checkpoint"] == str(results_dir / "runs/r/checkpoints/final")
    target = resolve_target(old.name, None, None)
    assert target.model == str(old / "checkpoints" / "final") and target.run_name == old.name


def test_eval_run_of_a_copied_folder_scores_the_copy(checkpoint, results_dir):
    from occctl.eval.targets import resolve_target

    original = fake_run(results_dir, "r", checkpoint)
    shutil.copytree(original, results_dir / "runs" / "r2")
    assert resolve_target("r2", None, None).model == str(results_dir / "runs" / "r2" / "checkpoints" / "final")


# ---- run: damaged run folders, a folder another process writes --------------------------------------------------

def _started_run(results_dir, sets=SETS):
    """A run folder of the spec ``sets`` make as a killed first start leaves it (spec written, nothing trained)."""
    from occctl.spec import dump_spec

    run = results_dir / "runs" / "r"
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text(dump_spec(load_spec(SPEC, sets)))
    return run


@pytest.mark.parametrize("file, content, fragment", [
    ("spec.yaml", b"\xff\xfe\x00garbage", "spec.yaml: unreadable"),
    ("tracking.json", b"\xff\xfe\x00garbage", "tracking.json: unreadable"),
    ("tracking.json", b"[1, 2]", "tracking.json: unreadable"),
    ("metrics.jsonl", b"\xff\xfe\x00garbage\n" + b'{"step": 1, "loss": 1.0}\n', "metrics.jsonl:1: not a JSON line"),
    ("metrics.jsonl", b'{"step": 1}\n[1, 2]\n{"step": 2}\n', "metrics.jsonl:2: not a metrics row"),
])
def test_resume_of_a_damaged_run_folder(results_dir, file, content, fragment, monkeypatch):
    sets = SETS[:-1] if file == "tracking.json" else SETS  # tracking.json is read when MLflow is on
    run = _started_run(results_dir, sets)
    (run / file).write_bytes(content)
    monkeypatch.setattr("occctl.warmup.ensure_warm_start", _no_training)
    args = ["run", str(SPEC), *(arg for s in sets for arg in ("--set", s))]
    assert_one_line_error(invoke(args), 2, fragment)


def _no_training(*args, **kwargs):
    raise AssertionError("the run must stop before it trains")


def test_run_whose_folder_is_a_plain_file(results_dir):
    (results_dir / "runs").mkdir(parents=True)
    (results_dir / "runs" / "r").write_text("not a folder")
    assert_one_line_error(invoke(RUN_ARGS), 2, "is a file, not a run folder")


def test_run_of_a_folder_another_process_writes(results_dir):
    with hold_run(RunDir.named("r")):
        result = invoke(RUN_ARGS)
        fresh = invoke([*RUN_ARGS, "--fresh"])
    assert_one_line_error(result, 2, f"pid {os.getpid()} on host {socket.gethostname()}")
    assert_one_line_error(fresh, 2, f"pid {os.getpid()}")
    assert [p.name for p in (results_dir / "runs").iterdir()] == ["r"], "--fresh moved a folder being written"


def test_a_stale_lock_is_taken_over(results_dir):
    run = RunDir.named("r")
    with hold_run(run):
        pass  # released, as by a process that died: the file stays, naming it
    assert (run.path / "run.lock").is_file()
    with hold_run(run):
        assert json.loads((run.path / "run.lock").read_text())["pid"] == os.getpid()


def test_run_with_a_sqlite_uri_in_a_missing_directory(results_dir, tmp_path):
    sets = [*SETS[:-1], f"tracking.uri=sqlite:///{tmp_path}/nowhere/mlflow.db"]
    result = invoke(["run", str(SPEC), *(arg for s in sets for arg in ("--set", s))])
    assert_one_line_error(result, 2, "does not exist")
    assert not (tmp_path / "nowhere").exists() and not (results_dir / "runs" / "r").exists()


# ---- report: what it could not find ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    """An MLflow store of a study (made once: creating a sqlite store takes seconds)."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    log_runs(f"sqlite:///{db}", [("occ", 0, "FINISHED"), ("occ", 1, "FINISHED"), ("ce", 0, "FINISHED")])
    return db


@pytest.fixture
def study_store(results_dir, study_db):
    results_dir.mkdir(parents=True)
    shutil.copy(study_db, results_dir / "mlflow.db")
    return results_dir


@pytest.mark.parametrize("args, fragment", [
    (["--compare", "detach,occ"], "no finished runs of detach"),
    (["--compare", "occ,bogus"], "no finished runs of bogus"),
    (["--compare", ""], "names no rows"),
    (["--compare", ","], "names no rows"),
    (["--compare", "occ", "--metric", "bogus/key"], "--metric 'bogus/key'"),
    (["--compare", "all", "--rows", "bogus.key"], "--rows 'bogus.key'"),
    (["--compare", "occ", "--regime", "bogus"], "--regime 'bogus'"),
    (["--compare", "occ", "--group", "nothing"], "no finished runs"),
    (["--compare", "occ", "--at-step", "0", "--metric", "reward"], "--at-step"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_report_names_what_it_could_not_find(study_store, args, fragment):
    group = [] if "--group" in args else ["--group", "g"]
    assert_one_line_error(invoke(["report", *group, *args]), 2, fragment)


def test_report_warns_about_unfinished_cells(study_store):
    log_runs(f"sqlite:///{study_store / 'mlflow.db'}", [("occ", 2, "RUNNING")])
    result = invoke(["report", "--group", "g", "--compare", "occ,ce"])
    assert result.exit_code == 0, result.output
    assert "warning: group g: 1 cell(s) not finished, left out: g.regime-occ.seed-2 (running)" in result.stderr
    table = next((study_store / "reports").iterdir()) / "table.md"
    assert "g.regime-occ.seed-2" in table.read_text()


def test_report_with_a_tracking_uri_in_a_missing_directory(results_dir, tmp_path):
    result = invoke(["report", "--compare", "occ"], MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/no/mlflow.db")
    assert_one_line_error(result, 2, "$MLFLOW_TRACKING_URI")


# ---- ls, ui ----------------------------------------------------------------------------------------------------

def test_ls_lists_a_garbage_spec_as_broken_in_its_group(checkpoint, results_dir):
    run = fake_run(results_dir, "g.regime-occ.seed-0", checkpoint)
    (run / "spec.yaml").write_bytes(b"\xff\xfe\x00garbage")
    result = invoke(["ls", "--group", "g", "--json", "--no-mlflow"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["status"] == "broken" and row["problem"].startswith("spec.yaml")


def test_ls_shows_the_lock_holder_as_running(results_dir):
    run = _started_run(results_dir)
    with hold_run(RunDir(run)):
        (row,) = json.loads(invoke(["ls", "--json", "--no-mlflow"]).stdout)
    assert row["status"] == "running" and f"pid {os.getpid()}" in row["problem"]
    (row,) = json.loads(invoke(["ls", "--json", "--no-mlflow"]).stdout)
    assert row["status"] == "unfinished"


def test_ui_on_a_busy_port_exits_3(results_dir, monkeypatch):
    import occctl.ui as ui_module

    monkeypatch.setattr(ui_module.subprocess, "Popen", _no_training)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = invoke(["ui", "--port", str(busy.getsockname()[1])])
    assert_one_line_error(result, 3, "cannot serve the MLflow UI")


# ---- more of what a user mistypes: each already one line, kept so it stays so -----------------------------------

@pytest.mark.parametrize("args, code, fragment", [
    (["run", "nowhere.yaml"], 2, "nowhere.yaml"),
    (["run", str(SPEC), "--set", "train.steps=0"], 2, "train.steps"),
    (["run", str(SPEC), "--set", "name=../escape"], 2, "name"),
    (["run", str(SPEC), "--launcher", "cloud"], 2, "launcher"),
    (["validate", "nowhere.yaml"], 2, "nowhere.yaml"),
    (["eval", "--suite", "tiny", "--run", "r", "--model", "m"], 2, "exactly one of"),
    (["eval", "--suite", "tiny", "--checkpoint", "/nonexistent/ckpt"], 2, "not an HF model directory"),
    (["eval", "--suite", "tiny9", "--model", "/nonexistent"], 2, "/nonexistent"),
    (["eval", "--suite", "math6", "--model", "{ckpt}", "--grader", "bogus@1"], 2, "bogus@1"),
    (["eval", "--suite", "math6", "--model", "{ckpt}", "--limit", "0"], 2, "--limit must be >= 1"),
    (["eval", "--suite", "math6", "--model", "{ckpt}", "--temperature", "-1"], 2, "--temperature must be >= 0"),
    (["eval", "--suite", "math6", "--model", "{ckpt}", "--top-p", "2"], 2, "--top-p must be in (0, 1]"),
    (["eval", "--suite", "tiny", "--model", "{ckpt}", "--grade-timeout", "0"], 2, "--grade-timeout must be > 0"),
    (["bench", "rollout", str(SPEC), "--checkpoint", "/nonexistent/ckpt"], 2, "not a model directory"),
    (["bench", "rollout", str(SPEC), "--set", "mtp.enabled=false"], 2, "mtp.enabled=false"),
    (["ls", "--status", "bogus"], 2, "bogus"),
    (["report", "--fidelity"], 2, "--fidelity needs --group"),
], ids=lambda v: "_".join(v)[:60] if isinstance(v, list) else None)
def test_more_mistakes_are_one_line(checkpoint, results_dir, args, code, fragment):
    args = [a.replace("{ckpt}", str(checkpoint)) for a in args]
    assert_one_line_error(invoke(args), code, fragment)


def test_eval_of_a_run_with_a_damaged_summary(checkpoint, results_dir):
    run = fake_run(results_dir, "r", checkpoint)
    (run / "summary.json").write_bytes(b"\xff\xfe{")
    assert_one_line_error(invoke(["eval", "--suite", "tiny", "--run", "r"]), 2, "summary.json: unreadable")


def test_report_out_is_a_file(study_store, tmp_path):
    (tmp_path / "f").write_text("x")
    result = invoke(["report", "--group", "g", "--compare", "occ", "--out", str(tmp_path / "f")])
    assert_one_line_error(result, 2, "is a file, not a directory")
