"""`occctl ls`: one row per run directory under results/runs, read from its files (a broken run is listed too).

Status, from the files first (results/ is the truth), MLflow only to tell a crash from a live run:

- ``finished``: ``summary.json`` is there and readable;
- ``broken``: ``summary.json`` is unreadable, or ``spec.yaml`` (written first by `occctl run`) is missing or
  unreadable, so the directory is not a run occctl can resume or report;
- ``failed``: no summary and the run's MLflow run says FAILED;
- ``running``: no summary and a live process holds the folder's lock (``occctl.runlock``; folders of an occctl
  without locks: MLflow does not say otherwise and a file changed in the last ``RUNNING_WINDOW_S``);
- ``unfinished``: anything else without a summary (killed, interrupted, crashed): rerun the spec to resume.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from occctl.console import err, exits_on_error, out
from occctl.errors import OccError, SpecError, did_you_mean
from occctl.jsonio import dumps
from occctl.progress import format_duration
from occctl.rundir import RunDir, RunFileError, results_root
from occctl.runlock import holder, lock_path

STATUSES = ("finished", "running", "unfinished", "failed", "broken")
RUNNING_WINDOW_S = 300.0
ARCHIVED = re.compile(r".+\.old-\d{8}-\d{6}(-\d+)?$")  # rundir.move_aside's names
STATUS_STYLES = {"finished": "green", "running": "cyan", "unfinished": "yellow", "failed": "red",
                 "broken": "bold red"}


@dataclass(frozen=True)
class Mirror:
    """Where `occctl run` mirrored a run to MLflow: store URI (None: the default store) and experiment."""

    uri: str | None
    experiment: str


@dataclass
class RunRow:
    """One line of `occctl ls` (``--json`` prints these fields; numbers are finite or None)."""

    name: str
    path: str
    group: str | None = None
    status: str | None = None
    regime: str | None = None
    algorithm: str | None = None
    seed: int | None = None
    steps_done: int = 0
    steps_planned: int | None = None
    heldout_acc_after: float | None = None
    mtp_acceptance_after: float | None = None
    lambda_mean: float | None = None
    wall_s: float | None = None
    mlflow_status: str | None = None
    problem: str | None = None
    mirror: Mirror | None = dataclasses.field(default=None, repr=False)  # None: not mirrored to MLflow

    def public(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in COLUMNS}


COLUMNS = ("name", "group", "status", "regime", "algorithm", "seed", "steps_done", "steps_planned",
           "heldout_acc_after", "mtp_acceptance_after", "lambda_mean", "wall_s", "mlflow_status", "problem", "path")


# ---- reading one run --------------------------------------------------------------------------------------


def list_runs(root: Path | None = None, include_archived: bool = False, mlflow: bool = True,
              now: float | None = None) -> list[RunRow]:
    """A row for every run folder under ``<root>/runs``, sorted by group and name; ``[]`` when there is none.
    ``mlflow``: ask a local MLflow store about runs without a summary."""
    runs = (root or results_root()) / "runs"
    if not runs.is_dir():
        return []
    now = time.time() if now is None else now
    rows = [read_run(directory, now) for directory in sorted(runs.iterdir())
            if not directory.name.startswith(".") and directory.is_dir()
            and (include_archived or not ARCHIVED.fullmatch(directory.name))]
    if mlflow:
        apply_mlflow_statuses(rows)
    return sorted(rows, key=lambda r: (r.group or "", r.name))


def read_run(directory: Path, now: float | None = None) -> RunRow:
    """One row from a run folder's files; never raises for a damaged run (status ``broken``)."""
    now = time.time() if now is None else now
    run = RunDir(directory)
    row = RunRow(name=run.name, path=str(directory))
    try:
        spec = run.read_spec()
        spec_problem = None
    except RunFileError as e:
        spec, spec_problem = None, e.message
    if spec is not None:
        row.group, row.algorithm, row.seed = spec.group, spec.algorithm.name, spec.train.seed
        row.regime = spec.mtp.regime if spec.mtp.enabled else "none"
        row.steps_planned = spec.train.steps
        row.mirror = Mirror(spec.tracking.uri, spec.tracking.experiment) if spec.tracking.mlflow else None
    try:
        summary, summary_problem = run.read_summary(), None
    except RunFileError as e:
        summary, summary_problem = None, e.message

    if summary is not None:
        row.status, row.steps_done = "finished", _count(summary.get("steps")) or 0
        row.wall_s, row.lambda_mean = _number(summary.get("wall_s")), _number(summary.get("lambda_mean"))
        row.heldout_acc_after = _number(summary.get("heldout_acc_after"))
        row.mtp_acceptance_after = _number(summary.get("mtp_acceptance_after"))
        row.regime = row.regime or _text(summary.get("regime"))
        row.algorithm = row.algorithm or _text(summary.get("algorithm"))
        row.group = row.group or _text(summary.get("group"))
        row.seed = row.seed if row.seed is not None else _count(summary.get("seed"))
        if spec is None:  # a summary beside a broken spec.yaml: not a run occctl can report, resume or evaluate
            row.status, row.problem = "broken", spec_problem
        return row
    activity = _last_activity(run)
    started = _mtime(run.spec_file) or _mtime(directory)
    row.steps_done = run.last_step() or 0
    row.wall_s = round(activity - started, 2) if activity and started and activity >= started else None
    if run.summary_file.exists():
        row.status, row.problem = "broken", summary_problem
    elif spec is None:
        row.status, row.problem = "broken", spec_problem
    elif (writer := holder(run)) is not None:
        row.status, row.problem = "running", f"written by {writer}"
    elif lock_path(run).is_file():  # written by an occctl that locks: nobody holds it, so nobody runs it
        row.status = "unfinished"
    elif activity is not None and now - activity < RUNNING_WINDOW_S:
        row.status = "running"
    else:
        row.status = "unfinished"
    return row


