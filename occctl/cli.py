"""occctl's command line (thin: parse, call one library function, map errors to exit codes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from occctl.errors import OccError

app = typer.Typer(
    help="Joint MTP + RL training with Optimal Coefficient Calibration (OCC): run, validate, inspect specs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()
_state = {"debug": False}

SPEC_ARG = typer.Argument(..., help="path to a YAML spec, e.g. specs/tiny_occ.yaml")
SET_OPT = typer.Option(None, "--set", help="override a spec key, e.g. --set train.steps=5 (repeatable; YAML-typed)")


def _fail(e: OccError) -> None:
    if _state["debug"]:
        raise e
    err.print(f"[bold red]error:[/] {e.message}", highlight=False, markup=True, soft_wrap=True)
    if e.hint:
        err.print(f"[bold]hint:[/] {e.hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(e.exit_code)


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="show tracebacks for occctl errors too")) -> None:
    _state["debug"] = debug


@app.command()
def run(
    spec: Path = SPEC_ARG,
    overrides: Optional[list[str]] = SET_OPT,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the native backend config; run nothing"),
    fresh: bool = typer.Option(False, "--fresh", help="move an existing run directory aside and start over"),
) -> None:
    """Run a spec: warm-up (tiny preset, cached), RL with the MTP regime, held-out eval, checkpoint, summary."""
    from occctl.runner import plan_run, run_spec
    from occctl.spec import dump_spec, load_spec

    try:
        resolved = load_spec(spec, overrides or [])
        if dry_run:
            plan = plan_run(resolved)
            out.print(dump_spec(resolved), highlight=False)
            out.print(json.dumps(plan.native_config, indent=2), highlight=False)
            return
        summary = run_spec(resolved, fresh=fresh, console=err)
    except OccError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)
    out.print_json(json.dumps(summary))


@app.command()
def validate(spec: list[Path] = typer.Argument(..., help="one or more spec files"),
             overrides: Optional[list[str]] = SET_OPT) -> None:
    """Check specs without running them; every problem is reported, one per line."""
    from occctl.runner import plan_run
    from occctl.spec import load_spec

    failed: list[OccError] = []
    for path in spec:
        try:
            resolved = load_spec(path, overrides or [])
            plan_run(resolved)
            out.print(f"ok: {path} (name {resolved.name}, backend {resolved.backend}, "
                      f"regime {resolved.mtp.regime if resolved.mtp.enabled else 'none'})", highlight=False)
        except OccError as e:
            failed.append(e)
    if failed:
        if _state["debug"]:
            raise failed[0]
        for e in failed:
            err.print(f"[bold red]error:[/] {e.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(max(e.exit_code for e in failed))


@app.command()
def schema(output: Optional[Path] = typer.Option(None, "--out", help="write to a file instead of stdout")) -> None:
    """Print the spec's JSON Schema (for editor completion and validation)."""
    from occctl.spec import spec_schema

    text = json.dumps(spec_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
