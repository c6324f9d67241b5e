"""Eval results: JSON + markdown beside the cache (results/ is the truth), mirrored to MLflow.

Metric names are ``eval/<suite>[_limit<N>]/<benchmark>/<metric>/<grader>``, e.g.
``eval/math6/aime24/avg_at_32/math_verify_v1``: the grader is part of the name so that scores from different
graders never share a column, and a ``--limit`` subset never shares one with the full suite. They go onto the
training run when the checkpoint belongs to one (at its last step), else onto one ``occctl-eval`` run per target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from occctl.eval.graders import grader_slug
from occctl.eval.suites import Suite
from occctl.eval.tables import results_markdown
from occctl.eval.targets import EVAL_EXPERIMENT, Target
from occctl.rundir import write_json_atomic, write_text_atomic


def _results_stem(result: dict[str, Any], suite: Suite) -> str:
    names = list(result["benchmarks"])
    stem = f"results_{grader_slug(result['grader'])}_k{result['sampling']['k']}"
    if names != list(suite.benchmarks):
        stem += "_" + "+".join(names)
    return stem + (f"_limit{result['limit']}" if result["limit"] is not None else "")


def grader_versions() -> dict[str, str | None]:
    """The libraries a grader's verdicts depend on (a grader key is only stable with them)."""
    from occctl.environment import package_versions

    return package_versions(("math-verify", "latex2sympy2_extended", "sympy", "transformers", "torch"))


def publish(results: list[dict[str, Any]], target: Target, suite: Suite, mlflow: bool, directory: Path,
            console: Console) -> list[dict[str, Any]]:
    """Write results JSON + markdown beside the cache and mirror metrics + files to MLflow."""
    tracker, owned = _open_tracker(target, mlflow)
    active = tracker is not None and tracker.active
    files: list[Path] = []
    for result in results:
        stem = directory / _results_stem(result, suite)
        result["files"] = [str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))]
        result["mlflow_run_id"] = tracker.run_id if active else None
        result["versions"] = grader_versions()
        write_json_atomic(stem.with_suffix(".json"), result)
        write_text_atomic(stem.with_suffix(".md"), results_markdown(result))
        files += [stem.with_suffix(".json"), stem.with_suffix(".md")]
    if not active:
        if tracker is not None:
            console.print("MLflow: not logged (see the warning above); results/ has everything", highlight=False)
        return results
    metrics: dict[str, float] = {}
    for result in results:
        metrics.update({k: v for k, v in result["metrics"].items() if v is not None})
    tracker.log_metrics(target.step, metrics)
    r = results[0]
    tracker.set_tags({f"occctl.eval.{r['suite_label']}": json.dumps(
        {"graders": [x["grader"] for x in results], "sampling": r["sampling"], "cache": r.get("cache")})})
    tracker.log_artifacts(files, under=directory.relative_to(target.base_dir).as_posix())
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
