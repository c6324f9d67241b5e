"""`occctl report`: MLflow runs of a study -> Table-1 markdown/CSV, curves (PNG), MLflow report run."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from occctl.errors import SpecError
from occctl.plots import CURVES, plot_curves, plot_fidelity
from occctl.report import Comparison, build_comparison, to_markdown, to_rows
from occctl.rundir import results_root, write_text_atomic
from occctl.tracking import find_runs, log_report, metric_history, tracking_uri

REPORT_EXPERIMENT = "occctl-reports"


def report_dir(name: str, out: str | Path | None = None) -> Path:
    """``results/reports/<name>`` or ``--out``, which must stay inside the results root."""
    root = results_root().resolve()
    target = (Path(out) if out else root / "reports" / name).expanduser()
    if not target.is_absolute():
        target = Path.cwd() / target
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise SpecError(f"--out {out}: reports are written inside the results root ({root})",
                        hint="pass a path under results/, e.g. --out results/reports/my_study")
    return resolved


def write_report(compare: list[str], groups: list[str] | None, experiment: str | None, rows: str,
                 metrics: list[str] | None, out: str | None, name: str | None, uri: str | None = None,
                 smooth: int = 10, regime: str | None = None) -> dict[str, Any]:
    uri = tracking_uri(uri)
    runs = find_runs(uri, groups, experiment)
    if regime:
        runs = [run for run in runs if run["tags"].get("occctl.regime") == regime]
    comp = build_comparison(runs, compare, rows, metrics)
    if not comp.rows:
        where = f"group {','.join(groups)}" if groups else f"experiment {experiment}" if experiment else "the store"
        raise SpecError(f"no finished runs of {', '.join(compare) or 'any row'} found in {where} ({uri})",
                        hint="run a study first (occctl run specs/tiny_study.yaml), or check --group/--experiment")
    name = name or re.sub(r"[^A-Za-z0-9._-]+", "_", f"{'+'.join(groups or [experiment or 'all'])}__{'-'.join(comp.rows)}")
    directory = report_dir(name, out)
    directory.mkdir(parents=True, exist_ok=True)
    title = f"{', '.join(comp.rows)} on {', '.join(groups or [experiment or 'all runs'])}"
    markdown = to_markdown(comp, title)
    records = to_rows(comp)
    files = [_write(directory / "table.md", markdown + _provenance(compare, groups, experiment, rows, metrics, regime)),
             _write(directory / "table.csv", _csv(records))]
    files += _figures(comp, directory, uri, smooth)
    try:
        report_run = log_report(uri, REPORT_EXPERIMENT, name, files, {"table.json": _columns(records)})
    except Exception as e:  # noqa: BLE001 - the files are written; MLflow is a mirror
        report_run = None
        import warnings

        warnings.warn(f"report not logged to MLflow ({type(e).__name__}: {e})", RuntimeWarning, stacklevel=2)
    return {"comparison": comp, "markdown": markdown, "directory": directory, "files": files,
            "mlflow_run_id": report_run}


def _provenance(compare, groups, experiment, rows, metrics, regime) -> str:
    args = [f"--compare {','.join(compare)}"] if compare else ['--compare ""']
    args += [f"--group {','.join(groups)}"] if groups else []
    args += [f"--experiment {experiment}"] if experiment else []
    args += [f"--rows {rows}"] if rows != "regime" else []
    args += [f"--regime {regime}"] if regime else []
    args += [f"--metric {m}" for m in metrics or []]
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


def _figures(comp: Comparison, directory: Path, uri: str, smooth: int) -> list[Path]:
    members = comp.members or {}
    paths = []
    for key, (stem, title, transform) in CURVES.items():
        by_row = {r: [metric_history(uri, run["run_id"], key) for run in members[r]] for r in comp.rows}
        window = 1 if key.startswith("eval/") else smooth
        path = plot_curves(by_row, title, directory / f"{stem}.png", transform, window)
        if path:
            paths.append(path)
    oracle_runs = [run for r in comp.rows for run in members[r] if "occ/oracle_c" in run["metrics"]]
    if oracle_runs:
        pairs: dict[str, list[tuple[float, float]]] = {"c": [], "v²": []}
        for run in oracle_runs:
            for name, proxy, oracle in (("c", "occ/c_hat", "occ/oracle_c"), ("v²", "occ/v_hat2", "occ/oracle_v2")):
                p, o = dict(metric_history(uri, run["run_id"], proxy)), dict(metric_history(uri, run["run_id"], oracle))
                pairs[name] += [(p[s], o[s]) for s in sorted(set(p) & set(o))]
        path = plot_fidelity(pairs, directory / "fig8_fidelity.png")
        if path:
            paths.append(path)
    return paths
