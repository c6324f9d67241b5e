"""Progress while something runs: a live bar on a terminal, plain lines in a log.

When the console is not a terminal (CI, ``nohup``, a cluster job's log, ``> log 2>&1``) a live bar prints
nothing until the end; ``LineProgress`` prints one line per task instead, every "round" number of steps (about
ten lines per task) and at least once a minute while it advances::

    step 10/40  RL occ  reward 0.412  λ +0.0031  elapsed 25s  ETA 1m15s
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

LINES_PER_TASK = 10
MAX_SILENCE_S = 60.0


def progress_bar(console: Console) -> Progress:
    """A rich Progress for ``console``: a live bar on a terminal, else ``LineProgress``. Tasks may carry a
    ``unit`` field (``add_task("RL", total=40, unit="step")``) that names what is counted."""
    if not console.is_terminal:
        return LineProgress(console)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def round_interval(total: float, lines: int = LINES_PER_TASK) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that gives at most ``lines`` lines over ``total`` steps."""
    target = max(total / lines, 1.0)
    scale = 10 ** math.floor(math.log10(target))
    return int(next(m * scale for m in (1, 2, 5, 10) if m * scale >= target))


class LineProgress(Progress):
    """A Progress without a live display that prints plain lines (see the module docstring)."""

    def __init__(self, console: Console, max_silence_s: float = MAX_SILENCE_S) -> None:
        super().__init__(console=console, disable=True)
        self.max_silence_s = max_silence_s
        self._last: dict[TaskID, tuple[float, float]] = {}  # task -> (completed, time) of its last line

    def update(self, task_id: TaskID, **kwargs) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def _report(self, task_id: TaskID) -> None:
        task = self._task(task_id)
        done, now = task.completed, time.monotonic()
        last_done, last_time = self._last.get(task_id, (0.0, now))
        if done <= last_done:
            return
        every = round_interval(task.total) if task.total else None
        on_grid = every is not None and done // every > last_done // every
        finished = task.total is not None and done >= task.total
        if on_grid or finished or now - last_time >= self.max_silence_s:
            self._last[task_id] = (done, now)
            self.console.print(self.line(task_id), markup=False, highlight=False, soft_wrap=True)
        elif task_id not in self._last:
            self._last[task_id] = (0.0, now)

    def _task(self, task_id: TaskID):
        return next(task for task in self.tasks if task.id == task_id)

    def line(self, task_id: TaskID) -> str:
        task = self._task(task_id)
        unit = task.fields.get("unit")
        count = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
        parts = [f"{unit} {count}" if unit else count, task.description, f"elapsed {format_duration(task.elapsed)}"]
        if task.total is not None and task.completed < task.total and task.time_remaining is not None:
            parts.append(f"ETA {format_duration(task.time_remaining)}")
        return "  ".join(p for p in parts if p)


def format_duration(seconds: float | None) -> str:
    """``42s``, ``2m05s``, ``1h02m``; ``–`` when unknown."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
