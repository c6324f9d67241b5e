"""checkpoint -> samples -> grades -> summary: ``occctl eval``.

math suites: prompts (DeepScaleR), generations cached per (checkpoint, suite, prompt, sampling) and resumed,
grades (per grader, in the grading pool) and MTP draft acceptance cached beside them, then avg@k / pass@k per
benchmark, the unweighted suite mean, results JSON + markdown, and the MLflow mirror. The tiny suite is the
run's own held-out eval (``evaluate_heldout``) with the run's k, temperature, token budget and seed.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape

from occctl.errors import SpecError
from occctl.eval import cache as evcache
from occctl.eval.engines import check_engine
from occctl.eval.graders import DEFAULT_GRADER, grader_slug, resolve_grader
from occctl.eval.pool import DEFAULT_TIMEOUT_S, GradingPool, Job
from occctl.eval.prompts import encode_prompt, fit_prompt, render_prompt, resolve_mode
from occctl.eval.suites import INSTRUCTION, Sampling, Suite, get_suite, load_benchmarks, select_benchmarks
from occctl.eval.results import publish
from occctl.eval.tables import progress_bar as _progress
from occctl.eval.targets import Target

TASK_GRADER = "exact_match@1"  # the embedded task's reward (occctl.tasks.arith.exact_match)


@dataclass(frozen=True)
class EvalOptions:
    suite: str = "math6"
    k: int | None = None
    limit: int | None = None
    graders: tuple[str, ...] = ()
    benchmarks: tuple[str, ...] = ()
    engine: str = "hf"
    engine_url: str | None = None
    tp_size: int = 1
    batch_size: int | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    data_dir: str | None = None
    from_hub: bool = False
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    seed: int | None = None
    prompt: str = "auto"
    timeout_s: float = DEFAULT_TIMEOUT_S
    workers: int | None = None
    mlflow: bool = True


def plan_lengths(context: int | None, requested: int) -> tuple[int, int | None]:
    """(max new tokens, prompt room): a model whose context cannot hold the request gets half of it for the
    answer and the rest for a left-truncated prompt (the caller reports it)."""
    if not context:
        return requested, None
    new = min(requested, max(1, context // 2))
    return new, context - new


def evaluate(target: Target, opts: EvalOptions, console: Console) -> list[dict[str, Any]]:
    """Evaluate ``target`` on ``opts.suite``; one result dict per grader (also written under the target)."""
    _check_numbers(opts)
    suite = get_suite(opts.suite)
    if suite.kind == "task":
        return [evaluate_task(target, suite, opts, console)]
    graders = [resolve_grader(g) for g in (opts.graders or (DEFAULT_GRADER,))]
    check_engine(opts.engine)
    names = select_benchmarks(suite, list(opts.benchmarks))
    problems = load_benchmarks(suite, names, opts.data_dir, opts.limit, opts.from_hub)
    base = suite.sampling
    sampling = Sampling(k=opts.k or base.k, temperature=_pick(opts.temperature, base.temperature),
                        top_p=_pick(opts.top_p, base.top_p), max_new_tokens=opts.max_new_tokens or base.max_new_tokens,
                        seed=_pick(opts.seed, base.seed))
    tok, context = _tokenizer(target.model, opts.trust_remote_code)
    mode = resolve_mode(tok, opts.prompt)
    max_new, room = plan_lengths(context, sampling.max_new_tokens)
    prompts: dict[str, dict[str, list[int]]] = {}
    truncated = 0
    for name in names:
        prompts[name] = {}
        for p in problems[name]:
            ids = encode_prompt(tok, render_prompt(tok, p.problem, mode), mode)
            prompts[name][p.id], cut = fit_prompt(ids, room, tok.bos_token_id) if room else (ids, False)
            truncated += cut
    n_prompts = sum(len(v) for v in problems.values())
    if max_new < sampling.max_new_tokens or truncated:
        console.print(f"[yellow]warning:[/] {escape(target.label)} has a {context}-token context: max_new_tokens "
                      f"{sampling.max_new_tokens} -> {max_new}, {truncated}/{n_prompts} prompts left-truncated to "
                      f"{room} tokens (recorded in the results)", highlight=False)
    key = {"model": evcache.fingerprint(target.model), "suite": suite.name,
           "prompt": {"mode": mode, "instruction": INSTRUCTION, "room": room}, "sampling": sampling.key_fields()}
    directory = evcache.open_cache(target.base_dir / "eval" / suite.name, key)
    with evcache.locked(directory):
        engine = None
        try:
            engine = _generate(directory, names, problems, prompts, sampling, max_new, target, opts, console)
            gens = {n: evcache.read_rows(evcache.generations_path(directory, n)) for n in names}
            accept = _acceptance(directory, names, problems, prompts, gens, sampling.k, target, engine, console)
        finally:
            if engine is not None:
                engine.close()
        grades = _grade(directory, graders, names, problems, gens, sampling.k, opts, console)
        effective = {"max_new_tokens": max_new, "prompt_room": room, "prompts_truncated": truncated,
                     "context_length": context}
        results = [summarize(suite, names, problems, grades[g], accept, g, sampling, opts, target, directory,
                             {"mode": mode, "instruction": INSTRUCTION}, effective, gens) for g in graders]
        return publish(results, target, suite, opts.mlflow, directory, console)


def _check_numbers(opts: EvalOptions) -> None:
    for flag, value, ok, rule in (("-k", opts.k, lambda v: v >= 1, ">= 1"),
                                  ("--limit", opts.limit, lambda v: v >= 1, ">= 1"),
                                  ("--temperature", opts.temperature, lambda v: v >= 0, ">= 0 (0 = greedy)"),
                                  ("--top-p", opts.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
                                  ("--max-new-tokens", opts.max_new_tokens, lambda v: v >= 1, ">= 1"),
                                  ("--timeout", opts.timeout_s, lambda v: v > 0, "> 0"),
                                  ("--workers", opts.workers, lambda v: v >= 1, ">= 1")):
        if value is not None and not ok(value):
            raise SpecError(f"{flag} must be {rule}; got {value}")


def _pick(value, default):
    return default if value is None else value


def _tokenizer(model: str, trust_remote_code: bool):
    from transformers import AutoConfig, AutoTokenizer

    from occctl.errors import EnvError
    from occctl.eval.engines import quiet_transformers

    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code, padding_side="left")
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise EnvError(f"cannot load model {model}: {str(e).splitlines()[0]}",
                       hint="pass a local HF directory, or a hub id on a machine with network access") from None
    return tok, getattr(config, "max_position_embeddings", None)


def _generate(directory, names, problems, prompts, sampling, max_new, target, opts, console):
    """Generate the samples the cache lacks, appending each batch as it finishes; returns the engine (or None)."""
    from occctl.eval.engines import make_engine

    todo = []
    for name in names:
        have = evcache.read_rows(evcache.generations_path(directory, name))
        todo += [(name, p, s) for p in problems[name] for s in range(sampling.k) if (p.id, s) not in have]
    total = sum(len(v) for v in problems.values()) * sampling.k
    if not todo:
        console.print(f"generations: all {total} cached in {directory}", highlight=False, markup=False)
        return None
    console.print(f"generations: {total - len(todo)} of {total} cached; generating {len(todo)} with "
                  f"engine {opts.engine}", highlight=False)
    chunk = opts.batch_size or (16 if opts.engine == "hf" else 512)
    engine = make_engine(opts.engine, target.model, dtype=opts.dtype, batch_size=chunk, url=opts.engine_url,
                         tp_size=opts.tp_size, trust_remote_code=opts.trust_remote_code)
    with _progress(console) as progress:
        task = progress.add_task("generate", total=len(todo))
        for name in names:
            rows = [t for t in todo if t[0] == name]
            progress.update(task, description=f"generate {name}")
            with evcache.RowWriter(evcache.generations_path(directory, name)) as writer:
                for i in range(0, len(rows), chunk):
                    part = rows[i:i + chunk]
                    seed = zlib.crc32(f"{sampling.seed}/{name}/{part[0][1].id}/{part[0][2]}".encode())
                    outs = engine.generate([prompts[name][p.id] for _, p, _ in part], sampling, max_new, seed)
                    writer.write([{"id": p.id, "sample": s, "text": c.text, "token_ids": c.token_ids,
                                   "finish": c.finish_reason, "prompt_tokens": len(prompts[name][p.id]),
                                   "engine": engine.name} for (_, p, s), c in zip(part, outs)])
                    progress.advance(task, len(part))
    return engine


def _acceptance(directory, names, problems, prompts, gens, k, target, engine, console):
    """Per-sample MTP draft acceptance (greedy) on the model's own generations, for checkpoints with a head."""
    if not target.has_mtp_head:
        return None
    have = {n: evcache.read_rows(evcache.acceptance_path(directory, n)) for n in names}
    todo = [(n, p, s) for n in names for p in problems[n] for s in range(k) if (p.id, s) not in have[n]]
    if todo:
        import torch

        from occctl.eval.heldout import mtp_acceptance_on
        from occctl.models import load_checkpoint

        loaded = getattr(engine, "loaded", None)
        if loaded is None or loaded.mtp_head is None:
            loaded = load_checkpoint(target.model, dtype="float32" if not torch.cuda.is_available() else "bfloat16",
                                     new_head_if_missing=False)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            loaded.model.to(device).eval()
            loaded.mtp_head.to(device).eval()
        device = next(loaded.model.parameters()).device
        with _progress(console) as progress:
            task = progress.add_task("MTP acceptance", total=len(todo))
            for name in names:
                rows = []
                for _, p, s in (t for t in todo if t[0] == name):
                    prompt, gen = prompts[name][p.id], gens[name][(p.id, s)]["token_ids"]
                    hits = 0
                    if gen and len(prompt) >= 2:
                        seq = torch.tensor([prompt + gen], device=device)  # [1, P + C]
                        hits = round(mtp_acceptance_on(loaded, seq, len(prompt)) * len(gen))
                    rows.append({"id": p.id, "sample": s, "hits": hits, "tokens": len(gen) if len(prompt) >= 2 else 0})
                    progress.advance(task)
                with evcache.RowWriter(evcache.acceptance_path(directory, name)) as writer:
                    writer.write(rows)
        have = {n: evcache.read_rows(evcache.acceptance_path(directory, n)) for n in names}
    return have


