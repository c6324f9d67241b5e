"""The SLURM launcher: each cell one SLURM job submitted by submitit (``launcher.slurm``: partition, time limit,
memory, more sbatch options; ``cpus_per_cell``, ``gpus_per_cell``). submitit's files (the pickled call, the
job's stdout/stderr) go to ``results/studies/<group>/submitit/``, the cell's progress lines to ``<cell>.log`` beside
it; ``results/`` must be on storage that the compute nodes share. ``slurm.cluster: local`` (or ``debug``) runs the
same jobs on this machine through submitit's local executor (the tests use it)."""

from __future__ import annotations

from pathlib import Path

from occctl.errors import SpecError
from occctl.launchers.extras import import_extra
from occctl.launchers.cell import run_cell
from occctl.rundir import results_root
from occctl.spec import LauncherSpec


def executor_parameters(launcher: LauncherSpec, name: str) -> dict:
    """submitit's ``update_parameters`` for one cell's job (generic keys, plus ``slurm_*`` for SLURM)."""
    slurm = launcher.slurm
    params: dict = {"name": name, "timeout_min": slurm.time_min, "cpus_per_task": launcher.cpus_per_cell or 1}
    if launcher.gpus_per_cell:
        params["gpus_per_node"] = int(launcher.gpus_per_cell)
    if slurm.mem_gb:
        params["mem_gb"] = slurm.mem_gb
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if slurm.additional:
        params["slurm_additional_parameters"] = dict(slurm.additional)
    return params


class SlurmJobs:
    def __init__(self, launcher: LauncherSpec, directory: Path) -> None:
        submitit = import_extra("submitit", "slurm")
        if launcher.gpus_per_cell and not float(launcher.gpus_per_cell).is_integer():
            raise SpecError(f"launcher.gpus_per_cell: SLURM jobs take whole GPUs; got {launcher.gpus_per_cell}")
        self.directory = directory
        self.threads = launcher.cpus_per_cell or 1
        self.executor = submitit.AutoExecutor(folder=directory / "submitit", cluster=launcher.slurm.cluster)
        self.executor.update_parameters(**executor_parameters(launcher, f"occctl-{directory.name}"))
        self._jobs: list = []

    def submit(self, name: str):
        job = self.executor.submit(run_cell, name, str(results_root()), self.threads, str(self.directory / f"{name}.log"))
        self._jobs.append(job)
        return job

    def close(self) -> None:
        """Cancel the jobs still queued or running."""
        for job in self._jobs:
            if not job.done():
                job.cancel(check=False)
