"""The math suites' scorer: prompts -> generations (cached per checkpoint, suite, prompt and sampling, resumed) ->
MTP draft acceptance (cached beside them) -> grades (per grader, in the grading pool) -> avg@k / pass@k."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from occctl.eval import cache as evcache
from occctl.eval.engines import check_engine, tokenizer_and_config
from occctl.eval.graders import DEFAULT_GRADER, grader_slug, resolve_grader
from occctl.eval.job import EvalJob, EvalOptions, Scores, pick, suite_label
from occctl.eval.pool import GradingPool, Job
from occctl.eval.prompts import encode_prompt, fit_prompt, render_prompt, resolve_mode
from occctl.eval.results import BenchmarkResult, Generation, GradingCounts, MtpAcceptance
from occctl.eval.suites import INSTRUCTION, BenchmarkProblem, Sampling, Suite, load_benchmarks, select_benchmarks
from occctl.eval.targets import Target
from occctl.progress import progress_bar as _progress


def plan_math(target: Target, suite: Suite, opts: EvalOptions) -> EvalJob:
    """Graders, benchmarks, problems and the suite's sampling (options given override it)."""
    graders = tuple(dict.fromkeys(resolve_grader(g) for g in (opts.graders or (DEFAULT_GRADER,))))
    check_engine(opts.engine)
    names = tuple(select_benchmarks(suite, list(opts.benchmarks)))
    problems = load_benchmarks(suite, list(names), opts.data_dir, opts.limit, opts.from_hub)
    base = suite.sampling
    sampling = Sampling(k=opts.k or base.k, temperature=pick(opts.temperature, base.temperature),
                        top_p=pick(opts.top_p, base.top_p), max_new_tokens=opts.max_new_tokens or base.max_new_tokens,
                        seed=pick(opts.seed, base.seed))
    return EvalJob(target, suite, opts, graders, names, sampling, suite_label(suite.name, opts.limit), problems)


def score(per_problem: list[list[bool]]) -> tuple[float, float]:
    """(avg@k, pass@k): the mean over all k samples of all problems, and the share of problems with at least one
    correct sample (DeepScaleR's pass@1-as-mean and pass@k)."""
    flat = [c for per in per_problem for c in per]
    return sum(flat) / len(flat), sum(any(per) for per in per_problem) / len(per_problem)


