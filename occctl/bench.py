"""`occctl bench`: overhead of the MTP regimes, measured in one process (ratios, not absolute claims).

The backend times its variants (``Backend.bench_overhead``) and returns median and mean seconds per optimizer
step per variant plus ratios named ``<a>_over_<b>``; a ratio may come with a 95% interval as
``<a>_over_<b>_ci95: [low, high]``. This module checks the goals, writes the JSON and draws the table: it
knows no variant by name, so a backend can time whichever variants it has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from occctl.backend import get_backend
from occctl.errors import SpecError
from occctl.report.progress import progress_bar
from occctl.rundir import RunDir, write_text_atomic
from occctl.spec import Spec

GOALS = {"occ_over_detach": 1.02, "detach_over_vanilla": 1.10}  # ratio -> the most it may be
CI_SUFFIX = "_ci95"


def run_overhead_bench(spec: Spec, steps: int, out: Path | None = None, force: bool = False,
                       console: Console | None = None) -> dict[str, Any]:
    """Time the spec's backend's MTP variants; with ``out``, also write the result there as JSON (an existing
    file is refused unless ``force``)."""
    if not spec.mtp.enabled:
        raise SpecError("bench overhead compares MTP regimes: the spec must have mtp.enabled=true")
    target = None if out is None else Path(out).expanduser().resolve()
    if target is not None and target.exists() and not force:
        raise SpecError(f"--out {out}: {target} exists; refusing to overwrite it",
                        hint="pass --force to replace it, or choose another file")
    backend = get_backend(spec.backend)
    plan = backend.prepare(spec, RunDir.named(spec.name))
    with progress_bar(console or Console(stderr=True)) as progress:
        result = backend.bench_overhead(plan, steps, progress)
    result["goals"] = {k: {"max": v, "met": result[k] <= v} for k, v in GOALS.items() if k in result}
    if target is not None:
        write_text_atomic(target, json.dumps(result, indent=2) + "\n")
    return result


def ratios(result: dict[str, Any]) -> dict[str, tuple[float, list[float] | None]]:
    """Ratios of medians, ``<a>_over_<b>`` -> (value, its 95% interval or None), in the order the backend wrote
    them (ratios of means, ``mean_<a>_over_<b>``, stay in the JSON)."""
    return {key: (value, result.get(key + CI_SUFFIX)) for key, value in result.items()
            if "_over_" in key and not key.startswith("mean_") and not key.endswith(CI_SUFFIX)
            and isinstance(value, (int, float)) and not isinstance(value, bool)}


def overhead_table(result: dict[str, Any]) -> Table:
    """Seconds per step per variant, each relative to the reference variant (detach when timed, else the
    first); the caption lists every ratio (with its interval) and whether each goal was met."""
    medians: dict[str, float] = result["median_step_s"]
    reference = "detach" if "detach" in medians else next(iter(medians))
    table = Table(title=f"step time, {result['steps_timed']} steps per variant, interleaved "
                        f"({result['completions_per_step']} completions/step)")
    for column in ("variant", "median s/step", "mean s/step", f"median / {reference}"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, median in medians.items():
        mean = result.get("mean_step_s", {}).get(name, math.nan)
        table.add_row(name, f"{median:.4f}", f"{mean:.4f}", f"{median / medians[reference]:.3f}")
    notes = []
    for key, (value, interval) in ratios(result).items():
        text = f"{key} {value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
        goal = result.get("goals", {}).get(key)
        if goal:
            text += f" (≤{goal['max']} {'[green]met[/]' if goal['met'] else '[red]missed[/]'})"
        notes.append(text)
    table.caption = "  ".join(notes) or None
    return table
