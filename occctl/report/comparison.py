"""Comparison tables of a study (pure: run records in, tables out) in the paper's Table 1 layout.

Rows are regimes (or any matrix key), columns are benchmarks/metrics + Avg; each cell is the mean over
seeds with a 95% t-interval. A second table gives paired (same-seed) differences to a reference row.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from scipy import stats

from occctl.eval.suites import SUITES


@dataclass(frozen=True)
class Metric:
    """A column a report can show: its title and which direction is better (for the best/second marks)."""

    key: str
    title: str
    higher_is_better: bool = True


# Columns of the embedded task's report: summary metrics of each run.
TINY_COLUMNS = (
    Metric("summary/heldout_acc_after", "Held-out avg@k"),
    Metric("summary/heldout_greedy_after", "Greedy"),
    Metric("summary/reward_mean", "Reward AUC"),
    Metric("summary/mtp_acceptance_after", "MTP accept."),
)
# Metrics where less is better; any other metric counts as higher-is-better (accuracies, rewards, acceptance).
LOWER_IS_BETTER = ("loss", "wall_s", "timeouts", "_ece", "kl")


def describe_metric(key: str) -> Metric:
    """A column for a metric key given by the user: titled by the key (``summary/`` dropped); the direction of a
    known column, else from the name (``LOWER_IS_BETTER``)."""
    known = next((m for m in TINY_COLUMNS if m.key == key), None)
    last = key.rsplit("/", 1)[-1]
    higher = known.higher_is_better if known else not any(part in last for part in LOWER_IS_BETTER)
    return Metric(key, last if key.startswith("summary/") else key, higher)


@dataclass(frozen=True)
class Estimate:
    mean: float
    half_width: float  # of the 95% t-interval; NaN with one value
    n: int

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "–"
        ci = "" if math.isnan(self.half_width) else f" ± {self.half_width:.{digits}f}"
        return f"{self.mean:.{digits}f}{ci}"


def estimate(values: list[float]) -> Estimate:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return Estimate(float("nan"), float("nan"), 0)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Estimate(mean, float("nan"), 1)
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return Estimate(mean, half, len(values))


LABEL_SEPARATOR = "/"  # rows of several keys (``--rows mtp.regime,mtp.draft_loss``) are labelled ``occ/soft_ce``


def row_label(run: dict[str, Any], rows: str) -> str:
    """The row a run belongs to: a tag (``regime``), a matrix key (``variant``, ``mtp.coef``) or a param; with
    several comma-separated keys, their values joined by ``/``."""
    return LABEL_SEPARATOR.join(_key_value(run, key.strip()) for key in rows.split(","))


def _key_value(run: dict[str, Any], key: str) -> str:
    tags, params = run["tags"], run["params"]
    if key in ("regime", "mtp.regime"):
        return tags.get("occctl.regime", params.get("mtp.regime", "?"))
    return tags.get(f"occctl.cell.{key}", params.get(key, "default"))  # not varied: the spec's setting


def row_key_title(rows: str) -> str:
    return " / ".join("regime" if k.strip() == "mtp.regime" else k.strip() for k in rows.split(","))


def compare_index(label: str, compare: list[str]) -> int | None:
    """Where a row comes in ``compare``: the first entry that is its label or, for rows of several keys, its first
    value (``--compare detach/none,detach,occ``: detach/none first, then the other detach rows, then occ's);
    None when it is not compared."""
    hits = [i for i, entry in enumerate(compare) if entry in (label, label.split(LABEL_SEPARATOR)[0])]
    return min(hits) if hits else None


def seed_of(run: dict[str, Any]) -> str:
    return run["tags"].get("occctl.seed", run["params"].get("train.seed", "?"))


def choose_columns(runs: list[dict[str, Any]], metrics: list[str] | None) -> list[Metric]:
    """The given metrics; else the benchmarks of the first benchmark suite (``occctl.eval.suites``) the runs
    were evaluated on (avg@k, the largest k), else the tiny set."""
    if metrics:
        return [describe_metric(m) for m in metrics]
    keys = {k for run in runs for k in run["metrics"]}
    for suite in (s for s in SUITES.values() if s.kind == "math"):
        columns = []
        for bench in suite.benchmarks:
            found = sorted(k for k in keys if k.startswith(f"eval/{suite.name}/{bench}/avg_at_"))
            if found:
                columns.append(Metric(found[-1], bench))
        if columns:
            return columns
    return [m for m in TINY_COLUMNS if m.key in keys]


@dataclass(frozen=True)
class Comparison:
    columns: list[str]  # titles, "Avg" last when there is more than one benchmark column
    higher_is_better: dict[str, bool]  # title -> direction of the best/second marks
    rows: list[str]
    cells: dict[tuple[str, str], Estimate]
    paired: dict[tuple[str, str], Estimate]  # (row, column) -> mean difference to the reference row
    reference: str
    seeds: dict[str, list[str]]
    row_key: str = "regime"
    members: dict[str, list[dict[str, Any]]] | None = None  # row -> its runs (one per seed)


def display_labels(runs: list[dict[str, Any]], rows: str) -> dict[str, str]:
    """run id -> row label; with runs from several matrix groups the group is added, ``ce (tiny_stress)``."""
    groups = {run["tags"].get("occctl.group", "") for run in runs}
    return {run["run_id"]: row_label(run, rows) + (f" ({run['tags'].get('occctl.group', '-')})"
                                                    if len(groups) > 1 else "") for run in runs}


def build_comparison(runs: list[dict[str, Any]], compare: list[str], rows: str = "regime",
                     metrics: list[str] | None = None) -> Comparison:
    """Group runs into rows (in the order of ``compare``, then of the groups; all rows when it is empty)."""
    runs = [run for run in runs if not compare or compare_index(row_label(run, rows), compare) is not None]
    columns = choose_columns(runs, metrics)
    labels = display_labels(runs, rows)
    by_row: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_row.setdefault(labels[run["run_id"]], {})[seed_of(run)] = run  # one run per (row, seed)
    order = sorted(by_row, key=lambda label: (compare_index(label.split(" (")[0], compare) if compare else 0, label))
    with_avg = len(columns) > 1 and all(m.key.startswith("eval/") for m in columns)
    titles = [m.title for m in columns] + (["Avg"] if with_avg else [])
    higher = {m.title: m.higher_is_better for m in columns} | ({"Avg": True} if with_avg else {})

    def value(run: dict[str, Any], title: str) -> float:
        if title == "Avg":
            values = [run["metrics"].get(m.key, float("nan")) for m in columns]
            return statistics.fmean(values) if values else float("nan")
        key = next(m.key for m in columns if m.title == title)
        return run["metrics"].get(key, float("nan"))

    cells, paired = {}, {}
    reference = order[0] if order else ""
    for label in order:
        for title in titles:
            cells[(label, title)] = estimate([value(r, title) for r in by_row[label].values()])
            common = sorted(set(by_row[label]) & set(by_row.get(reference, {})))
            if label != reference and common:
                paired[(label, title)] = estimate([value(by_row[label][s], title) - value(by_row[reference][s], title)
                                                   for s in common])
    return Comparison(titles, higher, order, cells, paired, reference, {r: sorted(by_row[r]) for r in order},
                      row_key_title(rows), {r: list(by_row[r].values()) for r in order})


def value_at_step(history: list[tuple[int, float]], step: int, reached: int | None = None) -> float:
    """A metric's value at ``step``: the last one logged at or before it (a rollout metric is logged once per
    generation, so its last value may sit a few steps before the run's end); NaN when the run never got to
    ``step`` (``reached``: the run's last step, default the history's own last step) or the history starts after it."""
    if not history or (reached if reached is not None else max(s for s, _ in history)) < step:
        return float("nan")
    before = [(s, v) for s, v in history if s <= step]
    return max(before, key=lambda sv: sv[0])[1] if before else float("nan")


def ranks_by_column(comp: Comparison) -> dict[tuple[str, str], int]:
    """1 for the best mean of each column, 2 for the second (in the column's direction)."""
    out = {}
    for title in comp.columns:
        means = sorted({comp.cells[(r, title)].mean for r in comp.rows if not math.isnan(comp.cells[(r, title)].mean)},
                       reverse=comp.higher_is_better.get(title, True))
        for r in comp.rows:
            m = comp.cells[(r, title)].mean
            if means and m == means[0]:
                out[(r, title)] = 1
            elif len(means) > 1 and m == means[1]:
                out[(r, title)] = 2
    return out


def to_markdown(comp: Comparison, title: str) -> str:
    rank = ranks_by_column(comp)
    lines = [f"### {title}", "", "Mean ± 95% CI over seeds (t-interval); **best**, <u>second</u>.", "",
             f"| {comp.row_key} | n | " + " | ".join(comp.columns) + " |", "|---|---|" + "---|" * len(comp.columns)]
    for r in comp.rows:
        texts = []
        for c in comp.columns:
            t = comp.cells[(r, c)].text()
            texts.append(f"**{t}**" if rank.get((r, c)) == 1 else f"<u>{t}</u>" if rank.get((r, c)) == 2 else t)
        lines.append(f"| {r} | {len(comp.seeds[r])} | " + " | ".join(texts) + " |")
    if comp.paired:
        lines += ["", f"Paired difference to **{comp.reference}** (same seeds), mean ± 95% CI:", "",
                  f"| {comp.row_key} | " + " | ".join(comp.columns) + " |", "|---|" + "---|" * len(comp.columns)]
        for r in comp.rows[1:]:
            lines.append(f"| {r} − {comp.reference} | " + " | ".join(
                _signed(comp.paired.get((r, c))) for c in comp.columns) + " |")
    return "\n".join(lines) + "\n"


def _signed(e: Estimate | None) -> str:
    if e is None or math.isnan(e.mean):
        return "–"
    ci = "" if math.isnan(e.half_width) else f" ± {e.half_width:.3f}"
    return f"{e.mean:+.3f}{ci}"


def to_rows(comp: Comparison) -> list[dict[str, Any]]:
    """Flat records for CSV and ``mlflow.log_table``."""
    out = []
    for r in comp.rows:
        for c in comp.columns:
            e, d = comp.cells[(r, c)], comp.paired.get((r, c))
            out.append({"row": r, "column": c, "n": e.n, "mean": e.mean, "ci95_half_width": e.half_width,
                        f"diff_to_{comp.reference}": d.mean if d else float("nan"),
                        "diff_ci95_half_width": d.half_width if d else float("nan")})
    return out
