"""The task suites' scorer (``tiny``): the training run's own held-out eval (``evaluate_heldout``) with the run's k,
temperature, token budget and seed, graded by the task's reward. ``--speculative`` adds the MTP head's greedy draft
acceptance on the held-out prompts: occctl's own decoder's, and with ``--engine vllm`` vLLM's ``mtp`` drafter's on
the same prompts and checkpoint beside it (``occctl.eval.drafting``); the scores stay the held-out eval's."""

from __future__ import annotations

from rich.console import Console

from occctl.errors import SpecError
from occctl.eval.job import EvalJob, EvalOptions, Scores, pick, suite_label
from occctl.eval.results import BenchmarkResult, MtpAcceptance
from occctl.eval.suites import Sampling, Suite
from occctl.eval.targets import Target

TASK_GRADER = "exact_match@1"  # the default task's (arith) check; a run's task names its own (occctl.tasks.grader_of)


def plan_task(target: Target, suite: Suite, opts: EvalOptions) -> EvalJob:
    """The run's own held-out eval settings (a checkpoint without a run: the spec defaults), top-p 1."""
    from occctl.spec import EvalSpec, TrainSpec

    if opts.engine != "hf" and not (opts.engine == "vllm" and opts.speculative):
        raise SpecError(f"--engine {opts.engine}: the {suite.name} suite scores through the training run's held-out "
                        "eval (hf); only --engine vllm --speculative is used there (vLLM's greedy draft acceptance "
                        "beside occctl's)", hint="drop --engine, or add --speculative with --engine vllm")
    from occctl.tasks import grader_of

    grader = grader_of(target.spec.task) if target.spec else TASK_GRADER  # chain: final_sum@1
    if any(g not in (grader, grader.split("@")[0]) for g in opts.graders):
        raise SpecError(f"the {suite.name} suite is graded by the task's reward ({grader}); drop --grader")
    not_applied = [flag for flag, given in (
        ("--engine-url", opts.engine_url), ("--tp-size", opts.tp_size != 1),
        ("--batch-size", opts.batch_size is not None), ("--dtype", opts.dtype != "auto"),
        ("--top-p", opts.top_p is not None), ("--benchmarks", opts.benchmarks), ("--data-dir", opts.data_dir),
        ("--from-hub", opts.from_hub), ("--prompt", opts.prompt != "auto")) if given]
    if not_applied:
        raise SpecError(f"{', '.join(not_applied)}: not used by the {suite.name} suite, which runs the training "
                        "run's held-out eval (its model in float32 on the hf engine, top-p 1)",
                        hint=f"drop {', '.join(not_applied)}")
    ev, train = (target.spec.eval, target.spec.train) if target.spec else (EvalSpec(), TrainSpec())
    sampling = Sampling(k=opts.k or ev.samples_per_problem, temperature=pick(opts.temperature, ev.temperature),
                        top_p=1.0, max_new_tokens=opts.max_new_tokens or train.max_new_tokens,
                        seed=pick(opts.seed, train.seed))
    return EvalJob(target, suite, opts, (grader,), suite.benchmarks, sampling,
                   suite_label(suite.name, opts.limit), {})



def score_task(job: EvalJob, console: Console) -> Scores:
    from occctl.eval.engines import quiet_transformers
    from occctl.heldout import evaluate_heldout
    from occctl.models import load_checkpoint
    from occctl.spec import TaskSpec
    from occctl.tasks import get_task

    target, sampling, limit = job.target, job.sampling, job.options.limit
    task_spec = target.spec.task if target.spec else TaskSpec()
    task = get_task(task_spec)
    problems = task.heldout_problems(task_spec)
    problems = problems[:limit] if limit else problems
    quiet_transformers()
    _check_tokenizer(target.model)
    loaded = load_checkpoint(target.model, new_head_if_missing=False)
    console.print(f"tiny: {len(problems)} held-out problems x {sampling.k} samples (T={sampling.temperature}, seed "
                  f"{sampling.seed})", highlight=False)
    res = evaluate_heldout(loaded, problems, sampling.k, sampling.temperature, sampling.max_new_tokens, sampling.seed,
                           correct=task.is_correct)
    mtp = MtpAcceptance(res["mtp_acceptance"]) if "mtp_acceptance" in res else None
    (name,) = job.benchmarks
    rollout = _drafting(job, loaded, problems, console) if job.options.speculative else None
    heldout = BenchmarkResult(n_problems=len(problems), k=sampling.k, avg_at_k=res["avg_at_k"],
                              pass_at_k=res["pass_at_k"], greedy=res["greedy"], mtp=mtp, rollout=rollout)
    run_summary = None
    if target.summary and limit is None:
        ref = target.summary.get("heldout_acc_after")
        same_k = target.summary.get("heldout_k") == sampling.k
        run_summary = {"heldout_acc_after": ref, "heldout_k": target.summary.get("heldout_k"),
                       "matches": same_k and ref == res["avg_at_k"]}
    return Scores({job.graders[0]: {name: heldout}}, target.base_dir / "eval" / job.suite.name, run_summary=run_summary)


def _drafting(job: EvalJob, loaded, problems, console: Console) -> dict[str, float]:
    """Greedy draft acceptance on the held-out prompts: occctl's decoder (``occctl_spec_*``), and the engine's
    (``spec_*``: vLLM's counters with --engine vllm, else occctl's again)."""
    from occctl.eval.drafting import OCCCTL_KEYS, engine_greedy_drafting, occctl_greedy_drafting

    if loaded.mtp_head is None:
        raise SpecError(f"--speculative drafts with the MTP head, and {job.target.model} has none",
                        hint="evaluate a checkpoint that carries an MTP head, or drop --speculative")
    prompts = [loaded.tokenizer(p.prompt)["input_ids"] for p in problems]
    outputs, own = occctl_greedy_drafting(loaded, prompts, job.sampling.max_new_tokens)
    figures = {**own, **{key.removeprefix("occctl_"): own[key] for key in OCCCTL_KEYS},
               "spec_drafts": own["occctl_spec_drafts"]}
    if job.options.engine == "vllm":
        from occctl.eval.engines import make_engine

        engine = make_engine("vllm", job.target.model, speculative=True)
        try:
            figures.update(engine_greedy_drafting(engine, prompts, job.sampling.max_new_tokens, outputs))
        finally:
            engine.close()
    console.print(f"greedy draft acceptance: {job.options.engine} {figures['spec_accept_rate']:.4f}, occctl's "
                  f"decoder {figures['occctl_spec_accept_rate']:.4f} ({len(prompts)} prompts)", highlight=False)
    return figures


def _check_tokenizer(model: str) -> None:
    """A local checkpoint without tokenizer files would load a 1-token default tokenizer and fail deep in generate."""
    from pathlib import Path

    from occctl.pipeline import TOKENIZER_FILES

    path = Path(model)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SpecError(f"{model}: no tokenizer files ({' or '.join(TOKENIZER_FILES[:2])})",
                        hint="save the tokenizer beside the weights (tokenizer.save_pretrained)")