def plan_lengths(context: int | None, requested: int) -> tuple[int, int | None]:
    """(max new tokens, prompt room): a model whose context cannot hold the request gets half of it for the
    answer and the rest for a left-truncated prompt (the caller reports it)."""
    if not context:
        return requested, None
    new = min(requested, max(1, context // 2))
    return new, context - new


@dataclass(frozen=True)
class PromptSet:
    """The encoded prompts of a math job and the lengths the model's context allows."""

    mode: str  # "chat" or "plain"
    ids: dict[str, dict[str, list[int]]]  # benchmark -> problem id -> token ids
    max_new_tokens: int
    room: int | None  # prompt tokens kept (None: the context holds everything)
    context: int | None
    truncated: int  # prompts left-truncated to fit

    def effective(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "prompt_room": self.room, "prompts_truncated": self.truncated,
                "context_length": self.context}


def score_math(job: EvalJob, console: Console) -> Scores:
    prompts = _prompts(job, console)
    key = {"model": evcache.fingerprint(job.target.model), "suite": job.suite.name,
           "prompt": {"mode": prompts.mode, "instruction": INSTRUCTION, "room": prompts.room},
           "sampling": job.sampling.key_fields()}
    directory = evcache.open_cache(job.target.base_dir / "eval" / job.suite.name, key)
    with evcache.locked(directory):
        engine = None
        try:
            engine = _generate(job, prompts, directory, console)
            gens = {n: evcache.read_rows(evcache.generations_path(directory, n)) for n in job.benchmarks}
            accept = _acceptance(job, prompts, gens, engine, directory, console)
        finally:
            if engine is not None:
                engine.close()
        grades = _grade(job, gens, directory, console)
    generation = Generation(engines=sorted({g["engine"] for n in job.benchmarks for g in gens[n].values()}),
                            effective=prompts.effective(), prompt={"mode": prompts.mode, "instruction": INSTRUCTION},
                            cache=directory)
    benchmarks = {g: {n: _math_benchmark(job, n, grades[g][n], gens[n], accept and accept[n]) for n in job.benchmarks}
                  for g in job.graders}
    return Scores(benchmarks, directory, generation, grade_timeout_s=job.options.timeout_s)


def _math_benchmark(job: EvalJob, name: str, grades: dict, gens: dict, accept: dict | None) -> BenchmarkResult:
    keys = [(p.id, s) for p in job.problems[name] for s in range(job.sampling.k)]
    avg, passed = score([[bool(grades[(p.id, s)]["correct"]) for s in range(job.sampling.k)]
                         for p in job.problems[name]])
    statuses = [grades[key]["status"] for key in keys]
    mtp = None
    if accept is not None:
        tokens = sum(accept[key]["tokens"] for key in keys)
        mtp = MtpAcceptance(sum(accept[key]["hits"] for key in keys) / tokens if tokens else None, tokens)
    return BenchmarkResult(
        n_problems=len(job.problems[name]), k=job.sampling.k, avg_at_k=avg, pass_at_k=passed,
        grading=GradingCounts(timeouts=statuses.count("timeout"),
                              errors=sum(s not in ("ok", "timeout") for s in statuses),
                              worker_replacements=sum(_replacements(grades[key]) for key in keys)),
        truncated_by_length=sum(gens[key]["finish"] == "length" for key in keys), mtp=mtp,
        rollout=rollout_figures([gens[key] for key in keys]))


def rollout_figures(rows: list[dict]) -> dict[str, float] | None:
    """Generation speed over the samples generated with timing (``share``; cached older rows have none), and the
    speculative acceptance over those generated speculatively; None when no sample was timed."""
    timed = [r for r in rows if "share" in r]
    if not timed:
        return None
    seconds = sum(r["share"]["seconds"] for r in timed)
    out = {"tokens_per_s": sum(len(r["token_ids"]) for r in timed) / seconds if seconds else float("nan"),
           "timed_samples": len(timed)}
    drafted = [r["share"] for r in timed if "drafts" in r["share"]]
    if drafted:
        totals = {k: sum(s[k] for s in drafted) for k in ("drafts", "accepted", "tokens", "forwards")}
        out.update(spec_accept_rate=totals["accepted"] / totals["drafts"] if totals["drafts"] else float("nan"),
                   spec_mean_accept_len=totals["tokens"] / totals["forwards"], spec_samples=len(drafted))
    return out


def _prompts(job: EvalJob, console: Console) -> PromptSet:
    tok, config = tokenizer_and_config(job.target.model, job.options.trust_remote_code)
    tok.padding_side = "left"
    context = getattr(config, "max_position_embeddings", None)
    mode = resolve_mode(tok, job.options.prompt)
    max_new, room = plan_lengths(context, job.sampling.max_new_tokens)
    ids: dict[str, dict[str, list[int]]] = {}
    truncated = 0
    for name in job.benchmarks:
        ids[name] = {}
        for p in job.problems[name]:
            encoded = encode_prompt(tok, render_prompt(tok, p.problem, mode), mode)
            ids[name][p.id], cut = fit_prompt(encoded, room, tok.bos_token_id) if room else (encoded, False)
            truncated += cut
    n_prompts = sum(len(v) for v in job.problems.values())
    if max_new < job.sampling.max_new_tokens or truncated:
        console.print(f"[yellow]warning:[/] {escape(job.target.label)} has a {context}-token context: max_new_tokens "
                      f"{job.sampling.max_new_tokens} -> {max_new}, {truncated}/{n_prompts} prompts left-truncated "
                      f"to {room} tokens (recorded in the results)", highlight=False)
    return PromptSet(mode, ids, max_new, room, context, truncated)


def _missing(job: EvalJob, path: Callable[[str], Path],
             redo: Callable[[dict], bool] = lambda row: False) -> list[tuple[str, BenchmarkProblem, int]]:
    """(benchmark, problem, sample) for every sample the cache file ``path(benchmark)`` lacks (or holds a row
    that ``redo`` rejects), in order."""
    out = []
    for name in job.benchmarks:
        have = evcache.read_rows(path(name))
        out += [(name, p, s) for p in job.problems[name] for s in range(job.sampling.k)
                if (p.id, s) not in have or redo(have[(p.id, s)])]
    return out


def _generate(job: EvalJob, prompts: PromptSet, directory: Path, console: Console):
    """Generate the samples the cache lacks, appending each batch as it finishes; returns the engine (or None)."""
    from occctl.eval.engines import make_engine

    opts, sampling = job.options, job.sampling
    todo = _missing(job, lambda n: evcache.generations_path(directory, n))
    total = sum(len(v) for v in job.problems.values()) * sampling.k
    if not todo:
        console.print(f"generations: all {total} cached in {directory}", highlight=False, markup=False)
        return None
    console.print(f"generations: {total - len(todo)} of {total} cached; generating {len(todo)} with "
                  f"engine {opts.engine}", highlight=False)
    chunk = opts.batch_size or (16 if opts.engine == "hf" else 512)
    engine = make_engine(opts.engine, job.target.model, dtype=opts.dtype, batch_size=chunk, url=opts.engine_url,
                         tp_size=opts.tp_size, trust_remote_code=opts.trust_remote_code, speculative=opts.speculative)
    with _progress(console) as progress:
        task = progress.add_task("generate", total=len(todo))
        for name in job.benchmarks:
            rows = [t for t in todo if t[0] == name]
            ids = prompts.ids[name]
            progress.update(task, description=f"generate {name}")
            with evcache.RowWriter(evcache.generations_path(directory, name)) as writer:
                for i in range(0, len(rows), chunk):
                    part = rows[i:i + chunk]
                    seed = zlib.crc32(f"{sampling.seed}/{name}/{part[0][1].id}/{part[0][2]}".encode())
                    outs = engine.generate([ids[p.id] for _, p, _ in part], sampling, prompts.max_new_tokens, seed)
                    writer.write([{"id": p.id, "sample": s, "text": c.text, "token_ids": c.token_ids,
                                   "finish": c.finish_reason, "prompt_tokens": len(ids[p.id]),
                                   "engine": engine.name, **({"share": c.share} if c.share else {})}
                                  for (_, p, s), c in zip(part, outs)])
                    progress.advance(task, len(part))
    return engine


def _acceptance(job: EvalJob, prompts: PromptSet, gens: dict, engine, directory: Path, console: Console):
    """Per-sample MTP draft acceptance (greedy) on the model's own generations, for checkpoints with a head."""
    if not job.target.has_mtp_head:
        return None
    todo = _missing(job, lambda n: evcache.acceptance_path(directory, n))
    if todo:
        import torch

        from occctl.heldout import mtp_acceptance_on

        loaded = _acceptance_model(job.target.model, engine)
        device = next(loaded.model.parameters()).device
        with _progress(console) as progress:
            task = progress.add_task("MTP acceptance", total=len(todo))
            for name in job.benchmarks:
                rows = []
                for _, p, s in (t for t in todo if t[0] == name):
                    prompt, gen = prompts.ids[name][p.id], gens[name][(p.id, s)]["token_ids"]
                    hits = 0
                    if gen and len(prompt) >= 2:
                        seq = torch.tensor([prompt + gen], device=device)  # [1, P + C]
                        hits = round(mtp_acceptance_on(loaded, seq, len(prompt)) * len(gen))
                    rows.append({"id": p.id, "sample": s, "hits": hits, "tokens": len(gen) if len(prompt) >= 2 else 0})
                    progress.advance(task)
                with evcache.RowWriter(evcache.acceptance_path(directory, name)) as writer:
                    writer.write(rows)
    return {n: evcache.read_rows(evcache.acceptance_path(directory, n)) for n in job.benchmarks}


def _acceptance_model(model: str, engine):
    """The engine's loaded model when it has the MTP head, else the checkpoint loaded here (GPU when present)."""
    import torch

    from occctl.models import load_checkpoint

    loaded = getattr(engine, "loaded", None)
    if loaded is not None and loaded.mtp_head is not None:
        return loaded
    loaded = load_checkpoint(model, dtype="float32" if not torch.cuda.is_available() else "bfloat16",
                             new_head_if_missing=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded.model.to(device).eval()
    loaded.mtp_head.to(device).eval()
    return loaded


def _grade(job: EvalJob, gens: dict, directory: Path, console: Console) -> dict[str, dict[str, dict]]:
    """Grades per grader and benchmark, cached per sample: missing ones, and ones that timed out before (perhaps
    under a shorter ``--grade-timeout``), are graded in the pool."""
    out: dict[str, dict[str, dict]] = {}
    pool = None
    try:
        for grader in job.graders:
            slug = grader_slug(grader)
            todo = _missing(job, lambda n: evcache.grades_path(directory, slug, n), _timed_out)
            if todo:
                pool = pool or GradingPool(job.options.workers, job.options.timeout_s)
                with _progress(console) as progress:
                    task = progress.add_task(f"grade {grader}", total=len(todo))
                    for i in range(0, len(todo), 512):
                        part = todo[i:i + 512]
                        jobs = [Job(grader, gens[n][(p.id, s)]["text"], p.answers) for n, p, s in part]
                        outcomes = pool.grade(jobs, on_done=lambda *_: progress.advance(task))
                        for name in job.benchmarks:
                            rows = [{"id": p.id, "sample": s, "correct": o.correct,
                                     "pred": None if o.pred is None else o.pred[:500], "status": o.status,
                                     "replaced": o.replaced}
                                    for (n, p, s), o in zip(part, outcomes) if n == name]
                            if rows:
                                with evcache.RowWriter(evcache.grades_path(directory, slug, name)) as writer:
                                    writer.write(rows)
            out[grader] = {n: evcache.read_rows(evcache.grades_path(directory, slug, n)) for n in job.benchmarks}
    finally:
        if pool is not None:
            pool.close()
    return out


def _timed_out(row: dict) -> bool:
    return row["status"] == "timeout"


def _replacements(row: dict) -> int:
    """Workers replaced while grading this answer (rows cached before it was recorded: one per timeout or crash)."""
    return int(row.get("replaced", row["status"] in ("timeout", "crash")))

