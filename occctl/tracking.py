"""MLflow mirror of results/ (the only module that imports mlflow).

Default store: sqlite at ``<results>/mlflow.db`` with artifacts under ``<results>/mlartifacts``;
``tracking.uri`` in the spec or ``$MLFLOW_TRACKING_URI`` override it. A tracking failure never stops a
run: results/ holds everything, and the failure is reported once as a warning.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

from occctl.rundir import results_root


def tracking_uri(spec_uri: str | None = None) -> str:
    if spec_uri:
        return spec_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = results_root()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if client.tracking_uri.startswith("sqlite:///"):
        artifacts = (results_root() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifacts)


class Tracker:
    """One MLflow run; every call is a no-op after the first tracking failure (results/ keeps the data)."""

    def __init__(self, enabled: bool, experiment: str, uri: str | None, run_name: str,
                 params: dict[str, Any], tags: dict[str, str]) -> None:
        self.run_id: str | None = None
        self.uri = tracking_uri(uri)
        self._client = None
        if not enabled:
            return
        try:
            self._client = _client(self.uri)
            exp_id = ensure_experiment(self._client, experiment)
            run = self._client.create_run(exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            self._log_params(params)
        except Exception as e:  # noqa: BLE001 - tracking must never take a run down
            self._fail(e)

    def _fail(self, e: Exception) -> None:
        warnings.warn(f"MLflow tracking disabled for this run ({type(e).__name__}: {e}); results/ has the data",
                      RuntimeWarning, stacklevel=3)
        self._client = None

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self._client is None:
            return
        try:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, v, now, step) for k, v in metrics.items() if math.isfinite(v)]
            self._client.log_batch(self.run_id, metrics=items)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def log_artifact(self, path: Path) -> None:
        if self._client is None:
            return
        try:
            self._client.log_artifact(self.run_id, str(path))
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def finish(self, status: str = "FINISHED") -> None:
        if self._client is None:
            return
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as e:  # noqa: BLE001
            self._fail(e)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, for tests and reports."""
    return [(m.step, m.value) for m in _client(uri).get_metric_history(run_id, key)]


# ---- additions for `occctl eval`: log onto an existing run, tags, artifacts under a folder ----------------


def attach_tracker(run_id: str, uri: str | None = None) -> Tracker:
    """A Tracker on an existing run (e.g. eval results onto the training run). Its status is left as it is:
    do not call ``finish`` on it unless this process owns the run."""
    tracker = Tracker.__new__(Tracker)
    tracker.run_id = run_id
    tracker.uri = tracking_uri(uri)
    tracker._client = None
    try:
        client = _client(tracker.uri)
        client.get_run(run_id)  # fails early (one warning) when the run is not in this store
        tracker._client = client
    except Exception as e:  # noqa: BLE001 - tracking must never take an eval down
        tracker._fail(e)
    return tracker


def tracker_active(tracker: Tracker) -> bool:
    """False when tracking is disabled or has failed (results/ still holds everything)."""
    return tracker._client is not None


def set_tags(tracker: Tracker, tags: dict[str, str]) -> None:
    if tracker._client is None:
        return
    try:
        for key, value in tags.items():
            tracker._client.set_tag(tracker.run_id, key, value)
    except Exception as e:  # noqa: BLE001
        tracker._fail(e)


def log_artifacts_under(tracker: Tracker, paths: list[Path], artifact_path: str) -> None:
    """Upload files into one artifact folder of the run (``eval/math6/...``)."""
    if tracker._client is None:
        return
    try:
        for path in paths:
            tracker._client.log_artifact(tracker.run_id, str(path), artifact_path=artifact_path)
    except Exception as e:  # noqa: BLE001
        tracker._fail(e)


