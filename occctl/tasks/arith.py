"""The embedded verifiable task: zero-padded a + b, answer written least-significant digit first."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from occctl.spec import TaskSpec


@dataclass(frozen=True)
class Problem:
    prompt: str  # e.g. "347+586="
    answer: str  # e.g. "3390" (0933 reversed); a dataset row's main answer
    answers: tuple[str, ...] = ()  # a dataset row: every acceptable reference (main answer first)
    id: str = ""  # a dataset row's id (for messages)


def make_problem(a: int, b: int, digits: int, reverse: bool) -> Problem:
    answer = f"{a + b:0{digits + 1}d}"
    return Problem(prompt=f"{a:0{digits}d}+{b:0{digits}d}=", answer=answer[::-1] if reverse else answer)


def _pairs(task: TaskSpec, count: int, seed: int, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
    space = 10 ** (2 * task.digits)
    if count + len(exclude) > space:
        raise ValueError(f"task.digits={task.digits} has only {space} distinct problems; asked for "
                         f"{count} + {len(exclude)} held out")
    rng, hi = random.Random(seed), 10**task.digits - 1
    seen: set[tuple[int, int]] = set(exclude)
    out: list[tuple[int, int]] = []
    while len(out) < count:
        pair = (rng.randint(0, hi), rng.randint(0, hi))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def heldout_problems(task: TaskSpec) -> list[Problem]:
    pairs = _pairs(task, task.heldout_problems, task.heldout_seed, set())
    return [make_problem(a, b, task.digits, task.reverse_answer) for a, b in pairs]


def train_problems(task: TaskSpec, seed: int, count: int | None = None) -> list[Problem]:
    """Training problems, disjoint from the held-out split."""
    held = set(_pairs(task, task.heldout_problems, task.heldout_seed, set()))
    pairs = _pairs(task, count or task.train_problems, seed, held)
    return [make_problem(a, b, task.digits, task.reverse_answer) for a, b in pairs]


def exact_match(completion: str, answer: str) -> float:
    return 1.0 if completion.strip() == answer else 0.0

