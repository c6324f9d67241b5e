"""`occctl run`: spec -> run directory -> backend -> summary.json (+ the MLflow mirror)."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from occctl.backend import Plan, get_backend
from occctl.errors import RunError, SpecError
from occctl.rundir import move_aside, run_dir, write_json_atomic, write_text_atomic
from occctl.spec import Spec, dump_spec, flatten, spec_to_dict
from occctl.tracking import Tracker, attach_tracker, reopen

SUMMARY = "summary.json"
TRACKING = "tracking.json"
METRICS = "metrics.jsonl"


def plan_run(spec: Spec) -> Plan:
    backend = get_backend(spec.backend)
    problems = backend.check(spec)
    if problems:
        raise SpecError("\n".join(f"{spec.name}: {p}" for p in problems))
    return backend.prepare(spec, run_dir(spec.name))


class MetricLog:
    """Per-step metrics: ``metrics.jsonl`` at once, MLflow when the backend commits a checkpoint (and at the end).

    So a run killed between checkpoints and resumed from the last one logs every step to MLflow exactly once,
    and ``metrics.jsonl`` is cut back to the checkpoint before the resumed steps are appended. The last step
    published is recorded in ``record`` (tracking.json): a process killed after a checkpoint was written but
    before its steps were published publishes them on resume.
    """

    def __init__(self, path: Path, tracker: Tracker, keep_until: int | None, record: Path) -> None:
        self.path, self.tracker, self.record = path, tracker, record
        self.history: list[dict[str, float]] = []
        self._pending: list[dict[str, float]] = []
        if keep_until is not None and path.is_file():  # resuming: keep the steps the checkpoint includes
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.history = [r for r in rows if r["step"] <= keep_until]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.history))
            published = self._record().get("published_step", 0)
            self._pending = [r for r in self.history if r["step"] > published]
        self._file = path.open("a", encoding="utf-8")

    def _record(self) -> dict[str, Any]:
        return json.loads(self.record.read_text()) if self.record.is_file() else {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        self._pending.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def commit(self, step: int | None = None) -> None:
        """Publish pending rows (up to ``step``) to MLflow."""
        ready = [r for r in self._pending if step is None or r["step"] <= step]
        self._pending = [r for r in self._pending if not (step is None or r["step"] <= step)]
        for row in ready:
            self.tracker.log_metrics(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
        if ready:
            write_json_atomic(self.record, {**self._record(), "published_step": max(r["step"] for r in ready)})

    def close(self) -> None:
        self._file.close()


def run_spec(spec: Spec, fresh: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run one spec. An existing run directory is resumed from its last checkpoint (same MLflow run); a
    finished run is not rerun; ``fresh`` moves the old directory aside and starts over."""
    console = console or Console(stderr=True)
    plan = plan_run(spec)
    directory = plan.run_dir
    resume_from: int | None = None
    if directory.exists() and fresh:
        console.print(f"moved the old run aside: {move_aside(directory)}")
    elif directory.exists():
        saved = (directory / "spec.yaml").read_text() if (directory / "spec.yaml").is_file() else None
        if saved is not None and saved != dump_spec(spec):
            raise SpecError(f"run {spec.name!r} exists at {directory} with a different spec",
                            hint="pass --fresh to move it aside and start over, or --set name=<new name>")
        if (directory / SUMMARY).is_file():
            console.print(f"run {spec.name!r} is finished ({directory / SUMMARY}); nothing to do "
                          "(--fresh starts it over)")
            return json.loads((directory / SUMMARY).read_text())
        resume_from = getattr(get_backend(spec.backend), "resume_step", lambda plan: 0)(plan)
        console.print(f"resuming run {spec.name!r} from step {resume_from}" if resume_from
                      else f"run {spec.name!r} has no checkpoint yet: starting it again in place")
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(directory / "spec.yaml", dump_spec(spec))
    write_json_atomic(directory / "native_config.json", plan.native_config)
    env = environment()
    write_json_atomic(directory / "env.json", env)
    tracker = _tracker(spec, env, directory / TRACKING)
    log = MetricLog(directory / METRICS, tracker, resume_from, directory / TRACKING)

    start = time.perf_counter()
    status = "FAILED"
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            result = get_backend(spec.backend).train(plan, log, progress)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        log.close()
        if status != "FINISHED":
            tracker.finish(status)
    log.commit()
    summary = build_summary(spec, log.history, result, time.perf_counter() - start, tracker.run_id)
    write_json_atomic(directory / SUMMARY, summary)
    tracker.log_metrics(spec.train.steps, {f"summary/{k}": v for k, v in summary.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and math.isfinite(v)})
    tracker.log_artifact(directory / SUMMARY)
    tracker.log_artifact(directory / "spec.yaml")
    tracker.finish("FINISHED")
    return summary


