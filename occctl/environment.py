"""What a result depends on besides its spec: git SHA, Python, platform, package versions (``env.json``)."""

from __future__ import annotations

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


def environment() -> dict[str, Any]:
    return {"git_sha": git_sha(), "python": platform.python_version(), "platform": platform.platform(),
            "packages": package_versions(RUN_PACKAGES)}
