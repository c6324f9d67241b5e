"""One live view of a study in the parent: a table of its cells (state, step/steps, reward, λ, ETA) on a terminal,
plain lines in a log (a line when a cell starts or ends, and each running cell's progress at least once a minute).
Progress is read from the cells' run folders (``metrics.jsonl``), which the workers write; ``occctl ls --group G``
stays the after-the-fact view."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from occctl.jsonio import number
from occctl.progress import MAX_SILENCE_S, format_duration
from occctl.rundir import RunDir
from occctl.spec import Spec

TAIL_BYTES = 1 << 16


@dataclass
class Cell:
    name: str
    steps: int
    state: str = "pending"  # pending, running, finished, failed
    step: int = 0
    reward: float = math.nan
    lam: float = math.nan
    reason: str = ""
    seen: list[tuple[float, int]] = field(default_factory=list)  # (time, step) of the first and latest reading

    def eta_s(self) -> float | None:
        if self.state != "running" or len(self.seen) < 2 or self.seen[-1][1] <= self.seen[0][1]:
            return None
        (t0, s0), (t1, s1) = self.seen[0], self.seen[-1]
        return (t1 - t0) / (s1 - s0) * (self.steps - s1)

    def line(self) -> str:
        parts = [f"cell {self.name}", self.state, f"step {self.step}/{self.steps}"]
        if math.isfinite(self.reward):
            parts.append(f"reward {self.reward:.3f}")
        if math.isfinite(self.lam):
            parts.append(f"λ {self.lam:+.4f}")
        if self.eta_s() is not None:
            parts.append(f"ETA {format_duration(self.eta_s())}")
        return "  ".join(parts + ([self.reason] if self.reason else []))


def read_progress(run: RunDir) -> tuple[int, float, float]:
    """(last step, last reward, last λ) from the tail of a run's metrics.jsonl; a line being written is skipped."""
    step, reward, lam = 0, math.nan, math.nan
    try:
        with run.metrics_file.open("rb") as f:
            f.seek(max(0, run.metrics_file.stat().st_size - TAIL_BYTES))
            lines = f.read().splitlines()
    except OSError:
        return step, reward, lam
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # the cut first line of the tail, or a line being written
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            step = int(row["step"])
            reward = number(row.get("reward"), reward)  # null: a non-finite value (occctl.jsonio)
            lam = number(row.get("occ/lambda"), lam)
    return step, reward, lam


class StudyView:
    def __init__(self, console: Console, specs: list[Spec], title: str) -> None:
        self.console, self.title, self.start = console, title, time.monotonic()
        self.cells = {s.name: Cell(s.name, s.train.steps) for s in specs}
        self._live = Live(self.table(), console=console, refresh_per_second=2) if console.is_terminal else None
        self._last_lines = time.monotonic()

    def __enter__(self) -> "StudyView":
        if self._live:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live:
            self._live.update(self.table())
            self._live.stop()

    def set_state(self, name: str, state: str, reason: str = "") -> None:
        cell = self.cells[name]
        cell.state, cell.reason = state, reason
        self._read(cell)
        if self._live is None:
            self.console.print(cell.line(), markup=False, highlight=False, soft_wrap=True)
        self.refresh()

    def refresh(self) -> None:
        running = [c for c in self.cells.values() if c.state == "running"]
        for cell in running:
            self._read(cell)
        if self._live is not None:
            self._live.update(self.table())
        elif time.monotonic() - self._last_lines >= MAX_SILENCE_S:
            self._last_lines = time.monotonic()
            for cell in running:
                self.console.print(cell.line(), markup=False, highlight=False, soft_wrap=True)

    def _read(self, cell: Cell) -> None:
        cell.step, cell.reward, cell.lam = read_progress(RunDir.named(cell.name))
        if cell.state == "running":
            now = (time.monotonic(), cell.step)
            cell.seen = [cell.seen[0], now] if cell.seen else [now]

    def table(self) -> Table:
        counts = {s: sum(c.state == s for c in self.cells.values()) for s in ("finished", "running", "failed")}
        elapsed = format_duration(time.monotonic() - self.start)
        table = Table(title=f"{self.title}: {counts['finished']} finished, {counts['running']} running, "
                      f"{counts['failed']} failed of {len(self.cells)}  ({elapsed})", title_justify="left")
        for column in ("cell", "state", "step", "reward", "λ", "ETA"):
            table.add_column(column, justify="left" if column in ("cell", "state") else "right")
        for c in self.cells.values():
            eta = c.eta_s()
            table.add_row(c.name, c.state + (f": {c.reason}" if c.reason else ""), f"{c.step}/{c.steps}",
                          f"{c.reward:.3f}" if math.isfinite(c.reward) else "–",
                          f"{c.lam:+.4f}" if math.isfinite(c.lam) else "–", format_duration(eta) if eta else "–")
        return table
