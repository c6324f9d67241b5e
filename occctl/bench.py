"""`occctl bench`: overhead of the MTP regimes, and plain vs speculative rollouts, each measured in one process
(ratios, not absolute claims).

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
SPEEDUP_GOAL = 1.3  # spec_speedup of speculative over plain rollouts: the least it should be


def run_overhead_bench(spec: Spec, steps: int, out: Path | None = None, force: bool = False,
                       console: Console | None = None, resolve: float = 0.0) -> dict[str, Any]:
    """Time the spec's backend's MTP variants (at most ``steps`` steps each; fewer once the backend's headline
    ratio is within ±``resolve``); with ``out``, also write the result there as JSON (an existing file is refused
    unless ``force``)."""
    if not 0.0 <= resolve < 1.0:
        raise SpecError(f"--resolve {resolve}: the target is a relative half-width in [0, 1), e.g. 0.01 for ±1 %")
    if not spec.mtp.enabled:
        raise SpecError("bench overhead compares MTP regimes: the spec must have mtp.enabled=true")
    target = _target(out, force)
    backend = get_backend(spec.backend)
    plan = backend.prepare(spec, RunDir.named(spec.name))
    with progress_bar(console or Console(stderr=True)) as progress:
        result = backend.bench_overhead(plan, steps, progress, resolve)
    result["goals"] = {k: {"max": v, "met": result[k] <= v} for k, v in GOALS.items() if k in result}
    if target is not None:
        write_text_atomic(target, json.dumps(result, indent=2) + "\n")
    return result


def run_rollout_bench(spec: Spec, rounds: int, out: Path | None = None, force: bool = False,
                      console: Console | None = None) -> dict[str, Any]:
    """Plain vs speculative generation of one rollout batch of the spec, alternating in one process (the
    backend's ``bench_rollout``); with ``out``, also write the result there as JSON."""
    if not spec.mtp.enabled:
        raise SpecError("bench rollout drafts with the MTP head: the spec has mtp.enabled=false (no head)")
    target = _target(out, force)
    backend = get_backend(spec.backend)
    with progress_bar(console or Console(stderr=True)) as progress:
        result = backend.bench_rollout(backend.prepare(spec, RunDir.named(spec.name)), rounds, progress)
    result["goal"] = {"min": SPEEDUP_GOAL, "met": result["spec_speedup"] >= SPEEDUP_GOAL}
    if target is not None:
        write_text_atomic(target, json.dumps(result, indent=2) + "\n")
    return result


def rollout_table(result: dict[str, Any]) -> Table:
    """Tokens per second of plain and speculative generation; the caption holds the speed-up with its interval,
    the acceptance and the machine's load."""
    table = Table(title=f"rollout generation, {result['rounds_timed']} interleaved rounds of "
                        f"{result['completions_per_round']} completions (≤{result['max_new_tokens']} tokens)")
    table.add_column("generation")
    table.add_column("median tokens/s", justify="right")
    for name, value in result["tokens_per_s"].items():
        table.add_row(name, f"{value:.0f}")
    low, high = result["spec_speedup_ci95"]
    goal = result["goal"]
    table.caption = (f"spec_speedup {result['spec_speedup']:.3f} [{low:.3f}, {high:.3f}] "
                     f"(≥{goal['min']} {'[green]met[/]' if goal['met'] else '[red]missed[/]'})  "
                     f"accept_rate {result['accept_rate']:.3f}  mean_accept_len {result['mean_accept_len']:.3f}  "
                     f"load {result['load_average_1min'][0]:.1f}→{result['load_average_1min'][1]:.1f}")
    return table


def _target(out: Path | None, force: bool) -> Path | None:
    target = None if out is None else Path(out).expanduser().resolve()
    if target is not None and target.exists() and not force:
        raise SpecError(f"--out {out}: {target} exists; refusing to overwrite it",
                        hint="pass --force to replace it, or choose another file")
    return target


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
    resolution = result.get("resolution")
    if resolution:
        notes.append(f"{resolution['ratio']} ±{100 * resolution['halfwidth']:.1f} % "
                     f"(target ±{100 * resolution['target']:.1f} %: "
                     f"{'[green]resolved[/]' if resolution['met'] else '[red]not resolved, raise --steps[/]'})")
    if "load_average_1min" in result:
        notes.append("load {:.1f}→{:.1f}".format(*result["load_average_1min"]))
    table.caption = "  ".join(notes) or None
    return table
