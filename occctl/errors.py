"""Errors the CLI turns into messages and exit codes (anything else is a bug and keeps its traceback)."""

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
    """The environment lacks something: a backend, hardware, data."""

    exit_code = 3


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""`` when none is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
