"""The ``launcher:`` section of a study file: how `occctl run` dispatches a study's cells (never part of a run's
spec, so changing it does not change the runs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from occctl.errors import SpecError
from occctl.spec.messages import describe_error
from occctl.spec.schema import StrictModel


class SlurmSpec(StrictModel):
    partition: str | None = Field(None, description="SLURM partition (default: the cluster's)")
    time_min: int = Field(60, ge=1, description="time limit of one cell's job, minutes")
    mem_gb: float | None = Field(None, gt=0, description="memory of one cell's job (default: the cluster's)")
    additional: dict[str, Any] = Field(default_factory=dict, description="more sbatch options, e.g. "
                                       "{account: proj, qos: high} (submitit's slurm_additional_parameters)")
    cluster: Literal["slurm", "local", "debug"] = Field("slurm", description="submitit's executor: slurm; local "
                                                        "or debug run the jobs on this machine (tests)")


class LauncherSpec(StrictModel):
    """How `occctl run` dispatches a study's cells (``launcher:`` beside ``matrix:``; never part of a run's spec,
    so changing it does not change the runs)."""

    name: Literal["sequential", "local", "ray", "slurm"] = Field("sequential", description="sequential: in this "
                                                                 "process, one cell after another")
    jobs: int = Field(1, ge=1, description="cells at once (slurm: the job array's parallelism)")
    cpus_per_cell: int | None = Field(None, ge=1, description="CPU cores and torch threads of one cell; default: "
                                      "this machine's cores // jobs (local), 1 (ray, slurm)")
    gpus_per_cell: float = Field(0, ge=0, description="GPUs of one cell (ray, slurm)")
    ray_address: str | None = Field(None, description="an existing Ray cluster (auto, ray://host:port); default: "
                                    "a local Ray that occctl starts and stops")
    slurm: SlurmSpec = SlurmSpec()

    @model_validator(mode="after")
    def _jobs_need_a_launcher(self) -> "LauncherSpec":
        if self.name == "sequential" and self.jobs > 1:
            raise ValueError(f"jobs = {self.jobs} needs a parallel launcher: --launcher local, ray or slurm")
        return self


def validate_launcher(raw: Any, source: str) -> LauncherSpec:
    try:
        return LauncherSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError("\n".join(f"{source}: launcher.{describe_error(err, LauncherSpec)}"
                                  for err in e.errors())) from None

