"""`occctl run`: spec -> run folder -> backend -> summary.json (+ the MLflow mirror).

``summary.json`` and ``metrics.jsonl`` are strict JSON (``occctl.jsonio``): a non-finite value (a mean of no
values, a NaN loss) is written as ``null``; readers take ``null`` as missing."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from rich.console import Console

from occctl.backend import Plan, TrainResult, get_backend, plan_run  # noqa: F401 - plan_run: tests patch it here
from occctl.checkpoint_marker import mark_complete
from occctl.environment import environment
from occctl.errors import RunError, SpecError
from occctl.jsonio import dumps
from occctl.progress import progress_bar
from occctl.publication import open_tracker, publish_rows, publish_summary, publish_unpublished
from occctl.rundir import RunDir, RunFileError, WallClock, write_json_atomic, write_text_atomic
from occctl.runlock import hold_run
from occctl.spec import Spec, dump_spec
from occctl.tracking import Tracker, resolve_store


class MetricLog:
    """The runner's MetricSink: ``metrics.jsonl`` at once, MLflow when the backend commits a checkpoint (and at
    the end).

    So a run killed between checkpoints and resumed from the last one logs every step to MLflow exactly once,
    and ``metrics.jsonl`` is cut back to the checkpoint before the resumed steps are appended. The last step
    published is recorded in the run's tracking state: a process killed after a checkpoint was written but
    before its steps were published publishes them on resume.
    """

    def __init__(self, run: RunDir, tracker: Tracker, keep_until: int | None) -> None:
        self.run, self.tracker = run, tracker
        self.history: list[dict[str, float]] = []
        self._pending: list[dict[str, float]] = []
        if keep_until is not None and run.metrics_file.is_file():  # resuming: keep the steps the checkpoint has
            self.history = run.read_metrics(until=keep_until)
            write_text_atomic(run.metrics_file, "".join(dumps(r) + "\n" for r in self.history))
            published = run.tracking_state().published_step
            self._pending = [r for r in self.history if r["step"] > published]
        self._file = run.metrics_file.open("a", encoding="utf-8")
        self.heldout: Any = None  # the run's occctl.pipeline.HeldoutEval while the pipeline runs
        self.clock = WallClock(run)  # wall_s over every segment of a resumed run

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        self._pending.append(row)
        self._file.write(dumps(row) + "\n")
        self._file.flush()

    def commit(self, step: int | None = None) -> None:
        """Publish pending rows (up to ``step``) to MLflow; nothing when the tracker writes nothing (tracking off,
        or a worker of a parallel study, whose parent publishes from the run folder)."""
        if step is not None:
            self.clock.checkpoint()
        ready = [r for r in self._pending if step is None or r["step"] <= step]
        self._pending = [r for r in self._pending if not (step is None or r["step"] <= step)]
        publish_rows(self.run, self.tracker, ready)

    def evaluate(self, step: int, loaded: Any) -> None:
        """The held-out eval of the model in memory at ``step`` (``eval.every_steps``), logged as ``eval/<suite>/*``."""
        if self.heldout is not None:
            self(step, self.heldout.metrics(self.heldout(loaded)))

    def close(self) -> None:
        self._file.close()


def run_spec(spec: Spec, fresh: bool = False, console: Console | None = None, publish: bool = True) -> dict[str, Any]:
    """Run one spec. An existing run folder is resumed from its last checkpoint (same MLflow run); a finished
    run is not rerun; ``fresh`` moves the old folder aside and starts over. ``publish=False`` (a worker of a
    parallel study) writes nothing to MLflow: the parent opened the run and publishes the folder (``publish_run``).
    One process at a time writes a run folder (``occctl.runlock``: a second one exits 2 naming the first)."""
    console = console or Console(stderr=True)
    plan = plan_run(spec)  # a bad spec (or tracking.uri) is refused before the folder is touched
    if spec.tracking.mlflow:
        resolve_store(spec.tracking.uri)
    with hold_run(plan.run_dir, fresh, console):  # fresh: the old folder is moved aside under its lock
        return _run_locked(spec, plan, console, publish)


def _run_locked(spec: Spec, plan: Plan, console: Console, publish: bool) -> dict[str, Any]:
    backend = get_backend(spec.backend)
    run = plan.run_dir
    resume_from: int | None = None
    if run.exists():
        if spec_changed(spec):
            raise SpecError(f"run {spec.name!r} exists at {run} with a different spec",
                            hint="pass --fresh to move it aside and start over, or --set name=<new name>")
        if run.is_finished():
            console.print(f"run {spec.name!r} is finished ({run.summary_file}); nothing to do "
                          "(--fresh starts it over)")
            if publish:
                publish_unpublished(spec)  # a process killed between summary.json and MLflow
            return run.read_summary()
        resume_from = backend.resume_step(plan)
        if resume_from or run.metrics_file.is_file():  # else: a parallel study's parent prepared the folder
            console.print(f"resuming run {spec.name!r} from step {resume_from}" if resume_from
                          else f"run {spec.name!r} has no checkpoint yet: starting it again in place")
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_spec(spec)
    write_json_atomic(run.native_config_file, plan.native_config)
    env = environment()
    write_json_atomic(run.env_file, env)
    tracker = open_tracker(spec, env, run) if publish else Tracker.recorded(resolve_store(spec.tracking.uri),
                                                                        run.tracking_state().mlflow_run_id)
    plan = dataclasses.replace(plan, mlflow_run_id=tracker.run_id)
    log = MetricLog(run, tracker, resume_from)

    status = "FAILED"
    try:
        with progress_bar(console) as progress:
            plan, result, heldout = run_pipeline(backend, plan, log, progress)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        log.close()
        if status != "FINISHED":
            tracker.finish(status)
    log.commit()
    mark_complete(result.checkpoint)  # `occctl eval` refuses a checkpoints/final without it
    summary = build_summary(spec, log.history, result, log.clock.total(), tracker.run_id, heldout, plan.warm_start)
    run.write_summary(summary)
    publish_summary(spec, run, tracker, summary)
    return summary


def run_pipeline(backend: Any, plan: Plan, log: "MetricLog", progress: Any) -> tuple[Plan, TrainResult,
                                                                                  dict[str, Any]]:
    """The run's pipeline, the same for every backend: warm-up, the held-out eval of the start, the backend's
    training (with the periodic eval through ``log.evaluate``), the check of its export (``occctl.pipeline.
    check_export``: its files against the contract, then the one load the held-out eval of the export needs; a
    RunError naming the folder, and no summary.json, when it is not what ``occctl eval`` reads), and that eval.
    -> (the plan trained, the backend's result, its checkpoint a Path; the held-out summary entries)"""
    from occctl.pipeline import HeldoutEval, heldout_summary, load_export, start_model, warm_start

    spec = plan.spec
    plan = dataclasses.replace(plan, warm_start=warm_start(spec, progress))
    heldout = log.heldout = HeldoutEval(spec)
    try:
        before = heldout(start_model(spec, plan.warm_start))
        result = backend.train(plan, log, progress)
        loaded = load_export(result.checkpoint, spec, plan.run_dir.final_checkpoint)  # checked, then loaded once
        result = dataclasses.replace(result, checkpoint=Path(result.checkpoint))
        after = heldout(loaded)
        log(spec.train.steps, heldout.metrics(after))
    finally:
        log.heldout = None
        heldout.close()
    return plan, result, heldout_summary(spec, before, after)


def spec_changed(spec: Spec) -> bool:
    """Whether the run folder holds a run of a different spec. A ``spec.yaml`` written by an older occctl lacks the
    keys added since; it is the same spec when, re-validated with today's defaults for those keys, it equals ``spec``
    (so a study can be resumed across a schema change; ``env.json`` records the version each run started with)."""
    run = RunDir.named(spec.name)
    saved = run.spec_text()
    if saved is None or saved == dump_spec(spec):
        return False
    try:
        return run.read_spec() != spec
    except RunFileError:
        return True


def _series(history: list[dict[str, float]], key: str) -> list[float]:
    """The finite values of ``key`` (NaN, and a None a backend passed, are missing)."""
    return [row[key] for row in history if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


ROLLOUT_KEYS = ("rollout/tokens_per_s", "spec/accept_rate", "spec/mean_accept_len")


def build_summary(spec: Spec, history: list[dict[str, float]], result: TrainResult, wall_s: float,
                  mlflow_run_id: str | None, heldout: dict[str, Any] | None = None,
                  warm_start: Any = None) -> dict[str, Any]:
    """``summary.json``: the trajectory's numbers, the backend's own entries, then the runner's held-out ones
    (``occctl.pipeline.heldout_summary``: they win over a backend's entry of the same name)."""
    from occctl.proxy_fidelity import fidelity  # scipy: only when a summary is built, not for validate / --dry-run

    rewards, lambdas = _series(history, "reward"), _series(history, "occ/lambda")
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
        "train_loss": _mean(_series(history, "loss")),  # every step's loss, across resumes (TRL's covers its own)
        **result.summary,
        **(heldout or {}),
        "lambda_mean": _mean(lambdas),
        "mtp_acc_last": (_series(history, "mtp/acc") or [float("nan")])[-1],
        **{key.replace("/", "_"): _mean(_series(history, key)) for key in ROLLOUT_KEYS
           if _series(history, key)},  # means over the generations
        "checkpoint": str(result.checkpoint),
        "warm_start": str(warm_start) if warm_start else None,
        "mlflow_run_id": mlflow_run_id,
        **fidelity(history, spec.train.optimizer_steps_per_generation),
    }
