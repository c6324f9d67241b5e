"""The long-response embedded task: a chain of additions written out as running sums.

``"30+90+40+10+…=" -> "21=61=71=…"``: operands of ``task.digits`` digits; the answer lists the running sums
a1+a2, a1+a2+a3, …, each zero-padded to the width of the largest possible sum and, like the `arith` task's sum,
written least-significant digit first, separated by ``=``. The operands are written in the same width and digit
order, so every answer field sits at the same distance after the operand it adds: a tiny model can learn the
procedure, and the length of the chain, not the layout, sets the difficulty. The reward looks only at the final
sum (the last field); the intermediate sums are the model's own working, as in a math solution.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from occctl.tasks.arith import Problem

if TYPE_CHECKING:
    from occctl.spec import TaskSpec

SEPARATOR = "="


def sum_width(task: TaskSpec) -> int:
    return len(str(task.operands * (10 ** task.digits - 1)))


def prompt_length(task: TaskSpec) -> int:
    """Characters (= tokens) of every prompt, without the BOS."""
    return task.operands * (sum_width(task) + 1)


def answer_length(task: TaskSpec) -> int:
    """Characters (= tokens) of every answer, without the EOS."""
    return (task.operands - 1) * (sum_width(task) + 1) - 1


def make_problem(operands: tuple[int, ...], task: TaskSpec) -> Problem:
    width, total, sums = sum_width(task), operands[0], []
    for value in operands[1:]:
        total += value
        text = f"{total:0{width}d}"
        sums.append(text[::-1] if task.reverse_answer else text)
    fields = (f"{v:0{width}d}" for v in operands)
    prompt = "+".join(f[::-1] if task.reverse_answer else f for f in fields) + "="
    return Problem(prompt=prompt, answer=SEPARATOR.join(sums))


def _draw(task: TaskSpec, count: int, seed: int, exclude: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    space = 10 ** (task.digits * task.operands)
    if count + len(exclude) > space:
        raise ValueError(f"task.digits={task.digits} x task.operands={task.operands} has only {space} distinct "
                         f"problems; asked for {count} + {len(exclude)} held out")
    rng, hi = random.Random(seed), 10 ** task.digits - 1
    seen, out = set(exclude), []
    while len(out) < count:
        draw = tuple(rng.randint(0, hi) for _ in range(task.operands))
        if draw not in seen:
            seen.add(draw)
            out.append(draw)
    return out


def heldout_problems(task: TaskSpec) -> list[Problem]:
    return [make_problem(ops, task) for ops in _draw(task, task.heldout_problems, task.heldout_seed, set())]


def train_problems(task: TaskSpec, seed: int, count: int | None = None) -> list[Problem]:
    """Training problems, disjoint from the held-out split."""
    held = set(_draw(task, task.heldout_problems, task.heldout_seed, set()))
    return [make_problem(ops, task) for ops in _draw(task, count or task.train_problems, seed, held)]


def final_answer_match(completion: str, answer: str) -> float:
    """1 when the completion's last field (after the last ``=``) is the final sum, else 0."""
    return 1.0 if completion.strip().rsplit(SEPARATOR, 1)[-1] == answer.rsplit(SEPARATOR, 1)[-1] else 0.0
