"""What a result depends on besides its spec: git SHA, Python, platform, the machine (CPU, cores, torch threads),
package versions (``env.json``)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

RUN_PACKAGES = ("occctl", "torch", "transformers", "trl", "mlflow", "verl")


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    return {name: package_version(name) for name in names}


def git_sha() -> str | None:
    """HEAD of the checkout occctl runs from (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict[str, Any]:
    """The machine a number came from: CPU model, cores, torch's threads, the libraries that compute it."""
    return {**_machine(), "packages": package_versions(("torch", "transformers"))}


def environment() -> dict[str, Any]:
    """A run's ``env.json``: git SHA, Python, platform, the machine (CPU model, cores, torch's threads as the run
    starts: the TRL backend's tiny preset then trains on 1 thread when OMP_NUM_THREADS is unset) and the packages."""
    return {"git_sha": git_sha(), "python": platform.python_version(), "platform": platform.platform(),
            **_machine(), "packages": package_versions(RUN_PACKAGES)}


def _machine() -> dict[str, Any]:
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
