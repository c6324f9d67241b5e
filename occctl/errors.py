"""Errors the CLI turns into messages and exit codes (anything else is a bug and keeps its traceback).

Exit codes: 0 success; 1 a run, eval or report failed at runtime (``RunError``); 2 bad usage, an invalid spec or
a damaged input file (``SpecError``, and errors naming a file of a run folder or a checkpoint); 3 the environment
lacks something (``EnvError``): a backend or extra, hardware, **missing data** (``DataMissingError``), a full disk
(ENOSPC, EDQUOT) or a read-only or unwritable results directory (EROFS, EACCES); 130 interrupted.
"""

from __future__ import annotations


class OccError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class RunError(OccError):
    """A run, eval or report failed at runtime."""

    exit_code = 1


class SpecError(OccError):
    """Bad usage or an invalid spec."""

    exit_code = 2


class EnvError(OccError):
    """The environment lacks something: a backend, hardware, data, disk space, a writable results directory."""

    exit_code = 3


class DataMissingError(EnvError):
    """A dataset's files are not where occctl looked (exit 3, like any missing part of the environment)."""


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
