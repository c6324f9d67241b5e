"""`occctl bench overhead` for the TRL backend: the cost of the MTP head, of OCC and of oracle mode.

Five trainers on the same starting weights and the same prompts (vanilla TRL GRPO without an MTP head,
detach, policy, occ, occ + oracle every step) run in one process, each in its own thread, and take strict
turns: one optimizer step each, round-robin (the order rotates every round), so they share the machine's state
(clock, caches, thermal) and the per-step times compare like for like (paper Fig. 5).

``policy`` and ``occ`` build the same backward graph (the MTP policy term, no detaching); they differ only by
the delta proxies and the calibrator, so occ/policy is what OCC itself costs. Every ratio is the geometric
mean over rounds of the paired per-round ratios (round i = optimizer step i of every variant, the same kind of
step: with or without a generation), with a 95 % t-interval over rounds.
"""

from __future__ import annotations

import copy
import math
import statistics
import threading
import time
from typing import Any, Callable

from transformers import TrainerCallback

from occctl.spec import Spec

VARIANTS = ("vanilla", "detach", "policy", "occ", "oracle")
RATIOS = {  # name -> (numerator, denominator)
    "occ_over_policy": ("occ", "policy"),
    "occ_over_detach": ("occ", "detach"),
    "policy_over_detach": ("policy", "detach"),
    "detach_over_vanilla": ("detach", "vanilla"),
    "oracle_over_detach": ("oracle", "detach"),
}


class Baton:
    """Round-robin turns between named threads; a finished thread leaves the rotation."""

    def __init__(self, names: list[str]) -> None:
        self.order = list(names)
        self.turn = 0
        self.cond = threading.Condition()

    def acquire(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.order[self.turn] == name)

    def release(self, name: str) -> None:
        with self.cond:
            self.turn = self.order.index(name) + 1
            if self.turn >= len(self.order):  # a round is complete: rotate who starts the next one
                self.order = self.order[1:] + self.order[:1]
                self.turn = 0
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

    def __init__(self, name: str, baton: Baton, on_step: Callable[[str], None]) -> None:
        self.name, self.baton, self.on_step = name, baton, on_step
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.baton.acquire(self.name)
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)
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


def measure_overhead(spec: Spec, native_config: dict[str, Any], steps: int, progress: Any = None) -> dict[str, Any]:
    """Seconds per optimizer step of each variant and the paired ratios with 95 % intervals (first round excluded)."""
    from backends.trl_backend.adapter import build_trainer, load_start, mtp_settings

    loaded, _ = load_start(spec, progress)
    config = {**native_config, "max_steps": steps + 1, "output_dir": native_config["output_dir"] + "-bench"}

    def with_regime(regime: str) -> Spec:
        return spec.model_copy(update={"mtp": spec.mtp.model_copy(update={"regime": regime})})

    specs = {"vanilla": None, "detach": with_regime("detach"), "policy": with_regime("policy"),
             "occ": with_regime("occ"), "oracle": with_regime("occ")}
    baton = Baton(list(VARIANTS))
    task = progress.add_task("bench", total=len(VARIANTS) * (steps + 1)) if progress else None
    advance = (lambda name: progress.advance(task)) if progress else (lambda name: None)
    timers, trainers = {}, {}
    for name in VARIANTS:
        start = copy.deepcopy(loaded)
        settings = None if specs[name] is None else mtp_settings(specs[name], oracle_every=1 if name == "oracle" else 0)
        timers[name] = StepTimer(name, baton, advance)
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
    times = {n: timers[n].times[1:] for n in VARIANTS}
    result: dict[str, Any] = {
        "spec": spec.name,
        "steps_timed": steps,
        "completions_per_step": spec.completions_per_step,
        "optimizer_steps_per_generation": spec.train.optimizer_steps_per_generation,
        "median_step_s": {n: statistics.median(t) for n, t in times.items()},
        "mean_step_s": {n: statistics.fmean(t) for n, t in times.items()},
    }
    for key, (num, den) in RATIOS.items():
        ratio, low, high = paired_ratio(times[num], times[den])
        result[key] = ratio
        result[f"{key}_ci95"] = [low, high]
    return result