def _grade(directory, graders, names, problems, gens, k, opts, console):
    """Grades per grader (cached per sample; only missing ones are graded, in the pool)."""
    out: dict[str, dict[str, dict]] = {}
    pool = None
    try:
        for grader in graders:
            slug = grader_slug(grader)
            have = {n: evcache.read_rows(evcache.grades_path(directory, slug, n)) for n in names}
            todo = [(n, p, s) for n in names for p in problems[n] for s in range(k) if (p.id, s) not in have[n]]
            if todo:
                pool = pool or GradingPool(opts.workers, opts.timeout_s)
                with _progress(console) as progress:
                    task = progress.add_task(f"grade {grader}", total=len(todo))
                    for i in range(0, len(todo), 512):
                        part = todo[i:i + 512]
                        jobs = [Job(grader, gens[n][(p.id, s)]["text"], p.answers) for n, p, s in part]
                        outcomes = pool.grade(jobs, on_done=lambda *_: progress.advance(task))
                        for name in names:
                            rows = [{"id": p.id, "sample": s, "correct": o.correct,
                                     "pred": None if o.pred is None else o.pred[:500], "status": o.status}
                                    for (n, p, s), o in zip(part, outcomes) if n == name]
                            if rows:
                                with evcache.RowWriter(evcache.grades_path(directory, slug, name)) as writer:
                                    writer.write(rows)
                have = {n: evcache.read_rows(evcache.grades_path(directory, slug, n)) for n in names}
            out[grader] = have
    finally:
        if pool is not None:
            pool.close()
    return out


