"""`occctl ls`: rows from fake run directories (finished, running, unfinished, broken), filters, JSON, table."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from occctl.cli import app
from occctl import inventory
from occctl.inventory import build_ls_table, filter_rows, list_runs, read_run
from occctl.rundir import METRICS_TAIL_BYTES, RunDir

OLD = time.time() - 3 * 3600  # "last activity" of runs that are not running



def spec_dict(name: str, regime: str = "occ", seed: int = 0, steps: int = 10, group: str | None = None,
              mtp_enabled: bool = True, experiment: str = "fake") -> dict:
    spec = {"name": name, "backend": "trl", "algorithm": {"name": "grpo", "clip_low": 0.2},
            "train": {"steps": steps, "seed": seed, "lr": 1e-4}, "mtp": {"enabled": mtp_enabled, "regime": regime},
            "tracking": {"mlflow": True, "experiment": experiment}}
    if group is not None:
        spec["group"] = group
    return spec


def make_run(root: Path, name: str, *, spec: dict | bytes | None = None, summary: dict | bytes | None = None,
             metric_steps: tuple[int, ...] = (), age: float | None = OLD, **spec_kw) -> Path:
    d = root / "runs" / name
    (d / "checkpoints").mkdir(parents=True)
    spec = spec_dict(name, **spec_kw) if spec is None else spec
    if spec is not False:
        (d / "spec.yaml").write_bytes(spec if isinstance(spec, bytes) else yaml.safe_dump(spec).encode())
    if metric_steps:
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1 * s}) + "\n"
                                                 for s in metric_steps))
    if summary is not None:
        (d / "summary.json").write_bytes(summary if isinstance(summary, bytes) else json.dumps(summary).encode())
    if age is not None:
        for path in [d, *d.rglob("*")]:
            os.utime(path, (age, age))
    return d


def finished_summary(name: str, **kw) -> dict:
    return {"name": name, "regime": "occ", "algorithm": "grpo", "seed": 0, "steps": 10, "wall_s": 125.4,
            "heldout_acc_after": 0.61, "mtp_acceptance_after": 0.8, "lambda_mean": 0.0123, **kw}


@pytest.fixture
def study(results_dir):
    """Six runs: finished (2, one in a group), unfinished, running, corrupt summary, no spec."""
    make_run(results_dir, "a_done", summary=finished_summary("a_done"), metric_steps=(1, 10), seed=0)
    make_run(results_dir, "s.regime-detach.seed-1", regime="detach", seed=1, group="s",
             summary=finished_summary("s.regime-detach.seed-1", regime="detach", seed=1, heldout_acc_after=0.5))
    make_run(results_dir, "b_unfinished", metric_steps=(1, 2, 3, 4), seed=2, group="s")
    make_run(results_dir, "c_running", metric_steps=(1, 2), age=None, seed=3)
    make_run(results_dir, "d_corrupt", summary=b'{"name": "d_corrupt", "steps": 1', metric_steps=(1,))
    make_run(results_dir, "e_nospec", spec=False, metric_steps=(1, 2, 3))
    return results_dir


def by_name(rows):
    return {r.name: r for r in rows}


def test_rows_and_statuses_from_files(study):
    rows = by_name(list_runs(mlflow=False))
    assert set(rows) == {"a_done", "s.regime-detach.seed-1", "b_unfinished", "c_running", "d_corrupt", "e_nospec"}
    done = rows["a_done"]
    assert (done.status, done.regime, done.algorithm, done.seed) == ("finished", "occ", "grpo", 0)
    assert (done.steps_done, done.steps_planned, done.wall_s) == (10, 10, 125.4)
    assert (done.heldout_acc_after, done.mtp_acceptance_after, done.lambda_mean) == (0.61, 0.8, 0.0123)
    assert done.group is None and done.problem is None
    assert rows["s.regime-detach.seed-1"].group == "s" and rows["s.regime-detach.seed-1"].regime == "detach"
    unfinished = rows["b_unfinished"]
    assert (unfinished.status, unfinished.steps_done, unfinished.steps_planned) == ("unfinished", 4, 10)
    assert unfinished.heldout_acc_after is None and unfinished.group == "s" and unfinished.seed == 2
    assert rows["c_running"].status == "running" and rows["c_running"].steps_done == 2
    assert rows["d_corrupt"].status == "broken" and "summary.json" in rows["d_corrupt"].problem
    assert rows["e_nospec"].status == "broken" and "spec.yaml" in rows["e_nospec"].problem
    assert rows["e_nospec"].steps_done == 3 and rows["e_nospec"].steps_planned is None
    # sorted by group, then name: ungrouped runs first
    assert [r.name for r in list_runs(mlflow=False)][-2:] == ["b_unfinished", "s.regime-detach.seed-1"]


def test_running_turns_unfinished_when_files_go_stale(results_dir):
    d = make_run(results_dir, "r", metric_steps=(1,), age=None)
    now = time.time()
    assert read_run(d, now=now).status == "running"
    assert read_run(d, now=now + inventory.RUNNING_WINDOW_S + 60).status == "unfinished"


def test_finished_run_with_a_broken_spec_is_listed_broken_from_its_summary(results_dir):
    make_run(results_dir, "x", spec=b"\xff\xfe garbage: [", summary=finished_summary("x", regime="ce", seed=7))
    (row,) = list_runs(mlflow=False)
    assert (row.status, row.regime, row.seed, row.steps_planned) == ("broken", "ce", 7, None)
    assert row.problem.startswith("spec.yaml: ")


def test_mtp_disabled_is_regime_none(results_dir):
    make_run(results_dir, "plain", mtp_enabled=False)
    assert list_runs(mlflow=False)[0].regime == "none"


@pytest.mark.parametrize("spec, summary, metrics", [
    (b"", None, b""),
    (b"- a list\n", b"[1, 2]", b"not json\n"),
    (b"train: 5\nmtp: [occ]\ngroup: {a: 1}\nalgorithm: {name: 3}\n", None, b'{"step": "x"}\n[1]\n'),
    (yaml.safe_dump({"train": {"steps": True, "seed": 1.5}}).encode(), b"null", b'{"step": 3}\n{"step": 9, "lo'),
    (bytes(range(256)), bytes(range(256)), bytes(range(256)) * 100),
    (b"[" * 3000, b"{" * 3000, b"\n" * 10),
    (b"a: &a [*a]\ntrain: *a\nmtp: *a\n", None, b"{}\n"),
], ids=["empty", "wrong-shapes", "wrong-types", "torn-tail", "binary", "deep", "recursive-alias"])
def test_damaged_runs_never_crash_the_listing(results_dir, spec, summary, metrics):
    d = make_run(results_dir, "damaged", spec=spec, summary=summary)
    (d / "metrics.jsonl").write_bytes(metrics)
    for path in (d, d / "metrics.jsonl"):
        os.utime(path, (OLD, OLD))
    (row,) = list_runs(mlflow=False)
    assert row.name == "damaged"
    assert row.status in ("broken", "unfinished")
    assert isinstance(row.steps_done, int)
    if summary is not None:
        assert row.status == "broken" and row.problem.startswith("summary.json")
    json.dumps(inventory.public_rows([row]), allow_nan=False)  # JSON-safe whatever the files hold
    build_ls_table([row])


def test_last_step_reads_the_tail_and_skips_a_torn_line(tmp_path):
    run = RunDir(tmp_path)
    path = run.metrics_file
    rows = [json.dumps({"step": s, "pad": "x" * 300}) for s in range(1, 1001)]  # ~330 kB, more than one tail
    path.write_text("\n".join(rows) + '\n{"step": 1001, "lo')
    assert run.last_step() == 1000
    path.write_text(json.dumps({"step": 5, "pad": "y" * (METRICS_TAIL_BYTES * 2)}) + "\n")
    assert run.last_step() == 5  # one line longer than the first tail read
    assert RunDir(tmp_path / "missing").last_step() is None


def test_archived_hidden_and_stray_entries_are_skipped(results_dir):
    make_run(results_dir, "keep", summary=finished_summary("keep"))
    make_run(results_dir, "keep.old-20250101-120000", summary=finished_summary("keep"))
    make_run(results_dir, "keep.old-20250101-120000-2")
    (results_dir / "runs" / ".tmp-partial").mkdir()
    (results_dir / "runs" / "notes.txt").write_text("not a run")
    assert [r.name for r in list_runs(mlflow=False)] == ["keep"]
    assert [r.name for r in list_runs(include_archived=True, mlflow=False)] == [
        "keep", "keep.old-20250101-120000", "keep.old-20250101-120000-2"]


def test_filters(study):
    rows = list_runs(mlflow=False)
    assert {r.name for r in filter_rows(rows, groups=["s"])} == {"b_unfinished", "s.regime-detach.seed-1"}
    assert {r.name for r in filter_rows(rows, statuses=["broken"])} == {"d_corrupt", "e_nospec"}
    assert {r.name for r in filter_rows(rows, ["s"], ["finished", "running"])} == {"s.regime-detach.seed-1"}
    assert filter_rows(rows, groups=["nope"]) == []
    with pytest.raises(Exception, match="did you mean 'finished'"):
        filter_rows(rows, statuses=["finshed"])


def test_ls_json_via_the_cli(study):
    result = CliRunner().invoke(app, ["ls", "--json", "--no-mlflow"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["name"] for r in rows] == [r.name for r in list_runs(mlflow=False)]
    assert set(rows[0]) == set(inventory.COLUMNS)
    assert {r["name"]: r for r in rows}["b_unfinished"]["status"] == "unfinished"
    result = CliRunner().invoke(app, ["ls", "--json", "--no-mlflow", "--group", "s", "--status", "finished"])
    assert [r["name"] for r in json.loads(result.stdout)] == ["s.regime-detach.seed-1"]


def test_ls_nan_metrics_become_null(results_dir):
    make_run(results_dir, "nan", summary=b'{"steps": 10, "heldout_acc_after": NaN, "lambda_mean": Infinity}')
    result = CliRunner().invoke(app, ["ls", "--json", "--no-mlflow"])
    (row,) = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert row["status"] == "finished" and row["heldout_acc_after"] is None and row["lambda_mean"] is None


def test_ls_table_via_the_cli(study):
    result = CliRunner().invoke(app, ["ls", "--no-mlflow"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("a_done", "b_unfinished", "unfinished", "running", "broken", "4/10", "0.610", "0.800",
                 "0.0123", "2m05s", "group"):
        assert text in result.stdout, text


def test_ls_bad_status_is_exit_2(study):
    result = CliRunner().invoke(app, ["ls", "--status", "done"])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "finished, running" in result.stderr


@pytest.mark.parametrize("setup", ["missing", "empty-runs"])
def test_ls_without_runs_is_friendly(results_dir, setup):
    if setup == "empty-runs":
        (results_dir / "runs").mkdir(parents=True)
    result = CliRunner().invoke(app, ["ls"])
    assert result.exit_code == 0 and "no runs yet" in result.stderr and "occctl run" in result.stderr
    assert result.exception is None
    result = CliRunner().invoke(app, ["ls", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert setup == "empty-runs" or not results_dir.exists(), "ls must create nothing"


def test_ls_filters_matching_nothing_say_so(study):
    result = CliRunner().invoke(app, ["ls", "--group", "nope", "--no-mlflow"])
    assert result.exit_code == 0 and "no runs match" in result.stderr


def test_table_shows_group_only_when_present_and_fits_narrow_terminals(study):
    rows = list_runs(mlflow=False)
    titles = [c.header for c in build_ls_table(rows).columns]
    assert titles[:3] == ["name", "group", "status"] and "mean λ" in titles and "algo" in titles
    ungrouped = [r for r in rows if not r.group]
    assert "group" not in [c.header for c in build_ls_table(ungrouped).columns]
    narrow = build_ls_table(rows, max_width=60)
    headers = [c.header for c in narrow.columns]
    assert {"name", "status", "steps", "acc"} <= set(headers) and "algo" not in headers
    buf = io.StringIO()
    Console(file=buf, width=60).print(narrow)
    text = buf.getvalue()
    assert "…" not in text and "..." not in text, "a long name folds onto more lines; it is never cut"
    assert "s.regime-" in text and "e_nospec" in text
    assert max(map(len, buf.getvalue().splitlines())) <= 60


def test_mlflow_is_asked_only_about_runs_without_a_summary(results_dir, monkeypatch):
    import occctl.tracking as tracking

    calls = []
    monkeypatch.setattr(tracking.Store, "latest_statuses",
                        lambda store, exp, names: calls.append((store.uri, exp, names)) or {})
    make_run(results_dir, "done", summary=finished_summary("done"))
    list_runs()
    assert calls == [], "all runs finished: no MLflow lookup (and no mlflow import)"
    make_run(results_dir, "open", experiment="exp1")
    list_runs(mlflow=False)
    assert calls == []
    list_runs()
    assert calls == [(f"sqlite:///{results_dir / 'mlflow.db'}", "exp1", ["open"])]


def test_mlflow_status_tells_failed_from_unfinished(results_dir):
    """A real sqlite store: FAILED -> failed; KILLED -> unfinished; RUNNING (a SIGKILL leaves it) -> by the files."""
    from occctl.tracking import Store, Tracker, resolve_store

    def start(name, status=None):
        tracker = Tracker.start(resolve_store(), "fake", name, {}, {})
        assert tracker.run_id is not None
        if status:
            tracker.finish(status)

    start("again", "FAILED")
    time.sleep(0.05)
    start("again")  # rerun after a failure: the newest MLflow run counts
    start("failed", "FAILED")
    start("killed", "KILLED")
    start("sigkilled")
    for name in ("again", "failed", "killed", "sigkilled", "untracked"):
        make_run(results_dir, name, metric_steps=(1,))
    rows = by_name(list_runs())
    assert (rows["again"].mlflow_status, rows["again"].status) == ("RUNNING", "unfinished")
    assert (rows["failed"].mlflow_status, rows["failed"].status) == ("FAILED", "failed")
    assert (rows["killed"].mlflow_status, rows["killed"].status) == ("KILLED", "unfinished")
    assert (rows["sigkilled"].mlflow_status, rows["sigkilled"].status) == ("RUNNING", "unfinished")
    assert (rows["untracked"].mlflow_status, rows["untracked"].status) == (None, "unfinished")
    uri = f"sqlite:///{results_dir / 'mlflow.db'}"
    assert Store(uri).latest_statuses("fake", ["failed", "nobody"]) == {"failed": "FAILED"}
    assert Store(uri).latest_statuses("no-such-experiment", ["failed"]) == {}
    assert Store(f"sqlite:///{results_dir / 'absent.db'}").latest_statuses("fake", ["failed"]) == {}
    assert not (results_dir / "absent.db").exists(), "a lookup must not create a store"
    assert Store("http://127.0.0.1:9/").latest_statuses("fake", ["failed"]) == {}, "remote stores are never queried"
