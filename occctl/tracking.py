"""MLflow mirror of results/ (the only module that imports mlflow).

``resolve_store`` is the one place that decides where MLflow data goes: ``tracking.uri`` in the spec, else
``$MLFLOW_TRACKING_URI``, else sqlite at ``<results>/mlflow.db`` with artifacts under ``<results>/mlartifacts``.
A ``Store`` reads (runs of a study, metric histories, statuses) and writes reports; a ``Tracker`` is one MLflow
run being written. A tracking failure never stops a run: results/ holds everything, and the failure is
reported once as a warning.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occctl.errors import SpecError
from occctl.rundir import results_root

REMOTE_SCHEMES = ("http://", "https://", "databricks", "uc:")
MLFLOW_BATCH = 1000  # metrics per log_batch request (MLflow's limit)


@dataclass(frozen=True)
class Store:
    """An MLflow tracking store: its URI and, for the project's own sqlite store, the artifact root."""

    uri: str
    artifacts: str | None = None  # artifact root URI of new experiments; None: MLflow's default for the store

    @property
    def is_remote(self) -> bool:
        return self.uri.startswith(REMOTE_SCHEMES)

    def is_local(self) -> bool:
        """A store on this machine (sqlite file or file: directory) that exists: reading it needs no network."""
        if self.uri.startswith("sqlite:///"):
            return Path(self.uri[len("sqlite:///"):]).is_file()
        if self.uri.startswith("file:"):
            return Path(self.uri[len("file:"):].removeprefix("//")).is_dir()
        return False

    def client(self):
        """An MlflowClient on the store (a sqlite store's folder is created, so the database can be)."""
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, client, name: str) -> str:
        """The experiment's id; created (with the store's artifact root) when it does not exist."""
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(name, artifact_location=self.artifacts)

    # ---- reading -------------------------------------------------------------------------------------------

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric."""
        return [(m.step, m.value) for m in self.client().get_metric_history(run_id, key)]

    def run_info(self, run_id: str) -> dict[str, Any]:
        """Status, tags, params and latest metrics of a run."""
        run = self.client().get_run(run_id)
        return {"status": run.info.status, "experiment_id": run.info.experiment_id, "tags": dict(run.data.tags),
                "params": dict(run.data.params), "metrics": dict(run.data.metrics)}

    def find_runs(self, groups: list[str] | None = None, experiment: str | None = None) -> list[dict[str, Any]]:
        """Finished occctl runs (all experiments unless one is named), optionally of some matrix groups, each as
        {run_id, name, experiment, tags, params, metrics (latest values)}."""
        client = self.client()
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

    def group_statuses(self, groups: list[str]) -> dict[str, dict[str, str]]:
        """group -> {run name: status of its newest MLflow run}, over every experiment and status (to tell a
        report which cells it leaves out). Best effort: {} when the store cannot be read."""
        try:
            client = self.client()
            ids = [e.experiment_id for e in client.search_experiments()]
            found: dict[str, dict[str, str]] = {}
            for group in groups if ids else []:
                quoted = group.replace("\\", "\\\\").replace("'", "\\'")
                runs = client.search_runs(ids, filter_string=f"tags.`occctl.group` = '{quoted}'",
                                          order_by=["attributes.start_time ASC"], max_results=5000)
                found[group] = {run.info.run_name: run.info.status for run in runs}  # the newest wins
            return found
        except Exception:  # noqa: BLE001 - a warning's input: the report itself does not depend on it
            return {}

    def latest_statuses(self, experiment: str, run_names: list[str]) -> dict[str, str]:
        """Status (RUNNING, FINISHED, FAILED, KILLED) of the newest MLflow run of each name in one experiment.
        Read-only and best effort: {} when the store is not local, does not exist or cannot be read."""
        if not run_names or not self.is_local():
            return {}
        try:
            client = self.client()
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

    # ---- writing a report ------------------------------------------------------------------------------------

    def log_report(self, experiment: str, name: str, files: list[Path], tables: dict[str, dict[str, list]]) -> str:
        """A report run: the report's files as artifacts and its tables via ``mlflow.log_table``. -> run id."""
        import mlflow

        client = self.client()
        run = client.create_run(self.experiment_id(client, experiment), run_name=name, tags={"occctl.report": name})
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run.info.run_id):
            for path in files:
                mlflow.log_artifact(str(path), artifact_path="report")
            for file_name, table in tables.items():
                mlflow.log_table(data=table, artifact_file=f"report/{file_name}")
        return run.info.run_id


