"""Eval results: typed, written as JSON + markdown (results/ is the truth), mirrored to MLflow.

Metric names are ``eval/<suite>[_limit<N>]/<benchmark>/<metric>/<grader>``, e.g.
``eval/math6/aime24/avg_at_32/math_verify_v1``: the grader is part of the name so that scores from different
graders never share a column, and a ``--limit`` subset never shares one with the full suite. They go onto the
training run when the checkpoint belongs to one (at its last step), else onto one ``occctl-eval`` run per target.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from occctl.eval.graders import grader_slug
from occctl.eval.suites import Sampling, Suite
from occctl.jsonio import dumps
from occctl.report.eval_tables import results_markdown
from occctl.eval.targets import EVAL_EXPERIMENT, Target
from occctl.rundir import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class MtpAcceptance:
    """The MTP head's greedy draft acceptance on the model's own continuations."""

    rate: float | None  # None: no tokens to measure on
    tokens: int | None = None  # how many tokens it was measured on (None: not recorded)


@dataclass(frozen=True)
class GradingCounts:
    """Answers graded in the pool: deadline overruns and grader errors (both count as incorrect), and the worker
    processes replaced meanwhile (one per overrun or crash)."""

    timeouts: int
    errors: int
    worker_replacements: int


@dataclass(frozen=True)
class BenchmarkResult:
    n_problems: int
    k: int
    avg_at_k: float
    pass_at_k: float
    greedy: float | None = None  # greedy accuracy (the tiny suite)
    grading: GradingCounts | None = None  # None: graded in-process (the tiny suite's exact match)
    truncated_by_length: int | None = None  # samples that hit max_new_tokens (None: not recorded)
    mtp: MtpAcceptance | None = None  # None: the checkpoint has no MTP head
    rollout: dict[str, float] | None = None  # tokens_per_s (+ spec_accept_rate, spec_mean_accept_len); None: untimed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_problems": self.n_problems, "k": self.k, "avg_at_k": self.avg_at_k,
                               "pass_at_k": self.pass_at_k}
        if self.greedy is not None:
            out["greedy"] = self.greedy
        if self.grading is not None:
            out.update(timeouts=self.grading.timeouts, errors=self.grading.errors,
                       worker_replacements=self.grading.worker_replacements)
        if self.truncated_by_length is not None:
            out["truncated_by_length"] = self.truncated_by_length
        if self.mtp is not None:
            out["mtp_acceptance"] = self.mtp.rate
            if self.mtp.tokens is not None:
                out["mtp_tokens"] = self.mtp.tokens
        if self.rollout is not None:
            out.update(self.rollout)
        return out


@dataclass(frozen=True)
class Generation:
    """How the graded samples were generated (math suites): engines, effective lengths, prompt, cache folder."""

    engines: list[str]
    effective: dict[str, Any]  # max_new_tokens, prompt_room, prompts_truncated, context_length
    prompt: dict[str, Any]  # mode, instruction
    cache: Path


@dataclass
class EvalResult:
    """One grader's scores of one target on one suite (benchmarks in the suite's order)."""

    suite: Suite
    label: str  # the metric-name segment: suite, or suite_limit<N>
    grader: str
    target: Target
    sampling: Sampling
    limit: int | None
    benchmarks: dict[str, BenchmarkResult]
    generation: Generation | None = None
    run_summary: dict[str, Any] | None = None  # the tiny suite: does it reproduce the run's own held-out eval?
    grade_timeout_s: float | None = None  # the per-answer grading deadline (None: graded in-process)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    files: list[Path] = field(default_factory=list)
    mlflow_run_id: str | None = None

    @property
    def average(self) -> dict[str, float] | None:
        """The paper's suite number, unweighted over benchmarks (AIME's 30 count as much as MATH's 500); only
        for the suite's own benchmark list."""
        if list(self.benchmarks) != list(self.suite.benchmarks):
            return None
        scores = list(self.benchmarks.values())
        return {"avg_at_k": suite_mean([b.avg_at_k for b in scores]),
                "pass_at_k": suite_mean([b.pass_at_k for b in scores])}

    @property
    def mtp_acceptance(self) -> float | None:
        """Over all benchmarks, weighted by tokens (a single benchmark's own rate when tokens are not counted)."""
        measured = [b.mtp for b in self.benchmarks.values() if b.mtp is not None]
        if not measured:
            return None
        if len(self.benchmarks) == 1 and measured[0].tokens is None:
            return measured[0].rate
        tokens = sum(m.tokens or 0 for m in measured)
        hits = sum((m.rate or 0) * (m.tokens or 0) for m in measured)
        return hits / tokens if tokens else None

    @property
    def metrics(self) -> dict[str, float | None]:
        """The MLflow metrics; suite-level ones only for suites of several benchmarks (a one-benchmark suite's
        mean is its benchmark, logged once)."""
        k, label, slug = self.sampling.k, self.label, grader_slug(self.grader)
        out: dict[str, float | None] = {}
        for name, b in self.benchmarks.items():
            out[f"eval/{label}/{name}/avg_at_{k}/{slug}"] = b.avg_at_k
            out[f"eval/{label}/{name}/pass_at_{k}/{slug}"] = b.pass_at_k
            if b.greedy is not None:
                out[f"eval/{label}/{name}/greedy/{slug}"] = b.greedy
            if b.mtp is not None and b.mtp.rate is not None:
                out[f"eval/{label}/{name}/mtp_acceptance"] = b.mtp.rate
            for key in ("tokens_per_s", "spec_accept_rate", "spec_mean_accept_len", "occctl_spec_accept_rate"):
                if b.rollout is not None and key in b.rollout:
                    out[f"eval/{label}/{name}/{key}"] = b.rollout[key]
            if b.grading is not None:
                out[f"eval/{label}/{name}/grade_timeouts/{slug}"] = b.grading.timeouts
                out[f"eval/{label}/{name}/worker_replacements/{slug}"] = b.grading.worker_replacements
        if len(self.suite.benchmarks) > 1:
            if self.average is not None:
                out[f"eval/{label}/avg_at_{k}/{slug}"] = self.average["avg_at_k"]
                out[f"eval/{label}/pass_at_{k}/{slug}"] = self.average["pass_at_k"]
            if self.mtp_acceptance is not None:
                out[f"eval/{label}/mtp_acceptance"] = self.mtp_acceptance
        return out

    def to_json(self) -> dict[str, Any]:
        head: dict[str, Any] = {"suite": self.suite.name, "suite_label": self.label, "grader": self.grader,
                                "model": self.target.model, "run": self.target.run_name}
        if self.generation is not None:
            head["engines"] = self.generation.engines
        head["sampling"] = {"k": self.sampling.k, **self.sampling.key_fields()}
        if self.generation is not None:
            head.update(effective=self.generation.effective, prompt=self.generation.prompt)
        head["limit"] = self.limit
        if self.grade_timeout_s is not None:
            head["grade_timeout_s"] = self.grade_timeout_s
        head.update(benchmarks={n: b.to_json() for n, b in self.benchmarks.items()},
                    average=self.average, mtp_acceptance=self.mtp_acceptance, metrics=self.metrics)
        if self.generation is not None:
            head["cache"] = str(self.generation.cache)
        head["created"] = self.created
        if self.run_summary is not None:
            head["run_summary"] = self.run_summary
        return {**head, "files": [str(f) for f in self.files], "mlflow_run_id": self.mlflow_run_id,
                "versions": grader_versions()}


