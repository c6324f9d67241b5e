"""The terminal: one stdout and one stderr console, and the mapping of OccError to an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape

from occctl.errors import OccError
from occctl.oserrors import environment_error

err = Console(stderr=True)
out = Console()
_state = {"debug": False}


def set_debug(debug: bool) -> None:
    _state["debug"] = debug


def fail(e: OccError) -> NoReturn:
    """Print one clear message (plus a hint) and exit with the error's code; --debug re-raises."""
    if _state["debug"]:
        raise e
    err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, markup=True, soft_wrap=True)
    if e.hint:
        err.print(f"[bold]hint:[/] {escape(e.hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def fail_all(errors: list[OccError]) -> NoReturn:
    if _state["debug"]:
        raise errors[0]
    for e in errors:
        err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(max(e.exit_code for e in errors))


@contextmanager
def exits_on_error(interrupted: str = "interrupted") -> Iterator[None]:
    """The body of a command: an OccError becomes its message and exit code, Ctrl-C exit code 130 (after
    printing ``interrupted``), a full disk or a read-only or unwritable results directory one EnvError line
    (``occctl.oserrors``, exit 3); anything else is a bug and keeps its traceback."""
    try:
        yield
    except OccError as e:
        fail(e)
    except KeyboardInterrupt:
        err.print(interrupted, highlight=False, markup=False)
        raise typer.Exit(130) from None
    except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
        raise
    except Exception as e:  # noqa: BLE001 - only a full disk or a read-only/unwritable results dir is mapped
        found = environment_error(e)
        if found is None:
            raise  # a bug: it keeps its traceback
        fail(found)