def run_info(uri: str, run_id: str) -> dict[str, Any]:
    """Status, tags, params and latest metrics of a run (for tests and reports)."""
    run = _client(uri).get_run(run_id)
    return {"status": run.info.status, "experiment_id": run.info.experiment_id, "tags": dict(run.data.tags),
            "params": dict(run.data.params), "metrics": dict(run.data.metrics)}


# ---- additions for `occctl report`: find a study's runs, read their histories, log a report ----------------


def find_runs(uri: str, groups: list[str] | None = None, experiment: str | None = None) -> list[dict[str, Any]]:
    """Finished occctl runs (all experiments unless one is named), optionally of some matrix groups, each as
    {run_id, name, experiment, tags, params, metrics (latest values)}."""
    client = _client(uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        experiments = [exp] if exp is not None else []
    else:
        experiments = client.search_experiments()
    if not experiments:
        return []
    filters = ["attributes.status = 'FINISHED'", "tags.`occctl.regime` != ''"]
    found: list[dict[str, Any]] = []
    for group in groups or [None]:
        flt = " and ".join(filters + ([f"tags.`occctl.group` = '{group}'"] if group else []))
        token = None
        while True:
            page = client.search_runs([e.experiment_id for e in experiments], filter_string=flt,
                                      max_results=1000, page_token=token)
            for run in page:
                found.append({"run_id": run.info.run_id, "name": run.info.run_name,
                              "experiment": run.info.experiment_id, "tags": dict(run.data.tags),
                              "params": dict(run.data.params), "metrics": dict(run.data.metrics)})
            token = page.token
            if not token:
                break
    return found


def log_report(uri: str, experiment: str, name: str, files: list[Path], tables: dict[str, dict[str, list]]) -> str:
    """A report run: the report's files as artifacts and its tables via ``mlflow.log_table``. -> run id."""
    import mlflow

    client = _client(uri)
    exp_id = ensure_experiment(client, experiment)
    run = client.create_run(exp_id, run_name=name, tags={"occctl.report": name})
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run.info.run_id):
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="report")
        for file_name, table in tables.items():
            mlflow.log_table(data=table, artifact_file=f"report/{file_name}")
    return run.info.run_id


# ---- additions for `occctl ls` / `occctl ui`: the project's store without side effects, run statuses -------


def default_store() -> tuple[str, str | None]:
    """(tracking URI, artifact root URI or None) of the project's store, resolved as ``tracking_uri()`` and
    ``ensure_experiment`` do without a spec override, but creating nothing (for `occctl ls` and `occctl ui`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results_root() / 'mlflow.db'}"
    artifacts = (results_root() / "mlartifacts").as_uri() if uri.startswith("sqlite:///") else None
    return uri, artifacts


def is_local_store(uri: str) -> bool:
    """A store on this machine (sqlite file or file: directory) that exists: reading it needs no network."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).is_file()
    if uri.startswith("file:"):
        return Path(uri[len("file:"):].removeprefix("//")).is_dir()
    return False


def latest_statuses(uri: str, experiment: str, run_names: list[str]) -> dict[str, str]:
    """Status (RUNNING, FINISHED, FAILED, KILLED) of the newest MLflow run of each name in one experiment.
    Read-only and best effort: {} when the store is not local, does not exist or cannot be read."""
    if not run_names or not is_local_store(uri):
        return {}
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return {}
        found: dict[str, str] = {}
        for name in dict.fromkeys(run_names):
            quoted = name.replace("\\", "\\\\").replace("'", "\\'")
            runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{quoted}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                found[name] = runs[0].info.status
        return found
    except Exception:  # noqa: BLE001 - a listing never fails on tracking; results/ is the truth
        return {}


def reopen(tracker: Tracker) -> None:
    """Mark a resumed run as running again (it was left RUNNING, KILLED or FAILED by the interrupted process)."""
    if tracker._client is None:
        return
    try:
        tracker._client.update_run(tracker.run_id, status="RUNNING")
    except Exception as e:  # noqa: BLE001
        tracker._fail(e)
