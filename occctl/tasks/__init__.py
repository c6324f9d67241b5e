"""Tasks, by ``task.name``: every task is data + a grader + a prompt format; the reward is derived from the grader.

* ``arith`` — one 2-operand addition, a 4-token answer, graded ``exact_match@1`` (`tasks/arith.py`);
* ``chain`` — a chain of additions written out as running sums, 20-60-token answers, graded ``final_sum@1`` on the
  last field (`tasks/chain.py`);
* ``dataset`` — math problems from a JSONL / parquet file or an HF dataset (``task.train``), held out on suite
  benchmarks or files (``task.heldout``), graded by a math grader of ``occctl.eval.graders`` in the grading pool
  (`tasks/dataset.py`).

Adding a task: one module with ``train_problems(task, seed, count=None)`` and ``heldout_problems(task)`` returning
``Problem`` rows, its grader(s), one ``Task`` entry in ``TASKS`` and its grader keys in
``occctl.registry.TASK_GRADERS`` (``occctl/tasks/README.md``, "Adding a task").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from occctl.registry import TASK_GRADERS
from occctl.tasks import arith, chain, dataset
from occctl.tasks.arith import Problem

if TYPE_CHECKING:
    from occctl.spec import TaskSpec

Check = Callable[[str, str], float]  # an embedded grader: (completion, answer) -> 1.0 / 0.0

# The generated tasks' graders: cheap string checks, run in-process. Versioned like the math graders: a change of
# behaviour is a new key, so scores of different checks never share a column.
EMBEDDED_GRADERS: dict[str, Check] = {
    "exact_match@1": arith.exact_match,  # the whole completion (stripped) is the answer
    "final_sum@1": chain.final_answer_match,  # the last `=`-field is the chain's final sum
}


@dataclass(frozen=True)
class Task:
    name: str
    graders: tuple[str, ...]  # the grader keys this task accepts, its default first
    train_problems: Callable[..., list[Problem]]  # (task, seed, count=None), disjoint from the held-out split
    heldout_problems: Callable[[TaskSpec], list[Problem]]
    prompt_text: Callable[[TaskSpec, Any, Problem], str]  # (task, tokenizer, problem) -> the text the policy sees
    answer_length: Callable[[TaskSpec], int] | None = None  # generated tasks: tokens of every answer, no EOS
    prompt_length: Callable[[TaskSpec], int] | None = None  # generated tasks: tokens of every prompt, no BOS

    @property
    def generated(self) -> bool:
        return self.answer_length is not None

    @property
    def is_correct(self) -> Check:
        """The in-process check of a generated task (its only grader); dataset tasks grade in the pool."""
        if not self.generated:
            raise TypeError(f"task {self.name} grades in the grading pool: use occctl.tasks.rewards")
        return EMBEDDED_GRADERS[self.graders[0]]


def _as_is(task: TaskSpec, tokenizer: Any, problem: Problem) -> str:
    return problem.prompt


TASKS: dict[str, Task] = {
    "arith": Task("arith", TASK_GRADERS["arith"], arith.train_problems, arith.heldout_problems, _as_is,
                  lambda t: t.digits + 1, lambda t: 2 * t.digits + 2),
    "chain": Task("chain", TASK_GRADERS["chain"], chain.train_problems, chain.heldout_problems, _as_is,
                  chain.answer_length, chain.prompt_length),
    "dataset": Task("dataset", dataset.GRADERS, dataset.train_problems, dataset.heldout_problems,
                    dataset.prompt_text),
}


def get_task(task: TaskSpec) -> Task:
    return TASKS[task.name]


def grader_of(task: TaskSpec) -> str:
    """The grader key of a task spec: ``task.grader`` or the task's default."""
    return task.grader or TASKS[task.name].graders[0]


__all__ = ["EMBEDDED_GRADERS", "Problem", "TASKS", "Task", "get_task", "grader_of"]
