"""`occctl report`: MLflow runs of a study -> Table-1 markdown/CSV, curves (PNG), MLflow report run."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from occctl.errors import SpecError
from occctl.report.comparison import Comparison, build_comparison, to_markdown, to_rows, value_at_step
from occctl.report.plots import CURVES, plot_curves, plot_fidelity
from occctl.report.provenance import (collect_starts_and_machines, starts_and_machines_columns,
                                      starts_and_machines_markdown)
from occctl.report.selection import group_gaps, select_runs
from occctl.rundir import results_root, write_text_atomic
from occctl.tracking import Store, resolve_store

REPORT_EXPERIMENT = "occctl-reports"


def report_dir(name: str, out: str | Path | None = None, force: bool = False) -> Path:
    """``results/reports/<name>`` (rewritten on every report of that name), or ``--out``: any directory the user
    names, refused when it already holds files unless ``force``. ``name`` comes from the runs, so it may not
    leave ``results/reports``."""
    if out is None:
        reports = results_root() / "reports"
        target = (reports / name).resolve()
        if target.parent != reports.resolve():
            raise SpecError(f"report name {name!r} resolves outside {reports}", hint="pass --name with a plain name")
        return target
    target = Path(out).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise SpecError(f"--out {out}: {target} is a file, not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise SpecError(f"--out {out}: {target} is not empty; refusing to overwrite it",
                        hint="pass --force to write the report into it anyway, or choose another directory")
    return target


def write_report(compare: list[str], groups: list[str] | None, experiment: str | None, rows: str,
                 metrics: list[str] | None, out: str | None, name: str | None, uri: str | None = None,
                 smooth: int = 10, regime: str | None = None, force: bool = False,
                 at_steps: list[int] | None = None) -> dict[str, Any]:
    """The comparison of the finished runs (their latest metric values), or with ``at_steps`` one comparison per
    step, each metric read from its history at that step (``value_at_step``)."""
    if at_steps is not None and (not at_steps or any(step < 1 for step in at_steps)):
        raise SpecError(f"--at-step {at_steps}: give optimizer steps ≥ 1, e.g. --at-step 200 --at-step 1000")
    if at_steps and not metrics:
        raise SpecError("--at-step reads each metric's history: name the metrics with --metric",
                        hint="e.g. --metric eval/tiny/avg_at_k --metric spec/mean_accept_len (summary/* has no history)")
    store = resolve_store(uri)
    runs = store.find_runs(groups, experiment)
    where = f"group {','.join(groups)}" if groups else f"experiment {experiment}" if experiment else "the store"
    runs = select_runs(runs, compare, rows, regime, metrics, where)  # names what it could not find
    comp = build_comparison(runs, compare, rows, metrics)
    gaps = _gaps(store, groups, {run["name"] for run in runs}) if groups else []
    if not comp.rows:
        raise SpecError(f"no finished runs of {', '.join(compare) or 'any row'} found in {where} ({store.uri})",
                        hint="run a study first (occctl run specs/tiny_study.yaml), or check --group/--experiment")
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "_", f"{'+'.join(groups or [experiment or 'all'])}__{'-'.join(comp.rows)}")
    directory = report_dir(name, out, force)
    directory.mkdir(parents=True, exist_ok=True)
    title = f"{', '.join(comp.rows)} on {', '.join(groups or [experiment or 'all runs'])}"
    compared = [run for r in comp.rows for run in (comp.members or {})[r]]
    origins = collect_starts_and_machines(list({run["run_id"]: run["name"] for run in compared}.values()))
    if at_steps:
        tables = [(step, build_comparison(_at_step(compared, store, metrics or [], step), compare, rows, metrics))
                  for step in at_steps]
        markdown = "\n".join(to_markdown(c, f"{title}, at step {step}") for step, c in tables)
        records = [{"step": step, **record} for step, c in tables for record in to_rows(c)]
    else:
        markdown, records = to_markdown(comp, title), to_rows(comp)
    gap_notes = "".join(f"\nWarning: {gap}.\n" for gap in gaps)
    files = [_write(directory / "table.md",
                    markdown + gap_notes + starts_and_machines_markdown(origins)
                    + _provenance(compare, groups, experiment, rows, metrics, regime, at_steps)),
             _write(directory / "table.csv", _csv(records))]
    files += _figures(comp, directory, store, smooth)
    logged = {"table.json": _columns(records), "start_and_machine.json": starts_and_machines_columns(origins)}
    try:
        report_run = store.log_report(REPORT_EXPERIMENT, name, files, logged)
    except Exception as e:  # noqa: BLE001 - the files are written; MLflow is a mirror
        report_run = None
        import warnings

        warnings.warn(f"report not logged to MLflow ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
    return {"comparison": comp, "markdown": markdown, "directory": directory, "files": files,
            "mlflow_run_id": report_run, "warnings": gaps}


def _gaps(store: Store, groups: list[str], finished: set[str]) -> list[str]:
    """Warnings for the cells of ``groups`` that are unfinished or unpublished (``selection.group_gaps``)."""
    from occctl.inventory import list_runs

    folders: dict[str, dict[str, str]] = {}
    for row in list_runs(mlflow=False):
        if row.group in groups:
            folders.setdefault(row.group, {})[row.name] = row.status or "?"
    return group_gaps(groups, finished, store.group_statuses(groups), folders)


def _at_step(runs: list[dict[str, Any]], store: Store, metrics: list[str], step: int) -> list[dict[str, Any]]:
    """The runs with each metric replaced by its value at ``step``. A run reached the last step any of its
    metrics was logged at, or its ``train.steps`` (the runs read are finished)."""
    out = []
    for run in runs:
        histories = {key: store.metric_history(run["run_id"], key) for key in metrics}
        reached = max([s for h in histories.values() for s, _ in h] + [_int(run.get("params", {}).get("train.steps"))])
        out.append({**run, "metrics": {key: value_at_step(h, step, reached) for key, h in histories.items()}})
    return out


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _provenance(compare, groups, experiment, rows, metrics, regime, at_steps=None) -> str:
    args = [f"--compare {','.join(compare)}"] if compare else ["--compare all"]
    args += [f"--group {','.join(groups)}"] if groups else []
    args += [f"--experiment {experiment}"] if experiment else []
    args += [f"--rows {rows}"] if rows != "regime" else []
    args += [f"--regime {regime}"] if regime else []
    args += [f"--metric {m}" for m in metrics or []]
    args += [f"--at-step {step}" for step in at_steps or []]
    return f"\nProduced by `occctl report {' '.join(args)}`.\n"


def _write(path: Path, text: str) -> Path:
    write_text_atomic(path, text)
    return path


def _csv(records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue()


def _columns(records: list[dict[str, Any]]) -> dict[str, list]:
    return {key: [r[key] for r in records] for key in records[0]}


def _figures(comp: Comparison, directory: Path, store: Store, smooth: int) -> list[Path]:
    members = comp.members or {}
    paths = []
    for key, (stem, title, transform) in CURVES.items():
        by_row = {r: [store.metric_history(run["run_id"], key) for run in members[r]] for r in comp.rows}
        window = 1 if key.startswith("eval/") else smooth
        path = plot_curves(by_row, title, directory / f"{stem}.png", transform, window)
        if path:
            paths.append(path)
    oracle_runs = [run for r in comp.rows for run in members[r] if "occ/oracle_c" in run["metrics"]]
    if oracle_runs:
        pairs: dict[str, list[tuple[float, float]]] = {"c": [], "v²": []}
        for run in oracle_runs:
            for name, proxy, oracle in (("c", "occ/c_hat", "occ/oracle_c"), ("v²", "occ/v_hat2", "occ/oracle_v2")):
                p = dict(store.metric_history(run["run_id"], proxy))
                o = dict(store.metric_history(run["run_id"], oracle))
                pairs[name] += [(p[s], o[s]) for s in sorted(set(p) & set(o))]
        path = plot_fidelity(pairs, directory / "fig8_fidelity.png")
        if path:
            paths.append(path)
    return paths
