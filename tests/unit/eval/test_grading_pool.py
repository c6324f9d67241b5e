"""The grading pool under hostile answers: every call returns within its timeout, a hung or killed worker is
replaced (never leaked), and the pool keeps grading correctly afterwards."""

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from occctl.eval.pool import GradingPool, Job

TIMEOUT_S = 1.5
SLACK_S = 0.75  # dispatch + kill + reap on a loaded 2-core machine

random.seed(0)
GARBAGE = "".join(random.choice("\\{}^_$()[]&%#@!~abcxyz0123456789 \n") for _ in range(10_000))
PATHOLOGICAL = [
    "9^{9^{9^9}}",
    "\\boxed{9^{9^{9^{9}}}}",  # math-verify evaluates the tower: hangs in C, only a kill stops it
    "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{9**9**9**9}",  # DeepScaleR's sympy check evaluates this one
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",  # deeply nested \frac
    "\\frac{" * 300 + "1" + "}{2}" * 300,
    GARBAGE,
    "\\boxed{" + GARBAGE + "}",
    "\\boxed{\\frac{1}{2",  # unbalanced braces
    "}}}{{{\\boxed{",
    "\\boxed{" * 200,
    "(" * 5000,
    "\\boxed{" + "a+" * 3000 + "a}",
]
GOLD = ("\\frac{\\sqrt{2}}{2}",)  # a non-integer gold, so DeepScaleR's sympy path really runs


def _gone(pid: int) -> bool:
    """Exited and reaped (a zombie would still have a /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
def pool():
    p = GradingPool(processes=2, timeout_s=TIMEOUT_S)
    yield p
    p.close()


@pytest.mark.parametrize("grader", ["math_verify@1", "deepscaler@2"])
def test_pathological_answers_return_within_the_timeout(pool, grader):
    start = time.monotonic()
    outcomes = pool.grade([Job(grader, text, GOLD) for text in PATHOLOGICAL])
    wall = time.monotonic() - start
    assert len(outcomes) == len(PATHOLOGICAL)
    for text, o in zip(PATHOLOGICAL, outcomes):
        assert o.seconds <= TIMEOUT_S + SLACK_S, (text[:40], o)
        assert not o.correct
        assert o.status in ("ok", "timeout") or o.status.startswith("error"), o
    timeouts = [o for o in outcomes if o.status == "timeout"]
    assert timeouts, "no answer hit the timeout: the kill path was not exercised"
    assert pool.replaced == len(timeouts) == sum(o.replaced for o in outcomes)
    assert all(o.replaced == (o.status == "timeout") for o in outcomes)
    # two workers in parallel: never worse than every timeout in sequence
    assert wall <= len(timeouts) * (TIMEOUT_S + SLACK_S) + 5
    # back to baseline: as many live workers as configured; every replaced one is gone
    live = pool.live_pids()
    assert len(live) == pool.processes
    assert all(_gone(pid) for pid in pool.spawned_pids if pid not in live)
    # and the pool still grades correctly
    again = pool.grade([Job(grader, "\\boxed{\\frac{\\sqrt{2}}{2}}", GOLD), Job(grader, "\\boxed{3}", GOLD)])
    assert [o.correct for o in again] == [True, False]
    spawned = list(pool.spawned_pids)
    pool.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(_gone(pid) for pid in spawned):
        time.sleep(0.05)
    assert all(_gone(pid) for pid in spawned), "a grading worker outlived close()"


def test_a_worker_that_dies_mid_answer_is_reported_and_replaced():
    with GradingPool(processes=1, timeout_s=30) as pool:
        victim = pool.live_pids()[0]
        threading.Timer(0.5, os.kill, (victim, signal.SIGKILL)).start()
        start = time.monotonic()
        outcomes = pool.grade([Job("math_verify@1", "\\boxed{9^{9^{9^{9}}}}", ("1",)),
                               Job("math_verify@1", "\\boxed{1}", ("1",))])
        assert time.monotonic() - start < 10
        assert outcomes[0].status == "crash" and not outcomes[0].correct and outcomes[0].replaced == 1
        assert outcomes[1].status == "ok" and outcomes[1].correct and outcomes[1].replaced == 0
        assert victim not in pool.live_pids() and len(pool.live_pids()) == 1


def test_results_keep_job_order_across_workers():
    with GradingPool(processes=2, timeout_s=10) as pool:
        jobs = [Job("deepscaler@2", f"\\boxed{{{i}}}", (str(i if i % 3 else i + 1),)) for i in range(40)]
        outcomes = pool.grade(jobs)
    assert [o.correct for o in outcomes] == [bool(i % 3) for i in range(40)]
    assert [o.pred for o in outcomes] == [str(i) for i in range(40)]


def test_a_worker_that_died_while_idle_is_replaced_and_counted_on_the_next_answer():
    with GradingPool(processes=1, timeout_s=30) as pool:
        victim = pool.live_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and pool.live_pids():
            time.sleep(0.02)
        (outcome,) = pool.grade([Job("deepscaler@2", "\\boxed{4}", ("4",))])
        assert outcome.status == "ok" and outcome.correct
        assert outcome.replaced == pool.replaced == 1 and victim not in pool.live_pids()
