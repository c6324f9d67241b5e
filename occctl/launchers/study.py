"""The parent of a parallel study: it alone touches MLflow, so no store sees two writers.

For each cell still to run it writes the spec into the run folder and opens the MLflow run (``open_run``), keeps
at most ``jobs`` cells in flight on the launcher's pool, and publishes a cell's folder to MLflow when its worker
ends (``publish_run``: whole when finished, up to the last checkpoint otherwise, so a resume logs no step twice).
"""

from __future__ import annotations

import time
from collections import deque

from rich.console import Console

from occctl.launchers import open_pool
from occctl.launchers.view import StudyView
from occctl.rundir import RunDir, move_aside
from occctl.runner import open_run, publish_run
from occctl.spec import LauncherSpec, Spec

POLL_S = 1.0


def run_parallel(specs: list[Spec], launcher: LauncherSpec, fresh: bool, console: Console) -> dict[str, str]:
    """Run the cells not finished yet on ``launcher``'s pool. -> {failed cell: reason}."""
    group = specs[0].group or specs[0].name
    pool = open_pool(launcher, group)  # a missing extra fails here, before anything is touched
    todo: deque[Spec] = deque()
    for spec in specs:
        run = RunDir.named(spec.name)
        if fresh and run.exists():
            console.print(f"moved the old run aside: {move_aside(run.path)}", markup=False, highlight=False)
        if fresh or not run.is_finished():
            todo.append(spec)
    view = StudyView(console, specs, f"study {group} on {launcher.name} x{launcher.jobs}")
    for spec in specs:
        if spec not in todo:
            view.cells[spec.name].state = "finished"
    failed: dict[str, str] = {}
    running: dict[str, tuple[Spec, object]] = {}
    try:
        with view:
            while todo or running:
                ended = [(spec, handle) for spec, handle in running.values() if handle.done()]
                for spec, _ in ended:
                    del running[spec.name]
                while todo and len(running) < launcher.jobs:  # refill first: publishing takes a moment
                    spec = todo.popleft()
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


def failure(handle) -> str | None:
    """None when the cell's worker returned, else the last line of what its engine reported."""
    try:
        handle.result()
    except Exception as e:  # noqa: BLE001 - any engine's report of a failed cell (its error, a dead worker)
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        return lines[-1] if lines else type(e).__name__
    return None
