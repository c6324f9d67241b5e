"""`occctl eval`: evaluate checkpoints on a suite (math6, tiny)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Evaluate a checkpoint on a benchmark suite (math6, tiny).", no_args_is_help=True)


@app.command("selfcheck")
def selfcheck() -> None:
    """Grade every gold answer against itself (not implemented yet)."""
    raise typer.Exit(1)