def _last_activity(run: RunDir) -> float | None:
    """The newest mtime among the run folder, its files and its checkpoints."""
    times = [_mtime(run.path)]
    try:
        for child in run.path.iterdir():
            times.append(_mtime(child))
        if run.checkpoints.is_dir():
            times.extend(_mtime(c) for c in run.checkpoints.iterdir())
    except OSError:
        pass
    return max((t for t in times if t is not None), default=None)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# ---- MLflow: only to tell a crashed run from a live one -------------------------------------------------------


def apply_mlflow_statuses(rows: list[RunRow]) -> None:
    """For rows without a summary (running / unfinished), record the newest MLflow run's status and let it
    decide: FAILED -> failed; KILLED -> unfinished; RUNNING keeps the file-based guess (a SIGKILL leaves it)."""
    from occctl.tracking import resolve_store

    wanted: dict[tuple[Any, str], list[RunRow]] = {}
    for row in rows:
        if row.mirror is not None and row.status in ("running", "unfinished"):
            try:
                store = resolve_store(row.mirror.uri)
            except OccError:  # its tracking.uri names no directory: nothing to ask
                continue
            wanted.setdefault((store, row.mirror.experiment), []).append(row)
    for (store, experiment), group in wanted.items():
        statuses = store.latest_statuses(experiment, [r.name for r in group])
        for row in group:
            status = statuses.get(row.name)
            row.mlflow_status = status
            if status == "FAILED":
                row.status = "failed"
            elif status == "KILLED":
                row.status = "unfinished"


# ---- filtering and showing --------------------------------------------------------------------------------------


def filter_rows(rows: list[RunRow], groups: list[str] | None = None,
                statuses: list[str] | None = None) -> list[RunRow]:
    """Rows in any of ``groups`` (a run without a group matches none) and with any of ``statuses``."""
    for status in statuses or []:
        if status not in STATUSES:
            raise SpecError(f"--status {status}: unknown status{did_you_mean(status, STATUSES)}",
                            hint=f"one of: {', '.join(STATUSES)}")
    return [r for r in rows if (not groups or _in_groups(r, groups)) and (not statuses or r.status in statuses)]


def _in_groups(row: RunRow, groups: list[str]) -> bool:
    """A row of one of ``groups``; a broken row whose spec.yaml cannot say is matched by its cell name
    (``<group>.<cell>``), so a damaged cell stays in its study's listing."""
    if row.group is not None:
        return row.group in groups
    return row.status == "broken" and any(row.name.startswith(f"{g}.") for g in groups)