def suite_label(suite: str, limit: int | None) -> str:
    """The metric-name segment: ``math6``, or ``math6_limit3`` for a subset (never mixed with full scores)."""
    return suite if limit is None else f"{suite}_limit{limit}"


def score(per_problem: list[list[bool]]) -> tuple[float, float]:
    """(avg@k, pass@k): the mean over all k samples of all problems, and the share of problems with at least one
    correct sample (DeepScaleR's pass@1-as-mean and pass@k)."""
    flat = [c for per in per_problem for c in per]
    return sum(flat) / len(flat), sum(any(per) for per in per_problem) / len(per_problem)


def suite_mean(values: list[float]) -> float:
    """The paper's suite number: the unweighted mean over benchmarks (AIME's 30 count as much as MATH's 500)."""
    return sum(values) / len(values)


def summarize(suite: Suite, names, problems, grades, accept, grader, sampling, opts, target, directory, prompt,
              effective, gens) -> dict[str, Any]:
    k, label, slug = sampling.k, suite_label(suite.name, opts.limit), grader_slug(grader)
    benchmarks: dict[str, dict[str, Any]] = {}
    metrics: dict[str, float] = {}
    for name in names:
        rows = [[grades[name][(p.id, s)] for s in range(k)] for p in problems[name]]
        flat = [r for per in rows for r in per]
        avg, passed = score([[bool(r["correct"]) for r in per] for per in rows])
        entry: dict[str, Any] = {
            "n_problems": len(rows), "k": k, "avg_at_k": avg, "pass_at_k": passed,
            "timeouts": sum(r["status"] == "timeout" for r in flat),
            "errors": sum(r["status"] not in ("ok", "timeout") for r in flat),
            "truncated_by_length": sum(gens[name][(p.id, s)]["finish"] == "length"
                                       for p in problems[name] for s in range(k)),
        }
        metrics[f"eval/{label}/{name}/avg_at_{k}/{slug}"] = entry["avg_at_k"]
        metrics[f"eval/{label}/{name}/pass_at_{k}/{slug}"] = entry["pass_at_k"]
        if accept is not None:
            acc = [accept[name][(p.id, s)] for p in problems[name] for s in range(k)]
            tokens = sum(a["tokens"] for a in acc)
            entry["mtp_acceptance"] = sum(a["hits"] for a in acc) / tokens if tokens else None
            entry["mtp_tokens"] = tokens
            if entry["mtp_acceptance"] is not None:
                metrics[f"eval/{label}/{name}/mtp_acceptance"] = entry["mtp_acceptance"]
        benchmarks[name] = entry
    average = None
    if list(names) == list(suite.benchmarks):  # the paper's suite mean: unweighted over benchmarks
        average = {"avg_at_k": suite_mean([b["avg_at_k"] for b in benchmarks.values()]),
                   "pass_at_k": suite_mean([b["pass_at_k"] for b in benchmarks.values()])}
        metrics[f"eval/{label}/avg_at_{k}/{slug}"] = average["avg_at_k"]
        metrics[f"eval/{label}/pass_at_{k}/{slug}"] = average["pass_at_k"]
    overall_acc = None
    if accept is not None:
        tokens = sum(b.get("mtp_tokens", 0) for b in benchmarks.values())
        hits = sum((b["mtp_acceptance"] or 0) * b["mtp_tokens"] for b in benchmarks.values())
        overall_acc = hits / tokens if tokens else None
        if overall_acc is not None:
            metrics[f"eval/{label}/mtp_acceptance"] = overall_acc
    return {"suite": suite.name, "suite_label": label, "grader": grader, "model": target.model,
            "run": target.run_name, "engines": sorted({g["engine"] for n in names for g in gens[n].values()}),
            "sampling": {"k": k, **sampling.key_fields()}, "effective": effective, "prompt": prompt,
            "limit": opts.limit, "benchmarks": benchmarks, "average": average, "mtp_acceptance": overall_acc,
            "metrics": metrics, "cache": str(directory), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ---- the tiny suite: the run's own held-out eval ---------------------------------------------------------


def evaluate_task(target: Target, suite: Suite, opts: EvalOptions, console: Console) -> dict[str, Any]:
    from occctl.eval.engines import quiet_transformers
    from occctl.eval.heldout import evaluate_heldout
    from occctl.models import load_checkpoint
    from occctl.spec import EvalSpec, TaskSpec, TrainSpec
    from occctl.tasks.arith import heldout_problems

    if any(g not in (TASK_GRADER, "exact_match") for g in opts.graders):
        raise SpecError(f"the {suite.name} suite is graded by the task's reward ({TASK_GRADER}); drop --grader")
    spec = target.spec
    task = spec.task if spec else TaskSpec()
    ev, train = (spec.eval, spec.train) if spec else (EvalSpec(), TrainSpec())
    k = opts.k or ev.samples_per_problem
    temperature, seed = _pick(opts.temperature, ev.temperature), _pick(opts.seed, train.seed)
    max_new = opts.max_new_tokens or train.max_new_tokens
    problems = heldout_problems(task)[:opts.limit] if opts.limit else heldout_problems(task)
    quiet_transformers()
    loaded = load_checkpoint(target.model, new_head_if_missing=False)
    console.print(f"tiny: {len(problems)} held-out problems x {k} samples (T={temperature}, seed {seed})",
                  highlight=False)
    res = evaluate_heldout(loaded, problems, k, temperature, max_new, seed)
    label, slug = suite_label(suite.name, opts.limit), grader_slug(TASK_GRADER)
    entry = {"n_problems": len(problems), "k": k, **res}
    metrics = {f"eval/{label}/heldout/avg_at_{k}/{slug}": res["avg_at_k"],
               f"eval/{label}/heldout/pass_at_{k}/{slug}": res["pass_at_k"],
               f"eval/{label}/heldout/greedy/{slug}": res["greedy"]}
    if "mtp_acceptance" in res:
        metrics[f"eval/{label}/heldout/mtp_acceptance"] = res["mtp_acceptance"]
    result = {"suite": suite.name, "suite_label": label, "grader": TASK_GRADER, "model": target.model,
              "run": target.run_name, "sampling": {"k": k, "temperature": temperature, "top_p": 1.0,
                                                   "max_new_tokens": max_new, "seed": seed},
              "limit": opts.limit, "benchmarks": {"heldout": entry}, "average": {"avg_at_k": res["avg_at_k"],
                                                                                  "pass_at_k": res["pass_at_k"]},
              "mtp_acceptance": res.get("mtp_acceptance"), "metrics": metrics,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if target.summary and opts.limit is None:
        ref = target.summary.get("heldout_acc_after")
        same_k = target.summary.get("heldout_k") == k
        result["run_summary"] = {"heldout_acc_after": ref, "heldout_k": target.summary.get("heldout_k"),
                                 "matches": same_k and ref == res["avg_at_k"]}
    directory = target.base_dir / "eval" / suite.name
    return publish([result], target, suite, opts.mlflow, directory, console)[0]
