"""Launchers: where the cells of a study run (``occctl run STUDY --launcher local|ray|slurm --jobs N``).

* ``study.py``   the parent: refuses nothing twice, opens each cell's run folder and MLflow run, keeps at most
                 ``jobs`` cells in flight, publishes each ended cell to MLflow, shows one live view (``view.py``);
* ``sequential.py``  the default: each cell in turn in this process (``run_study`` without a launcher);
* ``cell.py``    what a worker runs: one cell's ``run_spec``, writing only its run folder and its log;
* ``local.py``   each cell its own process on this machine, torch threads split between the jobs;
* ``raycluster.py``  each cell a Ray task with declared CPUs/GPUs, on a local Ray or an existing cluster;
* ``slurm.py``   each cell a SLURM job through submitit;
* ``extras.py``  the optional package a launcher needs, or an error naming the extra that installs it.

Every pool has ``submit(name) -> handle`` (``handle.done()``, ``handle.result()`` raising the cell's failure) and
``close()``, which stops what still runs. Workers share ``results/`` with the parent (shared storage on a cluster).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from occctl.rundir import results_root
from occctl.spec import LauncherSpec


class Handle(Protocol):
    def done(self) -> bool: ...
    def result(self) -> Any: ...


class Pool(Protocol):
    def submit(self, name: str) -> Handle: ...
    def close(self) -> None: ...


def study_dir(group: str) -> Path:
    """``results/studies/<group>/``: the cells' logs (``<cell>.log``) and the launcher's own files."""
    path = results_root() / "studies" / group
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_pool(launcher: LauncherSpec, group: str) -> Pool:
    """The launcher's pool; ``extras.MissingExtraError`` (exit 2) when its package is not installed."""
    if launcher.name == "local":
        from occctl.launchers.local import LocalProcesses

        return LocalProcesses(launcher, study_dir(group))
    if launcher.name == "ray":
        from occctl.launchers.raycluster import RayCluster

        return RayCluster(launcher, study_dir(group))
    if launcher.name == "slurm":
        from occctl.launchers.slurm import SlurmJobs

        return SlurmJobs(launcher, study_dir(group))
    raise ValueError(f"no pool for launcher {launcher.name!r}")