def _tracker(spec: Spec, env: dict[str, Any], record: Path) -> Tracker:
    """The run's MLflow run: the one recorded in the run directory when resuming, else a new one."""
    if record.is_file():
        run_id = json.loads(record.read_text()).get("mlflow_run_id")
        if run_id:
            tracker = attach_tracker(run_id, spec.tracking.uri)
            if tracker._client is not None:
                reopen(tracker)
                return tracker
    tags = {"occctl.regime": spec.mtp.regime if spec.mtp.enabled else "none", "occctl.seed": str(spec.train.seed),
            "occctl.backend": spec.backend, "occctl.algorithm": spec.algorithm.name,
            "occctl.git_sha": env["git_sha"] or "unknown"}
    if spec.group:
        tags["occctl.group"] = spec.group
        tags.update({f"occctl.cell.{key}": str(value) for key, value in spec.cell.items()})
    tracker = Tracker(spec.tracking.mlflow, spec.tracking.experiment, spec.tracking.uri, spec.name,
                      flatten(spec_to_dict(spec)), tags)
    write_json_atomic(record, {"mlflow_run_id": tracker.run_id})
    return tracker


def run_study(specs: list[Spec], fresh: bool = False, console: Console | None = None) -> list[dict[str, Any]]:
    """Every cell of a matrix, sequentially; finished cells are skipped, so an interrupted study resumes.

    An unfinished cell (its process died) resumes from its last checkpoint; ``fresh`` moves every cell aside.
    """
    console = console or Console(stderr=True)
    summaries: list[dict[str, Any]] = []
    total = len(specs)
    for i, spec in enumerate(specs, 1):
        directory = run_dir(spec.name)
        done = sum(1 for s in specs if (run_dir(s.name) / SUMMARY).is_file())
        if (directory / SUMMARY).is_file() and not fresh:
            summaries.append(json.loads((directory / SUMMARY).read_text()))
            continue
        console.rule(f"cell {i}/{total}: {spec.name}  ({done} done, {total - done} left)")
        summaries.append(run_spec(spec, fresh=fresh, console=console))
    console.rule(f"study {specs[0].group or specs[0].name}: {total}/{total} cells done")
    return summaries


def _series(history: list[dict[str, float]], key: str) -> list[float]:
    return [row[key] for row in history if key in row and math.isfinite(row[key])]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def build_summary(spec: Spec, history: list[dict[str, float]], result, wall_s: float,
                  mlflow_run_id: str | None) -> dict[str, Any]:
    from occctl.fidelity import fidelity  # scipy: only when a summary is built, not for validate / --dry-run

    rewards, lambdas = _series(history, "reward"), _series(history, "occ/lambda")
    before, after = result.heldout_before, result.heldout_after
    steps = max((int(r["step"]) for r in history), default=0)
    if steps < spec.train.steps:
        raise RunError(f"run {spec.name!r} stopped after {steps} of {spec.train.steps} steps")
    return {
        "name": spec.name,
        "regime": spec.mtp.regime if spec.mtp.enabled else "none",
        "algorithm": spec.algorithm.name,
        "seed": spec.train.seed,
        "steps": steps,
        "wall_s": round(wall_s, 2),
        "reward_first": rewards[0] if rewards else float("nan"),
        "reward_last": rewards[-1] if rewards else float("nan"),
        "reward_mean": _mean(rewards),
        "heldout_acc_before": before.get("avg_at_k", float("nan")),
        "heldout_acc_after": after.get("avg_at_k", float("nan")),
        "heldout_greedy_before": before.get("greedy", float("nan")),
        "heldout_greedy_after": after.get("greedy", float("nan")),
        "mtp_acceptance_before": before.get("mtp_acceptance", float("nan")),
        "mtp_acceptance_after": after.get("mtp_acceptance", float("nan")),
        "heldout_k": spec.eval.samples_per_problem,
        "lambda_mean": _mean(lambdas),
        "mtp_acc_last": (_series(history, "mtp/acc") or [float("nan")])[-1],
        "checkpoint": str(result.checkpoint),
        "warm_start": str(result.warm_start) if result.warm_start else None,
        "mlflow_run_id": mlflow_run_id,
        **fidelity(history, spec.train.optimizer_steps_per_generation),
    }


def environment() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    return {"git_sha": sha, "python": platform.python_version(), "platform": platform.platform(),
            "packages": {p: version(p) for p in ("occctl", "torch", "transformers", "trl", "mlflow", "verl")}}
