"""`occctl run`: spec -> run folder -> backend -> summary.json (+ the MLflow mirror)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from rich.console import Console

from occctl.backend import Plan, TrainResult, get_backend
from occctl.checkpoint_marker import mark_complete
from occctl.environment import environment
from occctl.errors import OccError, RunError, SpecError
from occctl.report.progress import progress_bar
from occctl.rundir import RunDir, RunFileError, TrackingState, WallClock, write_json_atomic, write_text_atomic
from occctl.runlock import hold_run
from occctl.spec import LauncherSpec, Spec, dump_spec, flatten, spec_to_dict
from occctl.tracking import Tracker, resolve_store


def plan_run(spec: Spec) -> Plan:
    backend = get_backend(spec.backend)
    problems = backend.check(spec)
    if problems:
        raise SpecError("\n".join(f"{spec.name}: {p}" for p in problems))
    return backend.prepare(spec, RunDir.named(spec.name))


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
            write_text_atomic(run.metrics_file, "".join(json.dumps(r) + "\n" for r in self.history))
            published = run.tracking_state().published_step
            self._pending = [r for r in self.history if r["step"] > published]
        self._file = run.metrics_file.open("a", encoding="utf-8")
        self.heldout: Any = None  # the run's occctl.pipeline.HeldoutEval while the pipeline runs
        self.clock = WallClock(run)  # wall_s over every segment of a resumed run

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.history.append(row)
        self._pending.append(row)
        self._file.write(json.dumps(row) + "\n")
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
        """The held-out eval of the model in memory at ``step`` (``eval.every``), logged as ``eval/<suite>/*``."""
        if self.heldout is not None:
            self(step, self.heldout.metrics(self.heldout(loaded)))

    def close(self) -> None:
        self._file.close()


def publish_rows(run: RunDir, tracker: Tracker, rows: list[dict[str, float]]) -> None:
    """Log metric rows to MLflow and record the last step published in the run folder."""
    if not (rows and tracker.active):
        return
    tracker.log_rows(rows)
    state = run.tracking_state()
    run.write_tracking_state(dataclasses.replace(state, published_step=max(r["step"] for r in rows)))


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
        if _spec_changed(spec):
            raise SpecError(f"run {spec.name!r} exists at {run} with a different spec",
                            hint="pass --fresh to move it aside and start over, or --set name=<new name>")
        if run.is_finished():
            console.print(f"run {spec.name!r} is finished ({run.summary_file}); nothing to do "
                          "(--fresh starts it over)")
            if publish:
                from occctl.launchers.study import publish_unpublished

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
    tracker = _tracker(spec, env, run) if publish else Tracker.recorded(resolve_store(spec.tracking.uri),
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
    _publish_summary(spec, run, tracker, summary)
    return summary


def run_pipeline(backend: Any, plan: Plan, log: "MetricLog", progress: Any) -> tuple[Plan, TrainResult,
                                                                                  dict[str, Any]]:
    """The run's pipeline, the same for every backend: warm-up, the held-out eval of the start, the backend's
    training (with the periodic eval through ``log.evaluate``), the check that its export loads, and the held-out
    eval of the export. -> (the plan trained, the backend's result, the held-out summary entries)"""
    from occctl.pipeline import HeldoutEval, heldout_summary, load_export, start_model, warm_start

    spec = plan.spec
    plan = dataclasses.replace(plan, warm_start=warm_start(spec, progress))
    heldout = log.heldout = HeldoutEval(spec)
    try:
        before = heldout(start_model(spec, plan.warm_start))
        result = backend.train(plan, log, progress)
        after = heldout(load_export(result.checkpoint, spec))
        log(spec.train.steps, heldout.metrics(after))
    finally:
        log.heldout = None
        heldout.close()
    return plan, result, heldout_summary(spec, before, after)


def _publish_summary(spec: Spec, run: RunDir, tracker: Tracker, summary: dict[str, Any]) -> None:
    tracker.log_metrics(spec.train.steps, {f"summary/{k}": v for k, v in summary.items()
                                           if isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and math.isfinite(v)})
    tracker.log_artifacts([run.summary_file, run.spec_file])
    tracker.finish("FINISHED")


def open_run(spec: Spec) -> None:
    """The parent of a parallel study, before dispatching a cell: its folder holds the spec (what the worker
    runs) and its MLflow run is open (new, or the one of an interrupted start, marked running again)."""
    run = RunDir.named(spec.name)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_spec(spec)
    _tracker(spec, environment(), run)


def publish_run(spec: Spec) -> None:
    """The parent of a parallel study, once a cell's worker has ended: mirror its run folder to MLflow. A
    finished cell is published whole; an unfinished one up to its last checkpoint (the steps a resume keeps, the
    rest are cut from metrics.jsonl), so no step reaches MLflow twice. Only the parent writes to MLflow."""
    run = RunDir.named(spec.name)
    if not spec.tracking.mlflow or not run.tracking_state().mlflow_run_id:
        return
    tracker = Tracker.attach(resolve_store(spec.tracking.uri), run.tracking_state().mlflow_run_id)
    finished = run.is_finished()
    until = None if finished else get_backend(spec.backend).resume_step(plan_run(spec))
    published = run.tracking_state().published_step
    publish_rows(run, tracker, [r for r in run.read_metrics(until) if r["step"] > published])
    if finished:
        _publish_summary(spec, run, tracker, run.read_summary())
    else:
        tracker.finish("FAILED")


def _tracker(spec: Spec, env: dict[str, Any], run: RunDir) -> Tracker:
    """The run's MLflow run: the one recorded in the run folder when resuming, else a new one."""
    store = resolve_store(spec.tracking.uri)
    if not spec.tracking.mlflow:
        return Tracker.disabled(store)
    state = run.tracking_state()
    if state.mlflow_run_id:
        tracker = Tracker.attach(store, state.mlflow_run_id)
        if tracker.active:
            tracker.reopen()
            return tracker
    tags = {"occctl.regime": spec.mtp.regime if spec.mtp.enabled else "none", "occctl.seed": str(spec.train.seed),
            "occctl.backend": spec.backend, "occctl.algorithm": spec.algorithm.name,
            "occctl.git_sha": env["git_sha"] or "unknown"}
    if spec.group:
        tags["occctl.group"] = spec.group
        tags.update({f"occctl.cell.{key}": str(value) for key, value in spec.cell.items()})
    tracker = Tracker.start(store, spec.tracking.experiment, spec.name, flatten(spec_to_dict(spec)), tags)
    run.write_tracking_state(TrackingState(mlflow_run_id=tracker.run_id))
    return tracker


def run_study(specs: list[Spec], fresh: bool = False, console: Console | None = None,
              launcher: LauncherSpec | None = None) -> list[dict[str, Any]]:
    """Every cell of a matrix; finished cells are skipped, so an interrupted study resumes, and an unfinished
    cell (its process died) resumes from its last checkpoint; ``fresh`` moves every cell aside.

    A changed spec is refused before any cell starts. ``launcher`` (default: sequential, in this process)
    dispatches the cells to local processes, Ray or SLURM (``occctl.launchers``). A failing cell does not stop
    the others: at the end a RunError names the failed cells.
    """
    console = console or Console(stderr=True)
    launcher = launcher or LauncherSpec()
    if not fresh:
        changed = [f"run {s.name!r} exists with a different spec" for s in specs if _spec_changed(s)]
        if changed:
            raise SpecError("\n".join(changed), hint="pass --fresh to move the old runs aside and start over")
    if launcher.name == "sequential":
        failed = _run_in_turn(specs, fresh, console)
    else:
        from occctl.launchers.study import run_parallel

        failed = run_parallel(specs, launcher, fresh, console)
    group = specs[0].group or specs[0].name
    console.rule(f"study {group}: {len(specs) - len(failed)}/{len(specs)} cells done"
                 + (f", {len(failed)} failed" if failed else ""))
    if failed:
        for name, reason in failed.items():
            console.print(f"failed: {name}: {reason}", markup=False, highlight=False, soft_wrap=True)
        raise RunError(f"study {group}: {len(failed)} of {len(specs)} cells failed: {', '.join(failed)}",
                       hint="rerun the same command: finished cells are skipped, the others resume")
    return [RunDir.named(s.name).read_summary() for s in specs]


def _spec_changed(spec: Spec) -> bool:
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


def _run_in_turn(specs: list[Spec], fresh: bool, console: Console) -> dict[str, str]:
    """The sequential launcher: one cell after another in this process. -> {failed cell: reason}."""
    failed: dict[str, str] = {}
    for i, spec in enumerate(specs, 1):
        if RunDir.named(spec.name).is_finished() and not fresh:
            from occctl.launchers.study import publish_unpublished

            publish_unpublished(spec)  # a cell that finished after its study was killed
            continue
        done = sum(1 for s in specs if RunDir.named(s.name).is_finished())
        console.rule(f"cell {i}/{len(specs)}: {spec.name}  ({done} done, {len(specs) - done} left)")
        try:
            run_spec(spec, fresh=fresh, console=console)
        except OccError as e:  # this cell failed (a NaN loss, a missing file): the others still run
            failed[spec.name] = e.message.splitlines()[0]
            console.print(f"cell {spec.name} failed: {failed[spec.name]}", markup=False, highlight=False)
    return failed


def _series(history: list[dict[str, float]], key: str) -> list[float]:
    return [row[key] for row in history if key in row and math.isfinite(row[key])]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


ROLLOUT_KEYS = ("rollout/tokens_per_s", "spec/accept_rate", "spec/mean_accept_len")


def build_summary(spec: Spec, history: list[dict[str, float]], result: TrainResult, wall_s: float,
                  mlflow_run_id: str | None, heldout: dict[str, Any] | None = None,
                  warm_start: Any = None) -> dict[str, Any]:
    """``summary.json``: the trajectory's numbers, the backend's own entries, then the runner's held-out ones
    (``occctl.pipeline.heldout_summary``: they win over a backend's entry of the same name)."""
    from occctl.fidelity import fidelity  # scipy: only when a summary is built, not for validate / --dry-run

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
