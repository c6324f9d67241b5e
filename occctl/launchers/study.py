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

from typing import Any

from rich.console import Console

from occctl.launchers import open_pool
from occctl.launchers.view import StudyView
from occctl.errors import OccError
from occctl.rundir import RunDir, move_aside
from occctl.runlock import refuse_if_held
from occctl.publication import open_run, publish_run, publish_unpublished
from occctl.runner import spec_changed
from occctl.spec import LauncherSpec, Spec
from occctl.errors import RunError, SpecError
from occctl.launchers.sequential import run_in_turn

POLL_S = 1.0


def run_study(specs: list[Spec], fresh: bool = False, console: Console | None = None,
              launcher: LauncherSpec | None = None) -> list[dict[str, Any]]:
    """Every cell of a matrix; finished cells are skipped, so an interrupted study resumes, and an unfinished
    cell (its process died) resumes from its last checkpoint; ``fresh`` moves every cell aside.

    A changed spec is refused before any cell starts. ``launcher`` (default: sequential, in this process)
    dispatches the cells to local processes, Ray or SLURM (``occctl.launchers``). A failing cell does not stop
    the others: at the end a RunError names the failed cells.
    """
    console = console or Console(stderr=True)
    launcher = launcher or LauncherSpec()
    if not fresh:
        changed = [f"run {s.name!r} exists with a different spec" for s in specs if spec_changed(s)]
        if changed:
            raise SpecError("\n".join(changed), hint="pass --fresh to move the old runs aside and start over")
    if launcher.name == "sequential":
        failed = run_in_turn(specs, fresh, console)
    else:
        failed = run_parallel(specs, launcher, fresh, console)
    group = specs[0].group or specs[0].name
    console.rule(f"study {group}: {len(specs) - len(failed)}/{len(specs)} cells done"
                 + (f", {len(failed)} failed" if failed else ""))
    if failed:
        for name, reason in failed.items():
            console.print(f"failed: {name}: {reason}", markup=False, highlight=False, soft_wrap=True)
        raise RunError(f"study {group}: {len(failed)} of {len(specs)} cells failed: {', '.join(failed)}",
                       hint="rerun the same command: finished cells are skipped, the others resume")
    return [RunDir.named(s.name).read_summary() for s in specs]


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
