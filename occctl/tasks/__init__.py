"""The embedded verifiable tasks, by ``task.name``: problems, the reward and the held-out check.

* ``arith`` — one 2-operand addition, a 4-token answer (`tasks/arith.py`);
* ``chain`` — a chain of additions written out as running sums, 20-60-token answers (`tasks/chain.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from occctl.spec import TaskSpec
from occctl.tasks import arith, chain
from occctl.tasks.arith import Problem

Reward = Callable[..., list[float]]  # TRL reward function: (completions, answer, **columns) -> rewards


@dataclass(frozen=True)
class Task:
    name: str
    heldout_problems: Callable[[TaskSpec], list[Problem]]
    train_problems: Callable[..., list[Problem]]  # (task, seed, count=None)
    is_correct: Callable[[str, str], float]  # (completion, answer) -> 1.0 / 0.0
    reward: Reward  # the same check over a batch, for TRL (its __name__ names TRL's reward metric)
    answer_length: Callable[[TaskSpec], int]  # tokens of every answer, without the EOS


def final_answer_reward(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """TRL reward function: 1 when the final sum is right, else 0."""
    return [chain.final_answer_match(c, a) for c, a in zip(completions, answer)]


TASKS = {
    "arith": Task("arith", arith.heldout_problems, arith.train_problems, arith.exact_match,
                  arith.exact_match_reward, lambda t: t.digits + 1),
    "chain": Task("chain", chain.heldout_problems, chain.train_problems, chain.final_answer_match,
                  final_answer_reward, chain.answer_length),
}


def get_task(task: TaskSpec) -> Task:
    return TASKS[task.name]
