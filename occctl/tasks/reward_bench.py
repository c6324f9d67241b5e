"""Times the math task's reward: N math-verify gradings of one step's completions in the grading pool.

    python -m occctl.tasks.reward_bench [--n 256] [--grader math_verify@1] [--processes P] [--chars 3000]

The completions are DAPO-Math-17k problems answered in a solution-like text of about ``--chars`` characters
(the problem restated, LaTeX working, the final line), half with the right answer, half with a wrong one. The
pool is started before the clock (a run starts it once); the first, cold round is reported apart from the warm
ones (each step after the first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def completions(n: int, chars: int) -> tuple[list[str], list[list[str]]]:
    from occctl.spec import TaskSpec
    from occctl.tasks.dataset import train_problems

    task = TaskSpec(name="dataset", train="math6/train/dapo_math_17k.jsonl", heldout=["math6/aime24"])
    problems = train_problems(task)[:n]
    texts = []
    for i, p in enumerate(problems):
        working = f"We restate the problem: {p.prompt}\nLet $x = {i}$, then $x^2 + 2x + 1 = (x+1)^2$ and " \
                  f"$\\frac{{a}}{{b}} + \\sqrt{{{i}}}$ simplifies. "
        body = (working * (chars // max(1, len(working)) + 1))[:chars]
        answer = p.answer if i % 2 == 0 else f"{p.answer}1"
        texts.append(f"{body}\nAnswer: \\boxed{{{answer}}}")
    return texts, [list(p.answers) for p in problems]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--grader", default="math_verify@1")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--chars", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from occctl.spec import TaskSpec
    from occctl.tasks.rewards import TaskReward

    texts, answers = completions(args.n, args.chars)
    task = TaskSpec(name="dataset", train="math6/train/dapo_math_17k.jsonl", heldout=["math6/aime24"],
                    grader=args.grader)
    seconds, stats = [], {}
    with TaskReward(task, max_new_tokens=4096, processes=args.processes) as reward:
        reward.score(texts[:1], answers[:1])  # starts the pool (once per run)
        for _ in range(args.rounds):
            start = time.perf_counter()
            rewards, stats = reward.score(texts, answers)
            seconds.append(time.perf_counter() - start)
        processes = reward._pool.processes
    print(json.dumps({"gradings": args.n, "grader": args.grader, "processes": processes,
                      "cpus": len(os.sched_getaffinity(0)), "chars_per_completion": args.chars,
                      "cold_s": round(seconds[0], 3), "warm_median_s": round(statistics.median(seconds[1:]), 3),
                      "rounds_s": [round(s, 3) for s in seconds], "correct": sum(rewards),
                      "timeouts": stats.get("reward/timeouts"), "load_average_1min": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
