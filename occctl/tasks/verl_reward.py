"""veRL's custom reward function for the dataset task (``reward.custom_reward_function``): the spec's occctl grader
(``task.grader``, e.g. math_verify@1) run in a grading pool with its per-answer deadline, so a veRL run scores
completions exactly as the TRL backend and ``occctl eval`` do. veRL loads this file by path in its reward workers;
each worker keeps one pool for its lifetime. A timeout scores 0 and is reported as ``timeout`` (veRL logs the
extra keys of the returned dict)."""

from __future__ import annotations

from typing import Any

_POOLS: dict[tuple[str, float], Any] = {}


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None,
                  grader: str = "math_verify@1", timeout_s: float = 5.0, **_: Any) -> dict[str, float]:
    from occctl.eval.pool import GradingPool, Job

    answers = tuple((extra_info or {}).get("answers") or [ground_truth])
    key = (grader, float(timeout_s))
    if key not in _POOLS:
        _POOLS[key] = GradingPool(processes=1, timeout_s=float(timeout_s), preload_main=False)  # a Ray worker
    [outcome] = _POOLS[key].grade([Job(grader, solution_str, tuple(str(a) for a in answers))])
    return {"score": 1.0 if outcome.correct else 0.0, "acc": float(outcome.correct),
            "timeout": float(outcome.status == "timeout")}
