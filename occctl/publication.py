"""The MLflow mirror of run folders: a run's MLflow run opened, its metric rows and summary published, and a
finished run whose MLflow run was never finished published again (``results/`` is the truth, MLflow mirrors it)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from occctl.backend import get_backend, plan_run
from occctl.environment import environment
from occctl.rundir import RunDir, TrackingState
from occctl.spec import Spec, flatten, spec_to_dict
from occctl.tracking import Tracker, resolve_store


def publish_rows(run: RunDir, tracker: Tracker, rows: list[dict[str, float]]) -> None:
    """Log metric rows to MLflow and record the last step published in the run folder."""
    if not (rows and tracker.active):
        return
    tracker.log_rows(rows)
    state = run.tracking_state()
    run.write_tracking_state(dataclasses.replace(state, published_step=max(r["step"] for r in rows)))

def publish_summary(spec: Spec, run: RunDir, tracker: Tracker, summary: dict[str, Any]) -> None:
    tracker.log_metrics(spec.train.steps, {f"summary/{k}": v for k, v in summary.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and math.isfinite(v)})
    tracker.log_artifacts([run.summary_file, run.spec_file])
    tracker.finish("FINISHED")

def open_run(spec: Spec) -> None:
    """The parent of a parallel study, before dispatching a cell: its folder holds the spec (what the worker
    runs) and its MLflow run is open (new, or the one of an interrupted start, marked running again)."""
    run = RunDir.named(spec.name)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_spec(spec)
    open_tracker(spec, environment(), run)

def publish_run(spec: Spec) -> None:
    """The parent of a parallel study, once a cell's worker has ended: mirror its run folder to MLflow. A
    finished cell is published whole; an unfinished one up to its last checkpoint (the steps a resume keeps, the
    rest are cut from metrics.jsonl), so no step reaches MLflow twice. Only the parent writes to MLflow."""
    run = RunDir.named(spec.name)
    if not spec.tracking.mlflow or not run.tracking_state().mlflow_run_id:
        return
    tracker = Tracker.attach(resolve_store(spec.tracking.uri), run.tracking_state().mlflow_run_id)
    finished = run.is_finished()
    until = None if finished else get_backend(spec.backend).resume_step(plan_run(spec))
    published = run.tracking_state().published_step
    publish_rows(run, tracker, [r for r in run.read_metrics(until) if r["step"] > published])
    if finished:
        publish_summary(spec, run, tracker, run.read_summary())
    else:
        tracker.finish("FAILED")

def open_tracker(spec: Spec, env: dict[str, Any], run: RunDir) -> Tracker:
    """The run's MLflow run: the one recorded in the run folder when resuming, else a new one."""
    store = resolve_store(spec.tracking.uri)
    if not spec.tracking.mlflow:
        return Tracker.disabled(store)
    state = run.tracking_state()
    if state.mlflow_run_id:
        tracker = Tracker.attach(store, state.mlflow_run_id)
        if tracker.active:
            tracker.reopen()
            return tracker
    tags = {"occctl.regime": spec.mtp.regime if spec.mtp.enabled else "none", "occctl.seed": str(spec.train.seed),
            "occctl.backend": spec.backend, "occctl.algorithm": spec.algorithm.name,
            "occctl.git_sha": env["git_sha"] or "unknown"}
    if spec.group:
        tags["occctl.group"] = spec.group
        tags.update({f"occctl.cell.{key}": str(value) for key, value in spec.cell.items()})
    tracker = Tracker.start(store, spec.tracking.experiment, spec.name, flatten(spec_to_dict(spec)), tags)
    run.write_tracking_state(TrackingState(mlflow_run_id=tracker.run_id))
    return tracker


def publish_unpublished(spec: Spec) -> bool:
    """Publish a finished run whose MLflow run is not FINISHED: the steps MLflow lacks (after the run folder's
    ``published_step``), then the summary, so nothing reaches MLflow twice. -> whether it published."""
    run = RunDir.named(spec.name)
    run_id = run.tracking_state().mlflow_run_id
    if not (spec.tracking.mlflow and run_id and run.is_finished()):
        return False
    if Tracker.attach(resolve_store(spec.tracking.uri), run_id).status() in (None, "FINISHED"):
        return False  # published, or the store is unreachable (one warning; the next rerun tries again)
    publish_run(spec)
    return True