def resolve_store(spec_uri: str | None = None) -> Store:
    """The store a run, eval, report, ls or ui uses: the spec's ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``,
    else the project's sqlite store under results/. Creates nothing; a given sqlite URI whose directory does not
    exist is a SpecError (a typo must not create a store nobody reads)."""
    uri = spec_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{results_root() / 'mlflow.db'}"
    given = "tracking.uri" if spec_uri else "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else None
    if given and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).parent.is_dir():
        raise SpecError(f"{given} {uri}: the directory {Path(uri[len('sqlite:///'):]).parent} does not exist",
                        hint="create it, or fix the path (occctl creates only its own store under results/)")
    artifacts = (results_root() / "mlartifacts").as_uri() if uri.startswith("sqlite:///") else None
    return Store(uri, artifacts)


def tracking_uri(spec_uri: str | None = None) -> str:
    """The URI of ``resolve_store(spec_uri)``."""
    return resolve_store(spec_uri).uri


class Tracker:
    """One MLflow run being written; every call is a no-op once tracking is off or has failed (results/ keeps
    the data). Build one with ``start`` (a new run), ``attach`` (an existing run) or ``disabled``."""

    def __init__(self, store: Store, run_id: str | None, client) -> None:
        self.store, self.run_id, self._client = store, run_id, client

    @classmethod
    def disabled(cls, store: Store | None = None) -> "Tracker":
        return cls(store or resolve_store(), None, None)

    @classmethod
    def recorded(cls, store: Store, run_id: str | None) -> "Tracker":
        """A Tracker that knows its run but writes nothing: a worker of a parallel study (its parent publishes)."""
        return cls(store, run_id, None)

    @classmethod
    def start(cls, store: Store, experiment: str, run_name: str, params: dict[str, Any],
              tags: dict[str, str]) -> "Tracker":
        """A new MLflow run in ``experiment`` with the run's params and tags."""
        tracker = cls.disabled(store)
        try:
            client = store.client()
            run = client.create_run(store.experiment_id(client, experiment), run_name=run_name, tags=tags)
            tracker.run_id, tracker._client = run.info.run_id, client
            tracker._log_params(params)
        except Exception as e:  # noqa: BLE001 - tracking must never take a run down
            tracker._fail(e)
        return tracker

    @classmethod
    def attach(cls, store: Store, run_id: str) -> "Tracker":
        """A Tracker on an existing run (a resumed run, or eval results onto the training run). Its status is
        left as it is: call ``finish`` only when this process owns the run."""
        tracker = cls(store, run_id, None)
        try:
            client = store.client()
            client.get_run(run_id)  # fails early (one warning) when the run is not in this store
            tracker._client = client
        except Exception as e:  # noqa: BLE001 - tracking must never take a run or an eval down
            tracker._fail(e)
        return tracker

    @property
    def active(self) -> bool:
        """False when tracking is off or has failed (results/ still holds everything)."""
        return self._client is not None

    @property
    def uri(self) -> str:
        return self.store.uri

    def _fail(self, e: Exception) -> None:
        warnings.warn(f"MLflow tracking disabled for this run ({type(e).__name__}: {e}); results/ has the data",
                      RuntimeWarning, stacklevel=3)
        self._client = None

    def _guarded(self, action) -> None:
        """Run ``action(client)`` unless tracking is off; a failure turns tracking off with one warning."""
        if self._client is None:
            return
        try:
            action(self._client)
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.log_rows([{"step": step, **metrics}])

    def log_rows(self, rows: list[dict[str, float]]) -> None:
        """Metric rows ``{"step": n, key: value, ...}``, many steps per request (MLflow takes 1000 metrics)."""
        def log(client) -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, int(row["step"])) for row in rows for k, v in row.items()
                       if k != "step" and v is not None and math.isfinite(v)]  # None: null in metrics.jsonl
            for i in range(0, len(metrics), MLFLOW_BATCH):
                client.log_batch(self.run_id, metrics=metrics[i:i + MLFLOW_BATCH])

        self._guarded(log)

    def log_artifacts(self, paths: list[Path], under: str | None = None) -> None:
        """Upload files into the run's artifact root, or into one folder of it (``eval/math6/...``)."""
        self._guarded(lambda client: [client.log_artifact(self.run_id, str(p), artifact_path=under) for p in paths])

    def set_tags(self, tags: dict[str, str]) -> None:
        self._guarded(lambda client: [client.set_tag(self.run_id, k, v) for k, v in tags.items()])

    def reopen(self) -> None:
        """Mark a resumed run as running again (the interrupted process left it RUNNING, KILLED or FAILED)."""
        self._guarded(lambda client: client.update_run(self.run_id, status="RUNNING"))

    def status(self) -> str | None:
        """The run's MLflow status (RUNNING, FINISHED, FAILED, KILLED); None when tracking is off or failed."""
        found: list[str] = []
        self._guarded(lambda client: found.append(client.get_run(self.run_id).info.status))
        return found[0] if found else None

    def finish(self, status: str = "FINISHED") -> None:
        self._guarded(lambda client: client.set_terminated(self.run_id, status=status))
