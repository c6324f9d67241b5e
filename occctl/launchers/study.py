"""The parent of a parallel study: it alone touches MLflow, so no store sees two writers.

For each cell still to run it writes the spec into the run folder and opens the MLflow run (``open_run``), keeps
at most ``jobs`` cells in flight on the launcher's pool, and publishes a cell's folder to MLflow when its worker
ends (``publish_run``: whole when finished, up to the last checkpoint otherwise, so a resume logs no step twice).

A rerun publishes the finished cells whose MLflow run is not FINISHED (a worker that finished after its study was
killed, a parent killed while publishing: ``publish_unpublished``), and dispatches no cell whose folder another live
process holds (``occctl.runlock``): that cell fails with the holder's pid and host, the others run.
"""

from __future__ import annotations

import time
from collections import deque

from rich.console import Console

from occctl.launchers import open_pool
from occctl.launchers.view import StudyView
from occctl.errors import OccError
from occctl.rundir import RunDir, move_aside
from occctl.runlock import refuse_if_held
from occctl.runner import open_run, publish_run
from occctl.spec import LauncherSpec, Spec
from occctl.tracking import Tracker, resolve_store

POLL_S = 1.0


def run_parallel(specs: list[Spec], launcher: LauncherSpec, fresh: bool, console: Console) -> dict[str, str]:
    """Run the cells not finished yet on ``launcher``'s pool. -> {failed cell: reason}."""
    group = specs[0].group or specs[0].name
    pool = open_pool(launcher, group)  # a missing extra fails here, before anything is touched
    todo: deque[Spec] = deque()
    failed: dict[str, str] = {}
    for spec in specs:
        run = RunDir.named(spec.name)
        if (held := _held(spec)) is not None:
            failed[spec.name] = held
            continue
        if fresh and run.exists():
            console.print(f"moved the old run aside: {move_aside(run.path)}", markup=False, highlight=False)
        if fresh or not run.is_finished():
            todo.append(spec)
        elif publish_unpublished(spec):
            console.print(f"published finished cell {spec.name} to MLflow (its study had stopped before)",
                          markup=False, highlight=False)
    view = StudyView(console, specs, f"study {group} on {launcher.name} x{launcher.jobs}")
    for spec in specs:
        if spec.name in failed:
            view.cells[spec.name].state = "failed"
        elif spec not in todo:
            view.cells[spec.name].state = "finished"
    running: dict[str, tuple[Spec, object]] = {}
    try:
        with view:
            while todo or running:
                ended = [(spec, handle) for spec, handle in running.values() if handle.done()]
                for spec, _ in ended:
                    del running[spec.name]
                while todo and len(running) < launcher.jobs:  # refill first: publishing takes a moment
                    spec = todo.popleft()
                    if (held := _held(spec)) is not None:  # taken by another process since the study started
                        failed[spec.name] = held
                        view.set_state(spec.name, "failed", held)
                        continue
                    open_run(spec)
                    running[spec.name] = (spec, pool.submit(spec.name))
                    view.set_state(spec.name, "running")
                for spec, handle in ended:
                    reason = failure(handle)
                    publish_run(spec)
                    if reason:
                        failed[spec.name] = reason
                    view.set_state(spec.name, "failed" if reason else "finished", reason or "")
                view.refresh()
                if running and not ended:
                    time.sleep(POLL_S)
    finally:
        pool.close()
    return failed


def _held(spec: Spec) -> str | None:
    """Why the cell is not dispatched (another live process writes its folder), or None."""
    try:
        refuse_if_held(RunDir.named(spec.name), "not dispatched")
    except OccError as e:
        return e.message
    return None


def failure(handle) -> str | None:
    """None when the cell's worker returned, else the last line of what its engine reported."""
    try:
        handle.result()
    except Exception as e:  # noqa: BLE001 - any engine's report of a failed cell (its error, a dead worker)
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        return lines[-1] if lines else type(e).__name__
    return None


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
