"""What a report asks for against what the store holds: every ``--compare`` row, ``--regime``, ``--rows`` key and
``--metric`` must name something the finished runs have, or the report stops with one line naming what it could
not find and what there is (a table with a row or a column silently missing reads as a result).

And what a group lacks: cells of the ``--group`` studies that are not finished, or finished in ``results/`` but
not published to MLflow, are named in a warning, so a table over n=1 of 3 seeds says why.
"""

from __future__ import annotations

from typing import Any

from occctl.errors import SpecError, did_you_mean
from occctl.report.comparison import LABEL_SEPARATOR, compare_index, row_label

ALL_ROWS = "all"  # --compare all: every row found


def parse_compare(text: str) -> list[str]:
    """``--compare a,b`` -> [a, b]; ``all`` -> [] (every row). An empty value is refused."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise SpecError(f"--compare {text!r} names no rows",
                        hint="name them, e.g. --compare detach,occ, or pass --compare all for every row found")
    return [] if entries == [ALL_ROWS] else entries


def select_runs(runs: list[dict[str, Any]], compare: list[str], rows: str, regime: str | None,
                metrics: list[str] | None, where: str) -> list[dict[str, Any]]:
    """The runs of ``regime`` (all when None); SpecError naming a regime, row key, compared row or metric that no
    finished run in ``where`` has."""
    if regime:
        regimes = sorted({run["tags"].get("occctl.regime", "?") for run in runs})
        runs = [run for run in runs if run["tags"].get("occctl.regime") == regime]
        if not runs:
            raise SpecError(f"--regime {regime!r}{did_you_mean(regime, regimes)}: no finished run of that regime in "
                            f"{where}; regimes found: {', '.join(regimes) or 'none'}")
    if not runs:
        return runs
    for key in (k.strip() for k in rows.split(",")):
        if key in ("regime", "mtp.regime"):
            continue
        if not any(f"occctl.cell.{key}" in run["tags"] or key in run["params"] for run in runs):
            keys = sorted({t.removeprefix("occctl.cell.") for run in runs for t in run["tags"]
                           if t.startswith("occctl.cell.")})
            raise SpecError(f"--rows {key!r}{did_you_mean(key, keys)}: no run in {where} has that key (as a matrix "
                            f"key or a spec key); matrix keys: {', '.join(keys) or 'none'}")
    labels = sorted({row_label(run, rows) for run in runs})
    missing = [entry for entry in compare
               if not any(entry in (label, label.split(LABEL_SEPARATOR)[0]) for label in labels)]
    if missing:
        raise SpecError(f"--compare: no finished runs of {', '.join(missing)} in {where}"
                        f"{did_you_mean(missing[0], labels)}; rows found: {', '.join(labels)}",
                        hint="compare rows that exist, or run those cells first")
    compared = [run for run in runs if not compare or compare_index(row_label(run, rows), compare) is not None]
    keys = {key for run in compared for key in run["metrics"]}
    for metric in metrics or []:
        if metric not in keys:
            raise SpecError(f"--metric {metric!r}{did_you_mean(metric, keys)}: none of the {len(compared)} runs "
                            f"compared in {where} logged it")
    return runs


def group_gaps(groups: list[str], finished_names: set[str], statuses: dict[str, dict[str, str]],
               folders: dict[str, dict[str, str]]) -> list[str]:
    """Warnings for cells of ``groups`` the report leaves out. ``statuses``: group -> {run name: newest MLflow
    status}; ``folders``: group -> {run name: status in results/ (``occctl ls``)}; ``finished_names``: the runs
    the report read (FINISHED in MLflow)."""
    warnings = []
    for group in groups:
        in_store = statuses.get(group, {})
        on_disk = folders.get(group, {})
        unpublished = sorted(n for n, s in on_disk.items() if s == "finished" and n not in finished_names)
        unfinished = sorted({n for n, s in on_disk.items() if s != "finished"}
                            | {n for n, s in in_store.items() if n not in finished_names and n not in on_disk})
        if unfinished:
            shown = [f"{n} ({on_disk.get(n) or in_store.get(n, '?').lower()})" for n in unfinished]
            warnings.append(f"group {group}: {len(unfinished)} cell(s) not finished, left out: {', '.join(shown)} "
                            "(rerun the study to finish them)")
        if unpublished:
            warnings.append(f"group {group}: {len(unpublished)} finished cell(s) not published to MLflow, left out: "
                            f"{', '.join(unpublished)} (rerun the study: it publishes them)")
    return warnings
