"""`occctl bench`: overhead of the MTP regimes, and plain vs speculative rollouts, each measured in one process
(ratios, not absolute claims).

The backend times its variants (``Backend.bench_overhead``) and returns median and mean seconds per optimizer
step per variant plus ratios named ``<a>_over_<b>``; a ratio may come with a 95% interval as
``<a>_over_<b>_ci95: [low, high]``. This module checks the goals, writes the JSON and draws the table: it
knows no variant by name, so a backend can time whichever variants it has.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from occctl.backend import get_backend
from occctl.errors import SpecError, did_you_mean
from occctl.jsonio import dumps
from occctl.progress import progress_bar
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
        write_text_atomic(target, dumps(result, indent=2) + "\n")
    return result


def run_rollout_bench(spec: Spec, rounds: int, out: Path | None = None, force: bool = False,
                      console: Console | None = None, checkpoints: list[Path] | None = None,
                      markdown: Path | None = None, engine: str = "hf") -> dict[str, Any]:
    """Plain vs speculative generation of one rollout batch of the spec, alternating in one process (the
    backend's ``bench_rollout``), from the spec's start or from each of ``checkpoints`` in turn (then the result is
    ``{"spec", "checkpoints": [one result per checkpoint]}``); with ``out`` / ``markdown``, also written there as
    JSON / a markdown table. ``engine="vllm"`` adds vLLM plain and vLLM MTP-speculative to the same rounds."""
    if not spec.mtp.enabled:
        raise SpecError("bench rollout drafts with the MTP head: the spec has mtp.enabled=false (no head)")
    if engine not in ("hf", "vllm"):
        raise SpecError(f"--engine {engine!r}{did_you_mean(engine, ['hf', 'vllm'])}: choose hf or vllm")
    target, table_target = _target(out, force), _target(markdown, force)
    starts = [checkpoint_spec(spec, c) for c in checkpoints or []] or [spec]
    backend = get_backend(spec.backend)
    results = []
    with progress_bar(console or Console(stderr=True)) as progress:
        for start in starts:
            extra = {} if engine == "hf" else {"engines": ("hf", engine)}  # a backend without vLLM is not asked
            result = backend.bench_rollout(backend.prepare(start, RunDir.named(spec.name)), rounds, progress, **extra)
            result["goal"] = {"min": SPEEDUP_GOAL, "met": result["spec_speedup"] >= SPEEDUP_GOAL}
            results.append({"checkpoint": start.model.path, **result} if checkpoints else result)
    final = {"spec": spec.name, "checkpoints": results} if checkpoints else results[0]
    if target is not None:
        write_text_atomic(target, dumps(final, indent=2) + "\n")
    if table_target is not None:
        write_text_atomic(table_target, rollout_markdown(final))
    return final


def checkpoint_spec(spec: Spec, checkpoint: Path) -> Spec:
    """The spec starting from a saved checkpoint (``checkpoints/final`` of a run) instead of its own start."""
    from occctl.models import has_mtp_head
    from occctl.spec import ModelSpec

    path = Path(checkpoint).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise SpecError(f"--checkpoint {checkpoint}: not a model directory (no config.json)",
                        hint="pass a run's checkpoints/final (or a checkpoint-N) folder")
    if not has_mtp_head(path):
        raise SpecError(f"--checkpoint {checkpoint}: the checkpoint has no MTP head to draft with",
                        hint="bench a checkpoint of a run with mtp.enabled=true")
    return spec.model_copy(update={"model": ModelSpec(path=str(path), dtype=spec.model.dtype)})


def _label(result: dict[str, Any]) -> str:
    """A checkpoint's run name (``results/runs/<name>/checkpoints/final``), else its path; the spec's start."""
    path = result.get("checkpoint")
    if path is None:
        return f"{result.get('spec', 'the spec')}'s start"
    p = Path(path)
    if p.parent.name == "checkpoints":
        return p.parents[1].name
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


def _results(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result["checkpoints"] if "checkpoints" in result else [result]


COLUMNS = ("start", "plain tokens/s", "speculative tokens/s", "spec_speedup [95% CI]", "accept_rate",
           "mean_accept_len")
VLLM_COLUMNS = ("vllm tokens/s", "vllm speculative tokens/s", "vllm_spec_speedup [95% CI]",
                "vllm_over_plain [95% CI]", "vllm accept_rate")


def _ratio(r: dict[str, Any], key: str) -> str:
    low, high = r[f"{key}_ci95"]
    return f"{r[key]:.3f} [{low:.3f}, {high:.3f}]"


def _row(r: dict[str, Any], colour: str | None = None) -> list[str]:
    """One start's cells: label, both tokens/s, the speed-up [95 % CI] (in rich ``colour`` if given), acceptance;
    then vLLM's when the bench ran it."""
    low, high = r["spec_speedup_ci95"]
    speedup = f"{r['spec_speedup']:.3f}"
    cells = [_label(r), f"{r['tokens_per_s']['plain']:.0f}", f"{r['tokens_per_s']['speculative']:.0f}",
             (f"[{colour}]{speedup}[/]" if colour else speedup) + f" [{low:.3f}, {high:.3f}]",
             f"{r['accept_rate']:.3f}", f"{r['mean_accept_len']:.3f}"]
    if "vllm_spec_speedup" in r:
        cells += [f"{r['tokens_per_s']['vllm']:.0f}", f"{r['tokens_per_s']['vllm_speculative']:.0f}",
                  _ratio(r, "vllm_spec_speedup"), _ratio(r, "vllm_over_plain"), f"{r['vllm_accept_rate']:.3f}"]
    return cells


def _columns(result: dict[str, Any]) -> tuple[str, ...]:
    return COLUMNS + (VLLM_COLUMNS if "vllm_spec_speedup" in _results(result)[0] else ())


def rollout_markdown(result: dict[str, Any]) -> str:
    """One row per start: tokens/s of both generations, the speed-up with its interval, the acceptance."""
    columns = _columns(result)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in _results(result)]
    first = _results(result)[0]
    return "\n".join(lines) + (f"\n\n{first['rounds_timed']} interleaved rounds of {first['completions_per_round']} "
                               f"completions (≤{first['max_new_tokens']} tokens) per start; torch threads "
                               f"{first.get('torch_threads', '?')}"
                               + (f"; vLLM {first['vllm_version']} (eager, float32 on a CPU)" if "vllm_version" in first
                                  else "") + ".\n")


def rollout_table(result: dict[str, Any]) -> Table:
    """Tokens per second of plain and speculative generation, a row per start (the spec's, or each checkpoint);
    the caption holds the goal and the machine's load."""
    runs = _results(result)
    first = runs[0]
    table = Table(title=f"rollout generation, {first['rounds_timed']} interleaved rounds of "
                        f"{first['completions_per_round']} completions (≤{first['max_new_tokens']} tokens)")
    for column in _columns(result):
        table.add_column(column, justify="left" if column == "start" else "right")
    for r in runs:
        table.add_row(*_row(r, colour="green" if r["goal"]["met"] else "red"))
    table.caption = (f"goal spec_speedup ≥{first['goal']['min']} (green: met)  "
                     f"load {first['load_average_1min'][0]:.1f}→{runs[-1]['load_average_1min'][1]:.1f}")
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
