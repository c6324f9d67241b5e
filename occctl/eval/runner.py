"""checkpoint -> samples -> grades -> results: ``occctl eval``.

One path for every suite: ``plan_job`` checks the options and resolves the target and them once into an ``EvalJob``
(``job.py``) with the planner of the suite's kind; that kind's scorer turns it into per-benchmark results for each
grader; ``EvalResult`` assembles them (scores, suite mean, MLflow metric names) and ``publish`` writes JSON +
markdown and mirrors them to MLflow. The kinds (``KINDS``, the only place a suite's kind is looked at):

* ``math`` (``math_scorer.py``): prompts, generations cached and resumed, MTP draft acceptance, grades in the pool.
* ``task`` (``task_scorer.py``): the run's own held-out eval, graded by the task's reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.console import Console

from occctl.errors import SpecError, did_you_mean
from occctl.eval.job import EvalJob, EvalOptions, Scores, suite_label
from occctl.eval.math_scorer import plan_lengths, plan_math, score, score_math
from occctl.eval.results import EvalResult, publish, results_stem, suite_mean
from occctl.eval.suites import Suite, get_suite
from occctl.eval.targets import Target
from occctl.eval.task_scorer import plan_task, score_task

__all__ = ["EvalJob", "EvalOptions", "evaluate", "plan_job", "plan_lengths", "score", "suite_label", "suite_mean"]


@dataclass(frozen=True)
class SuiteKind:
    """How a kind of suite is planned (options -> job) and scored (job -> per-benchmark results)."""

    plan: Callable[[Target, Suite, EvalOptions], EvalJob]
    score: Callable[[EvalJob, Console], Scores]


KINDS: dict[str, SuiteKind] = {"math": SuiteKind(plan_math, score_math), "task": SuiteKind(plan_task, score_task)}


def evaluate(target: Target, opts: EvalOptions, console: Console) -> list[EvalResult]:
    """Evaluate ``target`` on ``opts.suite``; one result per grader (also written under the target)."""
    job = plan_job(target, opts)
    scores = KINDS[job.suite.kind].score(job, console)
    results = [EvalResult(suite=job.suite, label=job.label, grader=g, target=target, sampling=job.sampling,
                          limit=opts.limit, benchmarks=scores.benchmarks[g], generation=scores.generation,
                          run_summary=scores.run_summary, grade_timeout_s=scores.grade_timeout_s)
               for g in job.graders]
    warn_grading(results, opts.timeout_s, console)
    artifacts = scores.directory.relative_to(target.base_dir).as_posix()
    if opts.out is not None:
        opts.out.mkdir(parents=True, exist_ok=True)
    return publish(results, opts.out or scores.directory, artifacts, opts.mlflow, console)



def plan_job(target: Target, opts: EvalOptions) -> EvalJob:
    """Check the options and resolve suite, graders, benchmarks, sampling and problems (bad input: SpecError)."""
    _check_numbers(opts)
    suite = get_suite(opts.suite)
    job = KINDS[suite.kind].plan(target, suite, opts)
    _check_out(job)
    return job


def _check_out(job: EvalJob) -> None:
    """``--out`` may be anywhere, but results files already there are only replaced with ``--force``."""
    out = job.options.out
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out}: not a directory")
    stems = [results_stem(g, job.sampling.k, list(job.benchmarks), job.suite, job.options.limit) for g in job.graders]
    present = [out / f"{stem}{ext}" for stem in stems for ext in (".json", ".md") if (out / f"{stem}{ext}").exists()]
    if present and not job.options.force:
        raise SpecError(f"--out {out}: {present[0].name} exists (pass --force to overwrite)")


def _check_numbers(opts: EvalOptions) -> None:
    for flag, value, ok, rule in (("-k", opts.k, lambda v: v >= 1, ">= 1"),
                                  ("--limit", opts.limit, lambda v: v >= 1, ">= 1"),
                                  ("--temperature", opts.temperature, lambda v: v >= 0, ">= 0 (0 = greedy)"),
                                  ("--top-p", opts.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("--max-new-tokens", opts.max_new_tokens, lambda v: v >= 1, ">= 1"),
                                  ("--grade-timeout", opts.timeout_s, lambda v: v > 0, "> 0"),
                                  ("--workers", opts.workers, lambda v: v >= 1, ">= 1"),
                                  ("--batch-size", opts.batch_size, lambda v: v >= 1, ">= 1"),
                                  ("--tp-size", opts.tp_size, lambda v: v >= 1, ">= 1")):
        if value is not None and not ok(value):
            raise SpecError(f"{flag} must be {rule}; got {value}")
    if opts.dtype not in EVAL_DTYPES:
        raise SpecError(f"--dtype {opts.dtype!r}{did_you_mean(opts.dtype, EVAL_DTYPES)}: choose one of "
                        f"{', '.join(EVAL_DTYPES)}")


EVAL_DTYPES = ("auto", "float32", "bfloat16", "float16")  # occctl.models.DTYPES and auto



def warn_grading(results: list[EvalResult], timeout_s: float, console: Console) -> None:
    """One warning per grader whose answers timed out or needed a fresh worker: they count as incorrect."""
    for result in results:
        counts = {n: b.grading for n, b in result.benchmarks.items() if b.grading is not None}
        timeouts = {n: c.timeouts for n, c in counts.items() if c.timeouts}
        replaced = sum(c.worker_replacements for c in counts.values())
        if timeouts or replaced:
            where = ", ".join(f"{n} {t}" for n, t in timeouts.items()) or "none"
            console.print(f"[yellow]warning:[/] {result.grader}: {sum(timeouts.values())} answers hit the "
                          f"{timeout_s:g} s grading deadline and count as incorrect ({where}); "
                          f"{replaced} grading workers replaced. Rerun with a larger --grade-timeout to regrade "
                          "them (other grades are cached)", highlight=False)

