"""`occctl bench`: overhead of the MTP regimes, measured in one process (ratios, not absolute claims)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from occctl.backend import get_backend
from occctl.errors import EnvError, SpecError
from occctl.rundir import run_dir, write_text_atomic

GOALS = {"occ_over_detach": 1.02, "detach_over_vanilla": 1.10}


def run_overhead_bench(spec, steps: int, json_path: Path | None = None,
                       console: Console | None = None) -> dict[str, Any]:
    if spec.backend != "trl":
        raise EnvError(f"bench overhead runs on the trl backend; the spec uses {spec.backend!r}")
    if not spec.mtp.enabled:
        raise SpecError("bench overhead compares MTP regimes: the spec must have mtp.enabled=true")
    backend = get_backend("trl")
    plan = backend.prepare(spec, run_dir(spec.name))
    from backends.trl_backend.bench import measure_overhead

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console or Console(stderr=True)) as progress:
        result = measure_overhead(spec, plan.native_config, steps, progress)
    result["goals"] = {k: {"max": v, "met": result[k] <= v} for k, v in GOALS.items()}
    if json_path is not None:
        write_text_atomic(Path(json_path), json.dumps(result, indent=2) + "\n")
    return result


def overhead_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"step time, {result['steps_timed']} steps per variant, interleaved "
                        f"({result['completions_per_step']} completions/step)")
    for column in ("variant", "median s/step", "mean s/step", "median / detach"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    detach = result["median_step_s"]["detach"]
    for name, median in result["median_step_s"].items():
        table.add_row(name, f"{median:.4f}", f"{result['mean_step_s'][name]:.4f}", f"{median / detach:.3f}")
    for key, goal in result["goals"].items():
        mark = "[green]met[/]" if goal["met"] else "[red]missed[/]"
        table.caption = (table.caption + "  " if table.caption else "") + f"{key} {result[key]:.3f} (≤{goal['max']} {mark})"
    return table
