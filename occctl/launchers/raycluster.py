"""The Ray launcher: each cell a Ray task declaring ``cpus_per_cell`` CPUs (default 1) and ``gpus_per_cell`` GPUs,
in a fresh worker process (``max_calls=1``) and never retried (a failed cell is reported; rerunning resumes it).

Without ``ray_address`` occctl starts a local Ray with ``jobs x cpus_per_cell`` CPUs and stops it at the end; with
one (``auto``, ``ray://host:port``) it connects to that cluster, whose nodes must see the same ``results/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from occctl.errors import EnvError
from occctl.launchers.extras import import_extra
from occctl.launchers.cell import run_cell
from occctl.rundir import results_root
from occctl.spec import LauncherSpec

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # a local Ray only passes names and summaries around


class RayTask:
    def __init__(self, ray, ref) -> None:
        self._ray, self._ref = ray, ref

    def done(self) -> bool:
        ready, _ = self._ray.wait([self._ref], timeout=0)
        return bool(ready)

    def result(self) -> Any:
        return self._ray.get(self._ref)

    def cancel(self) -> None:
        self._ray.cancel(self._ref, force=True)


class RayCluster:
    def __init__(self, launcher: LauncherSpec, directory: Path) -> None:
        self.ray = import_extra("ray", "ray")
        self.directory = directory
        self.threads = launcher.cpus_per_cell or 1
        if launcher.ray_address:
            try:
                self.ray.init(address=launcher.ray_address, log_to_driver=False)
            except ConnectionError as e:
                raise EnvError(f"--ray-address {launcher.ray_address}: cannot connect to a Ray cluster "
                               f"({str(e).splitlines()[0]})", hint="is the cluster up (ray status)? "
                               "Without --ray-address occctl starts a local Ray") from None
        else:
            self.ray.init(num_cpus=launcher.jobs * self.threads, include_dashboard=False, log_to_driver=False,
                          object_store_memory=OBJECT_STORE_BYTES)
        try:
            self._remote = self.ray.remote(num_cpus=self.threads, num_gpus=launcher.gpus_per_cell, max_calls=1,
                                           max_retries=0)(run_cell)
        except BaseException:
            self.ray.shutdown()  # never leave a local Ray behind
            raise
        self._tasks: list[RayTask] = []

    def submit(self, name: str) -> RayTask:
        log = self.directory / f"{name}.log"
        task = RayTask(self.ray, self._remote.remote(name, str(results_root()), self.threads, str(log)))
        self._tasks.append(task)
        return task

    def close(self) -> None:
        """Cancel the tasks still running, then disconnect (a local Ray that occctl started is stopped)."""
        for task in self._tasks:
            if not task.done():
                task.cancel()
        self.ray.shutdown()
