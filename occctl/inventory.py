"""`occctl ls`: one row per run directory under results/runs, read from its files (a broken run is listed too).

Status, from the files first (results/ is the truth), MLflow only to tell a crash from a live run:

- ``finished``: ``summary.json`` is there and readable;
- ``broken``: ``summary.json`` is unreadable, or ``spec.yaml`` (written first by `occctl run`) is missing or
  unreadable, so the directory is not a run occctl can resume or report;
- ``failed``: no summary and the run's MLflow run says FAILED;
- ``running``: no summary, MLflow does not say otherwise and a file changed in the last ``RUNNING_WINDOW_S``;
- ``unfinished``: anything else without a summary (killed, interrupted, crashed): rerun the spec to resume.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from occctl.console import err, fail, out
from occctl.errors import SpecError
from occctl.rundir import results_root

STATUSES = ("finished", "running", "unfinished", "failed", "broken")
RUNNING_WINDOW_S = 300.0
ARCHIVED = re.compile(r".+\.old-\d{8}-\d{6}(-\d+)?$")  # rundir.move_aside's names
METRICS_TAIL_BYTES = 1 << 16
METRICS_MAX_BYTES = 1 << 25
COLUMNS = ("name", "group", "status", "regime", "algorithm", "seed", "steps_done", "steps_planned",
           "heldout_acc_after", "mtp_acceptance_after", "lambda_mean", "wall_s", "mlflow_status", "problem", "path")
STATUS_STYLES = {"finished": "green", "running": "cyan", "unfinished": "yellow", "failed": "red",
                 "broken": "bold red"}


# ---- reading one run --------------------------------------------------------------------------------------


def list_runs(root: Path | None = None, include_archived: bool = False, mlflow: bool = True,
              now: float | None = None) -> list[dict[str, Any]]:
    """Rows (dicts with the keys of ``COLUMNS``) for every run directory under ``<root>/runs``, sorted by group
    and name; ``[]`` when there is none. ``mlflow``: ask a local MLflow store about runs without a summary."""
    runs = (root or results_root()) / "runs"
    if not runs.is_dir():
        return []
    now = time.time() if now is None else now
    rows = []
    for directory in sorted(runs.iterdir()):
        if directory.name.startswith(".") or not directory.is_dir():
            continue
        if ARCHIVED.fullmatch(directory.name) and not include_archived:
            continue
        rows.append(_read_run(directory, now))
    tracking = {row["name"]: row.pop("_tracking") for row in rows}
    if mlflow:
        apply_mlflow_statuses(rows, tracking)
    return sorted(rows, key=lambda r: (r["group"] or "", r["name"]))


def read_run(directory: Path, now: float | None = None) -> dict[str, Any]:
    """One row from a run directory's files; never raises for a damaged run (status ``broken``)."""
    row = _read_run(directory, time.time() if now is None else now)
    del row["_tracking"]
    return row


def _read_run(directory: Path, now: float) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(name=directory.name, path=str(directory), steps_done=0)
    spec, spec_problem = _read_document(directory / "spec.yaml", yaml.safe_load)
    summary, summary_problem = _read_document(directory / "summary.json", json.loads)
    spec = spec if isinstance(spec, dict) else None
    if summary_problem is None and not isinstance(summary, dict):
        summary, summary_problem = None, "summary.json: not a JSON object"
    has_summary = (directory / "summary.json").exists()

    mtp = _get(spec, "mtp")
    regime = ("none" if mtp.get("enabled") is False else mtp.get("regime")) if isinstance(mtp, dict) else None
    row.update(group=_text(_get(spec, "group")), regime=_text(regime),
               algorithm=_text(_get(spec, "algorithm", "name")), seed=_count(_get(spec, "train", "seed")),
               steps_planned=_count(_get(spec, "train", "steps")))
    # (MLflow on?, store URI or None for the default, experiment): where `occctl run` mirrored this run
    row["_tracking"] = (spec is not None and _get(spec, "tracking", "mlflow") is not False,
                        _text(_get(spec, "tracking", "uri")), _text(_get(spec, "tracking", "experiment")) or "occctl")
    activity = _last_activity(directory)
    started = _mtime(directory / "spec.yaml") or _mtime(directory)

    if summary is not None:
        row.update(status="finished", steps_done=_count(summary.get("steps")) or 0,
                   wall_s=_number(summary.get("wall_s")),
                   heldout_acc_after=_number(summary.get("heldout_acc_after")),
                   mtp_acceptance_after=_number(summary.get("mtp_acceptance_after")),
                   lambda_mean=_number(summary.get("lambda_mean")))
        for key in ("regime", "algorithm", "group"):
            row[key] = row[key] or _text(summary.get(key))
        row["seed"] = row["seed"] if row["seed"] is not None else _count(summary.get("seed"))
        return row
    row["steps_done"] = last_step(directory / "metrics.jsonl") or 0
    row["wall_s"] = round(activity - started, 2) if activity and started and activity >= started else None
    if has_summary:
        row.update(status="broken", problem=summary_problem)
    elif spec is None:
        row.update(status="broken", problem=spec_problem or "spec.yaml: not a YAML mapping")
    elif activity is not None and now - activity < RUNNING_WINDOW_S:
        row["status"] = "running"
    else:
        row["status"] = "unfinished"
    return row