def public_rows(rows: list[RunRow]) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts with the keys of ``COLUMNS`` (numbers are finite or None)."""
    return [row.public() for row in rows]


# (title, cell text, right-aligned?); columns a narrow terminal drops first come last in DROP_ORDER
LS_COLUMNS = (
    ("name", lambda r: r.name, False),
    ("group", lambda r: r.group or "", False),
    ("status", lambda r: r.status or "?", False),
    ("regime", lambda r: r.regime or "–", False),
    ("algo", lambda r: r.algorithm or "–", False),
    ("seed", lambda r: _fmt_int(r.seed), True),
    ("steps", lambda r: f"{r.steps_done or 0}/{_fmt_int(r.steps_planned)}", True),
    ("acc", lambda r: _fmt_float(r.heldout_acc_after, 3), True),
    ("MTP acc", lambda r: _fmt_float(r.mtp_acceptance_after, 3), True),
    ("mean λ", lambda r: _fmt_float(r.lambda_mean, 4), True),
    ("wall", lambda r: format_duration(r.wall_s), True),
)
DROP_ORDER = ("algo", "group", "wall", "mean λ", "MTP acc")


def build_ls_table(rows: list[RunRow], max_width: int | None = None) -> Table:
    """A rich table of runs: name, group (when any run has one), status, regime, algorithm, seed, steps done /
    planned, held-out accuracy after RL ("acc"), MTP acceptance after RL, mean λ, wall time ("–": not known).
    ``max_width``: drop the least useful columns (``DROP_ORDER``) until the table fits."""
    titles = [c[0] for c in LS_COLUMNS if c[0] != "group" or any(r.group for r in rows)]
    table = _table(rows, titles)
    for title in DROP_ORDER if max_width is not None else ():
        if _natural_width(table) <= max_width:
            break
        if title in titles:
            titles.remove(title)
            table = _table(rows, titles)
    return table


def _table(rows: list[RunRow], titles: list[str]) -> Table:
    table = Table(title=f"{len(rows)} run{'s' * (len(rows) != 1)}", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for title, _, right in LS_COLUMNS:
        if title in titles:
            table.add_column(title, justify="right" if right else "left", no_wrap=title != "name",
                             overflow="fold" if title == "name" else "ellipsis")
    getters = {title: get for title, get, _ in LS_COLUMNS}
    for row in rows:
        status = row.status or "?"
        table.add_row(*(Text(getters[t](row), style=STATUS_STYLES.get(status, "") if t == "status" else "")
                        for t in titles))
    return table


def _natural_width(table: Table) -> int:
    console = Console(width=10_000, file=io.StringIO())
    return Measurement.get(console, console.options, table).maximum


def _fmt_int(value: Any) -> str:
    return "?" if value is None else str(value)


def _fmt_float(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# ---- the command --------------------------------------------------------------------------------------------


def show_runs(
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON instead of a table"),
    group: Optional[list[str]] = typer.Option(None, "--group", help="only runs of this matrix group (repeatable)"),
    status: Optional[list[str]] = typer.Option(None, "--status",
                                               help=f"only runs with this status (repeatable): {', '.join(STATUSES)}"),
    include_archived: bool = typer.Option(False, "--all", help="also list run directories moved aside by --fresh"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow",
                                help="ask the local MLflow store about runs without a summary (failed vs unfinished)"),
) -> None:
    """List the runs under results/runs: status, regime, seed, steps, held-out accuracy, MTP acceptance, mean λ."""
    root = results_root()
    with exits_on_error():
        rows = filter_rows(list_runs(root, include_archived=include_archived, mlflow=mlflow), group, status)
    if as_json:
        out.print(dumps(public_rows(rows), indent=2), markup=False, highlight=False, emoji=False, soft_wrap=True)
        return
    if not rows:
        where = root / "runs"
        has_runs = where.is_dir() and any(p.is_dir() for p in where.iterdir())
        message = (f"no runs match the filters in {where}" if has_runs and (group or status)
                   else f"no runs yet in {where}; start one with: occctl run specs/tiny_occ.yaml")
        err.print(message, markup=False, highlight=False, soft_wrap=True)
        return
    out.print(build_ls_table(rows, max_width=out.width))


def register(app: typer.Typer) -> None:
    """Add ``ls`` to a Typer app (occctl's root app, or a test's)."""
    app.command("ls")(show_runs)

