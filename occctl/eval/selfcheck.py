"""``occctl eval selfcheck``: every reference answer, written as a boxed model response, graded against itself.

A grader that cannot recognise the gold answer as equal to itself will mark correct model answers wrong on that
problem; the acceptance bar is >= 99% per benchmark. Runs in the grading pool like a real eval, and is timed.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from occctl.errors import RunError, SpecError
from occctl.eval.graders import GRADERS, boxed_response, resolve_grader
from occctl.eval.pool import GradingPool, Job
from occctl.eval.suites import get_suite, load_benchmarks
from occctl.progress import progress_bar

SELFCHECK_MIN_AGREEMENT = 0.99


def selfcheck(suite_name: str, graders: list[str], data_dir: str | None, from_hub: bool, timeout_s: float,
              workers: int | None, console: Console) -> dict[str, Any]:
    """Grade every reference answer (as a boxed response) against itself, per grader; times each grader."""
    suite = get_suite(suite_name)
    if suite.kind != "math":
        raise SpecError(f"selfcheck grades reference answers; suite {suite.name!r} has none (try --suite math6)")
    keys = [resolve_grader(g) for g in (graders or [k for k in GRADERS if not k.startswith("deepscaler_think@")])]
    names = list(suite.all_benchmarks)
    problems = load_benchmarks(suite, names, data_dir, None, from_hub)
    n = sum(len(v) for v in problems.values())
    out: dict[str, Any] = {"suite": suite.name, "answers": n, "graders": {}}
    start = time.perf_counter()
    with GradingPool(workers, timeout_s) as pool:
        out["pool_start_s"] = time.perf_counter() - start
        out["workers"] = pool.processes
        for grader in keys:
            jobs = [(name, p, Job(grader, boxed_response(p.answers[0]), p.answers))
                    for name in names for p in problems[name]]
            t0 = time.perf_counter()
            with progress_bar(console) as progress:
                task = progress.add_task(f"selfcheck {grader}", total=len(jobs))
                outcomes = pool.grade([j for _, _, j in jobs], on_done=lambda *_: progress.advance(task))
            seconds = time.perf_counter() - t0
            per: dict[str, Any] = {}
            for name in names:
                got = [(p, o) for (b, p, _), o in zip(jobs, outcomes) if b == name]
                agree = sum(o.correct for _, o in got)
                per[name] = {"answers": len(got), "agree": agree, "agreement": agree / len(got),
                             "timeouts": sum(o.status == "timeout" for _, o in got),
                             "worker_replacements": sum(o.replaced for _, o in got),
                             "disagreeing": [p.id for p, o in got if not o.correct][:20]}
            out["graders"][grader] = {"seconds": seconds, "benchmarks": per}
    out["total_s"] = time.perf_counter() - start
    low = [f"{g}/{b} {v['agreement']:.1%}" for g, r in out["graders"].items() for b, v in r["benchmarks"].items()
           if v["agreement"] < SELFCHECK_MIN_AGREEMENT]
    out["ok"] = not low
    out["below_threshold"] = low
    return out


def require_selfcheck_ok(result: dict[str, Any]) -> None:
    if not result["ok"]:
        raise RunError(f"selfcheck: gold self-agreement below {SELFCHECK_MIN_AGREEMENT:.0%}: "
                       + ", ".join(result["below_threshold"]))