def suite_mean(values: list[float]) -> float:
    """The unweighted mean over benchmarks."""
    return sum(values) / len(values)


def results_stem(grader: str, k: int, benchmarks: list[str], suite: Suite, limit: int | None) -> str:
    """``results_<grader>_k<k>[_<benchmarks>][_limit<N>]``: the file name of one grader's results."""
    stem = f"results_{grader_slug(grader)}_k{k}"
    if list(benchmarks) != list(suite.benchmarks):
        stem += "_" + "+".join(benchmarks)
    return stem + (f"_limit{limit}" if limit is not None else "")


def grader_versions() -> dict[str, str | None]:
    """The libraries a grader's verdicts depend on (a grader key is only stable with them)."""
    from occctl.environment import package_versions

    return package_versions(("math-verify", "latex2sympy2_extended", "sympy", "transformers", "torch"))


def publish(results: list[EvalResult], out_dir: Path, artifact_dir: str, mlflow: bool,
            console: Console) -> list[EvalResult]:
    """Write each result as JSON + markdown into ``out_dir``; mirror metrics + files to MLflow (artifacts under
    ``artifact_dir``)."""
    first = results[0]
    tracker, owned = _open_tracker(first.target, mlflow)
    active = tracker is not None and tracker.active
    files: list[Path] = []
    for result in results:
        stem = out_dir / results_stem(result.grader, result.sampling.k, list(result.benchmarks), result.suite,
                                      result.limit)
        result.files = [stem.with_suffix(".json"), stem.with_suffix(".md")]
        result.mlflow_run_id = tracker.run_id if active else None
        record = result.to_json()
        write_json_atomic(result.files[0], record)
        write_text_atomic(result.files[1], results_markdown(record))
        files += result.files
    if not active:
        if tracker is not None:
            console.print("MLflow: not logged (see the warning above); results/ has everything", highlight=False)
        return results
    metrics: dict[str, float] = {}
    for result in results:
        metrics.update({k: v for k, v in result.metrics.items() if v is not None})
    tracker.log_metrics(first.target.step, metrics)
    cache = str(first.generation.cache) if first.generation is not None else None
    tracker.set_tags({f"occctl.eval.{first.label}": dumps(
        {"graders": [x.grader for x in results], "sampling": {"k": first.sampling.k, **first.sampling.key_fields()},
         "cache": cache})})
    tracker.log_artifacts(files, under=artifact_dir)
    if owned:
        tracker.finish("FINISHED")
    logged = tracker.active
    console.print(f"MLflow: {'logged to run ' + str(tracker.run_id) if logged else 'not logged'} ({tracker.uri})",
                  highlight=False, markup=False)
    return results


def _open_tracker(target: Target, mlflow: bool):
    """(tracker, owned): the run's own MLflow run, else this target's eval run (created once, then reused)."""
    from occctl.tracking import Tracker, resolve_store

    if not mlflow or (target.spec is not None and not target.spec.tracking.mlflow):
        return None, False
    if target.mlflow_run_id:
        return Tracker.attach(resolve_store(target.tracking_uri), target.mlflow_run_id), False
    record = target.base_dir / "mlflow_eval_run.json"
    store = resolve_store()
    uri = store.uri
    saved = json.loads(record.read_text()) if record.is_file() else {}
    if saved.get("uri") == uri and saved.get("run_id"):
        return Tracker.attach(store, saved["run_id"]), True
    tracker = Tracker.start(store, EVAL_EXPERIMENT, f"eval-{target.label}", {"model": target.model},
                            {"occctl.kind": "eval", "occctl.model": target.model})
    if tracker.run_id:
        write_json_atomic(record, {"uri": uri, "run_id": tracker.run_id})
    return tracker, True
