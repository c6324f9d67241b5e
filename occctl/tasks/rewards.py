"""A task's reward, derived from its grader: 1.0 when the grader accepts the completion, else 0.0 (plus DAPO's
soft overlong punishment when ``task.overlong.buffer_tokens`` is set).

The generated tasks' graders are string checks run in-process. The math graders run in the grading pool
(``occctl.eval.pool``): a step's completions are graded in parallel by worker processes, each answer under the
pool's deadline; an answer that overruns it is a timeout: reward 0, counted in ``reward/timeouts`` (never a
silent 0), as grader failures are in ``reward/grader_errors``; the step's grading time is ``time/reward_s``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from occctl.eval.pool import DEFAULT_TIMEOUT_S
from occctl.tasks import EMBEDDED_GRADERS, grader_of

if TYPE_CHECKING:
    from occctl.spec import TaskSpec

STAT_KEYS = ("reward/timeouts", "reward/grader_errors", "time/reward_s")


def reward_name(grader: str) -> str:
    """``exact_match@1`` -> ``exact_match_v1``: TRL logs ``rewards/<name>/mean`` (MLflow names cannot hold ``@``)."""
    from occctl.eval.graders import grader_slug

    return grader_slug(grader)


def overlong_penalty(length: int, max_new_tokens: int, buffer_tokens: int, factor: float) -> float:
    """DAPO's soft overlong punishment of a completion of ``length`` tokens: 0 up to ``max_new_tokens -
    buffer_tokens``, then linearly down to ``-factor`` at ``max_new_tokens`` (and no lower)."""
    if buffer_tokens <= 0:
        return 0.0
    start = max_new_tokens - buffer_tokens
    return max(-factor, min(0.0, (start - length) / buffer_tokens * factor))


class TaskReward:
    """The TRL reward function of a task spec: ``reward(completions, answer, completion_ids=..., log_metric=...)``.

    Also ``score(completions, answers)`` for the held-out evaluation (no overlong shaping). ``close()`` stops the
    grading pool (started on first use)."""

    def __init__(self, task: TaskSpec, max_new_tokens: int, timeout_s: float = DEFAULT_TIMEOUT_S,
                 processes: int | None = None) -> None:
        self.grader = grader_of(task)
        self.__name__ = reward_name(self.grader)  # TRL names the reward's metric after it
        self.task, self.max_new_tokens = task, max_new_tokens
        self.timeout_s, self.processes = timeout_s, processes
        self._check: Callable[[str, str], float] | None = EMBEDDED_GRADERS.get(self.grader)
        self._pool = None

    @property
    def in_pool(self) -> bool:
        return self._check is None

    def score(self, completions: Sequence[str], answers: Sequence[Any]) -> tuple[list[float], dict[str, float]]:
        """Grades (1.0 / 0.0) and the grading's counts: ``reward/timeouts``, ``reward/grader_errors``,
        ``time/reward_s`` (empty for in-process checks)."""
        if self._check is not None:
            return [self._check(c, a) for c, a in zip(completions, answers)], {}
        from occctl.eval.pool import GradingPool, Job

        if self._pool is None:
            self._pool = GradingPool(processes=self.processes, timeout_s=self.timeout_s)
        start = time.perf_counter()
        jobs = [Job(self.grader, c, (a,) if isinstance(a, str) else tuple(a)) for c, a in zip(completions, answers)]
        outcomes = self._pool.grade(jobs)
        stats = {"reward/timeouts": float(sum(o.status == "timeout" for o in outcomes)),
                 "reward/grader_errors": float(sum(o.status not in ("ok", "timeout") for o in outcomes)),
                 "time/reward_s": time.perf_counter() - start}
        return [1.0 if o.correct else 0.0 for o in outcomes], stats

    def __call__(self, completions: list[str], answer: list[Any], completion_ids: list[list[int]] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **_: object) -> list[float]:
        rewards, stats = self.score(completions, answer)
        overlong = self.task.overlong
        if overlong.buffer_tokens and completion_ids is not None:
            rewards = [r + overlong_penalty(len(ids), self.max_new_tokens, overlong.buffer_tokens,
                                            overlong.penalty_factor) for r, ids in zip(rewards, completion_ids)]
        if log_metric is not None:
            for key, value in stats.items():
                log_metric(key, value)
        return rewards

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "TaskReward":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
