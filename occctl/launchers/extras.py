"""The optional package a launcher needs (ray, submitit), imported when the launcher is chosen."""

from __future__ import annotations

import importlib

from occctl.errors import OccError


class MissingExtraError(OccError):
    """A launcher's optional package is not installed."""

    exit_code = 2


def import_extra(module: str, launcher: str):
    """``import module`` for a launcher, or MissingExtraError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"--launcher {launcher} needs the {module} package, which is not installed",
                                hint=f"pip install 'occctl[{launcher}]'") from None
