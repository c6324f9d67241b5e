"""What to evaluate: a run (its final checkpoint), a checkpoint directory, or any HF model (path or hub id).

``--run NAME`` scores that run folder's own ``checkpoints/final``, whatever path ``summary.json`` recorded, and
only with its completion marker (``occctl.checkpoint_marker``). A checkpoint inside ``results/runs/<name>/``
belongs to that run: its eval lands in the run directory and on the run's MLflow run. Anything else gets ``results/evals/<slug>/`` and an MLflow eval run of its own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from occctl.checkpoint_marker import is_complete, mark_complete, require_complete
from occctl.errors import SpecError
from occctl.rundir import RunDir, results_root
from occctl.spec import Spec

EVAL_EXPERIMENT = "occctl-eval"


@dataclass(frozen=True)
class Target:
    model: str  # a local HF directory or a hub id
    label: str  # the run name, or a slug of the path / id
    base_dir: Path  # results/runs/<name> or results/evals/<slug>
    run_name: str | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None  # the run spec's tracking.uri
    experiment: str = EVAL_EXPERIMENT
    spec: Spec | None = None  # the run's resolved spec (tiny suite: task, k, temperature, seed)
    summary: dict | None = None
    step: int = 0  # MLflow step for the metrics (the run's last training step)

    @property
    def has_mtp_head(self) -> bool:
        from occctl.models import has_mtp_head  # imports torch: only when asked

        return has_mtp_head(self.model)


def resolve_target(run: str | None, checkpoint: str | None, model: str | None) -> Target:
    given = [x for x in (run, checkpoint, model) if x]
    if len(given) != 1:
        raise SpecError("pass exactly one of --run NAME, --checkpoint PATH or --model HF_ID_OR_PATH"
                        + (f" (got {len(given)})" if given else ""))
    if run:
        return _run_target(run)
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not (path / "config.json").is_file():
            raise SpecError(f"--checkpoint {checkpoint}: not an HF model directory (no config.json)")
        return _path_target(path.resolve())
    path = Path(model).expanduser()
    if path.exists() or model.startswith(("/", "./", "../", "~")):
        if not (path / "config.json").is_file():
            raise SpecError(f"--model {model}: not an HF model directory (no config.json)")
        return _path_target(path.resolve())
    return Target(model=model, label=_slug(model), base_dir=results_root() / "evals" / _slug(model))


def _run_target(name: str, checkpoint: Path | None = None) -> Target:
    run = RunDir.named(name)
    if not run.exists():
        runs = sorted(p.name for p in run.path.parent.glob("*") if RunDir(p).is_finished())
        raise SpecError(f"no run named {name!r} in {run.path.parent}"
                        + (f"; finished runs: {', '.join(runs[:20])}" if runs else ""))
    if not run.is_finished():
        raise SpecError(f"run {name!r} has no summary.json (unfinished?): {run}",
                        hint="finish it with `occctl run`, or pass --checkpoint <dir> explicitly")
    summary = run.read_summary()
    # Always this folder's own checkpoint: summary.json's absolute path may name another folder (the run was moved
    # aside by --fresh, or copied), whose weights must not be scored and logged as this run's.
    path = checkpoint or run.final_checkpoint
    spec = run.read_spec()
    step = int(summary.get("steps") or 0)
    if checkpoint is not None and checkpoint.resolve() != run.final_checkpoint.resolve():
        m = re.search(r"(\d+)$", checkpoint.name)  # an intermediate checkpoint: log at its own step
        step = int(m.group(1)) if m else step
        if run.checkpoints.resolve() not in checkpoint.resolve().parents:  # the backend's own format
            path = _exported(run, spec, checkpoint, step)
    if not (path / "config.json").is_file():
        raise SpecError(f"run {name!r}: checkpoint {path} is missing")
    require_complete(path, f"run {name!r}")  # an export cut short (a full disk, a kill) is never evaluated
    return Target(model=str(path), label=name, base_dir=run.path, run_name=name,
                  mlflow_run_id=summary.get("mlflow_run_id"), tracking_uri=spec.tracking.uri,
                  experiment=spec.tracking.experiment, spec=spec, summary=summary, step=step)


def _exported(run: RunDir, spec: Spec, checkpoint: Path, step: int) -> Path:
    """A native checkpoint of the run's backend (e.g. ``trl/checkpoint-20``) as HF weights + MTP head, exported
    once into ``checkpoints/step-<N>`` and checked as the runner checks a run's export (``occctl.pipeline.
    check_export``: a RunError naming the folder when it is not what eval reads)."""
    from occctl.backend import get_backend
    from occctl.pipeline import check_export

    out_dir = run.checkpoints / f"step-{step}"
    if not is_complete(out_dir):  # never exported, or an export cut short: export (again)
        check_export(get_backend(spec.backend).export(checkpoint, out_dir), spec, out_dir)
        mark_complete(out_dir)
    return out_dir


def _path_target(path: Path) -> Target:
    runs = (results_root() / "runs").resolve()
    if runs in path.parents:
        name = path.relative_to(runs).parts[0]
        if RunDir(runs / name).is_finished():
            return _run_target(name, checkpoint=path)
        if path.parent == RunDir(runs / name).checkpoints:  # an unfinished run's export: complete ones only
            require_complete(path, f"run {name!r} (unfinished)")
    slug = _slug(f"{path.parent.name}_{path.name}", str(path))
    return Target(model=str(path), label=slug, base_dir=results_root() / "evals" / slug)


def _slug(name: str, identity: str | None = None) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[-60:] or "model"
    return f"{clean}-{hashlib.sha256((identity or name).encode()).hexdigest()[:8]}"
