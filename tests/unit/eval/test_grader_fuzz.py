"""Grader robustness at scale: 1,000 fuzzed answers through both graders, each within its deadline, and no
worker process left behind afterwards."""

import os
import random
import time
from pathlib import Path

import pytest

from occctl.eval.pool import GradingPool, Job

TIMEOUT_S = 2.0
SLACK_S = 1.0  # dispatch + kill + reap on a loaded 2-core machine
PIECES = ["\\frac{", "}{", "}", "{", "\\sqrt{", "^", "_", "\\boxed{", "\\pi", "\\infty", "(", ")", "[", "]", ",",
          "\\left(", "\\right)", "+", "-", "\\cdot", "x", "y", "=", "\\le", "\\text{cm}", "^\\circ", "%", "\\%",
          "0", "1", "7", "42", "3.5", "-2", "\\dfrac{", "\\in", "\\cup", "\\emptyset", "$", "\\", "é", "∞", " "]
GOLDS = ["42", "\\frac{\\sqrt{2}}{2}", "(1,2]", "x^2+1", "\\text{east}", "45^\\circ", "3.5", "\\{1,2,3\\}"]


def fuzzed_answers(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    answers = []
    for i in range(n):
        kind = i % 10
        if kind == 0:  # wrapped in \boxed
            body = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40)))
            answers.append(f"The answer is \\boxed{{{body}}}.")
        elif kind == 1:  # a mutated gold
            gold = list(rng.choice(GOLDS))
            for _ in range(rng.randint(1, 4)):
                gold.insert(rng.randrange(len(gold) + 1), rng.choice(PIECES))
            answers.append("\\boxed{" + "".join(gold) + "}")
        elif kind == 2:  # long random bytes as text
            answers.append("".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(100, 3000))))
        elif kind == 3 and i % 100 == 3:  # rare: a power tower (only a kill stops math-verify on these)
            answers.append("\\boxed{" + "^{".join(str(rng.randint(7, 9)) for _ in range(4)) + "}" * 3 + "}")
        else:  # random LaTeX soup
            answers.append("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 200))))
    return answers


def _descendants() -> set[int]:
    """Live (non-zombie) processes below this one: the grading workers are children of multiprocessing's
    forkserver, which (like its resource tracker) lives as long as this process and is shared by every pool."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parent_of[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent_of.items() if ppid in frontier} - found
        found |= frontier
    return found


@pytest.mark.slow
def test_a_thousand_fuzzed_answers_through_both_graders():
    answers = fuzzed_answers(1000)
    warm = GradingPool(processes=2, timeout_s=TIMEOUT_S)  # starts the shared forkserver and resource tracker
    warm.close()
    time.sleep(0.5)
    before = _descendants()
    pool = GradingPool(processes=2, timeout_s=TIMEOUT_S)
    try:
        for grader in ("math_verify@1", "deepscaler@2"):
            jobs = [Job(grader, text, (GOLDS[i % len(GOLDS)],)) for i, text in enumerate(answers)]
            start = time.monotonic()
            outcomes = pool.grade(jobs)
            assert len(outcomes) == len(jobs)
            slow = [(a[:60], o) for a, o in zip(answers, outcomes) if o.seconds > TIMEOUT_S + SLACK_S]
            assert not slow, slow[:3]
            assert all(o.status in ("ok", "timeout", "crash") or o.status.startswith("error") for o in outcomes)
            assert time.monotonic() - start < 600
        # the pool still grades correctly after all that
        ok = pool.grade([Job("math_verify@1", "\\boxed{\\frac{1}{2}}", ("0.5",))])[0]
        assert ok.status == "ok" and ok.correct
    finally:
        pool.close()
    deadline = time.monotonic() + 10
    while _descendants() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (_descendants() - before), "grading workers left behind"
