"""What one ``occctl eval`` is: the options given, the job they resolve to, and what a suite's scorer hands back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occctl.eval.pool import DEFAULT_TIMEOUT_S
from occctl.eval.results import BenchmarkResult, Generation
from occctl.eval.suites import BenchmarkProblem, Sampling, Suite
from occctl.eval.targets import Target


@dataclass(frozen=True)
class EvalOptions:
    suite: str = "math6"
    k: int | None = None
    limit: int | None = None
    graders: tuple[str, ...] = ()
    benchmarks: tuple[str, ...] = ()
    engine: str = "hf"
    engine_url: str | None = None
    speculative: bool = False  # hf engine: MTP-drafted self-speculative decoding (same distribution)
    tp_size: int = 1
    batch_size: int | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    data_dir: str | None = None
    from_hub: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    seed: int | None = None
    prompt: str = "auto"
    timeout_s: float = DEFAULT_TIMEOUT_S
    workers: int | None = None
    mlflow: bool = True
    out: Path | None = None  # results files go here instead of beside the cache
    force: bool = False  # overwrite results files already in ``out``


@dataclass(frozen=True)
class EvalJob:
    """Everything one ``occctl eval`` needs, resolved once from the target and the options."""

    target: Target
    suite: Suite
    options: EvalOptions
    graders: tuple[str, ...]
    benchmarks: tuple[str, ...]
    sampling: Sampling  # k, temperature, top-p, token budget, seed (the suite's, the run's, or the options')
    label: str  # the metric-name segment: suite, or suite_limit<N>
    problems: dict[str, list[BenchmarkProblem]]  # math suites: per benchmark; the tiny suite loads its task's own


@dataclass(frozen=True)
class Scores:
    """What a suite's scorer hands back: per grader, per benchmark, plus how the samples were made."""

    benchmarks: dict[str, dict[str, BenchmarkResult]]  # grader -> benchmark -> result
    directory: Path  # where the results go by default (beside the cache)
    generation: Generation | None = None
    run_summary: dict[str, Any] | None = None
    grade_timeout_s: float | None = None  # the grading pool's per-answer deadline (None: graded in-process)


def pick(value, default):
    """An option's value, or the default where it was not given (None)."""
    return default if value is None else value


def suite_label(suite: str, limit: int | None) -> str:
    """The metric-name segment: ``math6``, or ``math6_limit3`` for a subset (never mixed with full scores)."""
    return suite if limit is None else f"{suite}_limit{limit}"