def _read_document(path: Path, parse) -> tuple[Any, str | None]:
    """(parsed content or None, problem or None); a missing file is a problem too."""
    try:
        return parse(path.read_bytes().decode("utf-8")), None
    except FileNotFoundError:
        return None, f"{path.name}: missing"
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as e:
        return None, f"{path.name}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def last_step(metrics: Path) -> int | None:
    """The largest ``step`` in the last lines of metrics.jsonl (a torn last line is skipped)."""
    try:
        size = metrics.stat().st_size
        with metrics.open("rb") as f:
            for chunk in (METRICS_TAIL_BYTES, METRICS_MAX_BYTES):
                f.seek(max(0, size - chunk))
                lines = f.read(chunk).splitlines()
                if size > chunk:
                    lines = lines[1:]  # the first line of a tail is cut
                steps = [s for s in map(_step_of, lines) if s is not None]
                if steps or size <= chunk:
                    return max(steps, default=None)
    except OSError:
        return None
    return None


def _step_of(line: bytes) -> int | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return _count(row.get("step")) if isinstance(row, dict) else None


def _last_activity(directory: Path) -> float | None:
    """The newest mtime among the run directory, its files and its checkpoints."""
    times = [_mtime(directory)]
    try:
        for child in directory.iterdir():
            times.append(_mtime(child))
        if (directory / "checkpoints").is_dir():
            times.extend(_mtime(c) for c in (directory / "checkpoints").iterdir())
    except OSError:
        pass
    return max((t for t in times if t is not None), default=None)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


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


def apply_mlflow_statuses(rows: list[dict[str, Any]], tracking: dict[str, tuple[bool, str | None, str]]) -> None:
    """For rows without a summary (running / unfinished), record the newest MLflow run's status and let it
    decide: FAILED -> failed; KILLED -> unfinished; RUNNING keeps the file-based guess (a SIGKILL leaves it).
    ``tracking``: run name -> (MLflow on?, store URI or None for the default, experiment)."""
    from occctl.tracking import default_store, latest_statuses

    default_uri, _ = default_store()
    wanted: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        enabled, uri, experiment = tracking.get(row["name"], (False, None, "occctl"))
        if enabled and row["status"] in ("running", "unfinished"):
            wanted.setdefault((uri or default_uri, experiment), []).append(row)
    for (uri, experiment), group in wanted.items():
        statuses = latest_statuses(uri, experiment, [r["name"] for r in group])
        for row in group:
            status = statuses.get(row["name"])
            row["mlflow_status"] = status
            if status == "FAILED":
                row["status"] = "failed"
            elif status == "KILLED":
                row["status"] = "unfinished"


# ---- filtering and showing --------------------------------------------------------------------------------------


def filter_rows(rows: list[dict[str, Any]], groups: list[str] | None = None,
                statuses: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows in any of ``groups`` (a run without a group matches none) and with any of ``statuses``."""
    for status in statuses or []:
        if status not in STATUSES:
            close = difflib.get_close_matches(status, STATUSES, n=1)
            raise SpecError(f"--status {status}: unknown status" + (f" (did you mean {close[0]!r}?)" if close else ""),
                            hint=f"one of: {', '.join(STATUSES)}")
    return [r for r in rows if (not groups or r["group"] in groups) and (not statuses or r["status"] in statuses)]


def public_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows restricted to ``COLUMNS`` (JSON-safe: numbers are finite or None)."""
    return [{key: row.get(key) for key in COLUMNS} for row in rows]


# (title, cell text, right-aligned?); columns a narrow terminal drops first come last in DROP_ORDER
LS_COLUMNS = (
    ("name", lambda r: r["name"], False),
    ("group", lambda r: r.get("group") or "", False),
    ("status", lambda r: r.get("status") or "?", False),
    ("regime", lambda r: r.get("regime") or "–", False),
    ("algo", lambda r: r.get("algorithm") or "–", False),
    ("seed", lambda r: _fmt_int(r.get("seed")), True),
    ("steps", lambda r: f"{r.get('steps_done') or 0}/{_fmt_int(r.get('steps_planned'))}", True),
    ("acc", lambda r: _fmt_float(r.get("heldout_acc_after"), 3), True),
    ("MTP acc", lambda r: _fmt_float(r.get("mtp_acceptance_after"), 3), True),
    ("mean λ", lambda r: _fmt_float(r.get("lambda_mean"), 4), True),
    ("wall", lambda r: format_duration(r.get("wall_s")), True),
)
DROP_ORDER = ("algo", "group", "wall", "mean λ", "MTP acc")


def build_ls_table(rows: list[dict[str, Any]], max_width: int | None = None) -> Table:
    """A rich table of runs: name, group (when any run has one), status, regime, algorithm, seed, steps done /
    planned, held-out accuracy after RL ("acc"), MTP acceptance after RL, mean λ, wall time ("–": not known).
    ``max_width``: drop the least useful columns (``DROP_ORDER``) until the table fits."""
    titles = [c[0] for c in LS_COLUMNS if c[0] != "group" or any(r.get("group") for r in rows)]
    table = _table(rows, titles)
    for title in DROP_ORDER if max_width is not None else ():
        if _natural_width(table) <= max_width:
            break
        if title in titles:
            titles.remove(title)
            table = _table(rows, titles)
    return table


def _table(rows: list[dict[str, Any]], titles: list[str]) -> Table:
    table = Table(title=f"{len(rows)} run{'s' * (len(rows) != 1)}", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for title, _, right in LS_COLUMNS:
        if title in titles:
            table.add_column(title, justify="right" if right else "left", no_wrap=title != "name",
                             overflow="fold" if title == "name" else "ellipsis")
    getters = {title: get for title, get, _ in LS_COLUMNS}
    for row in rows:
        status = row.get("status") or "?"
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


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


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
    try:
        rows = filter_rows(list_runs(root, include_archived=include_archived, mlflow=mlflow), group, status)
    except SpecError as e:
        fail(e)
    if as_json:
        out.print(json.dumps(public_rows(rows), indent=2), markup=False, highlight=False, emoji=False, soft_wrap=True)
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

