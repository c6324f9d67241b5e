"""The reward path of the math task: known-correct and known-wrong completions through ``TaskReward`` (both math
graders, in the grading pool), a completion that hangs the grader (a timeout, counted), DAPO's overlong shaping."""

import pytest

from occctl.spec import TaskSpec
from occctl.tasks.rewards import TaskReward, overlong_penalty

MATH = dict(name="dataset", train="math6/train/dapo_math_17k.jsonl", heldout=["math6/aime24"])
COMPLETIONS = [
    "We compute 6 * 7. Answer: \\boxed{42}",  # right
    "<think>so it is 1/2</think> The answer is $\\boxed{\\frac{1}{2}}$.",  # right, as a fraction vs 0.5
    "The answer is \\boxed{41}.",  # wrong
    "I do not know.",  # no answer at all
]
ANSWERS = [["42"], ["0.5"], ["42"], ["42"]]


@pytest.mark.parametrize("grader", ["math_verify@1", "deepscaler@2"])
def test_known_completions_get_their_rewards(grader):
    logged = {}
    with TaskReward(TaskSpec(**MATH, grader=grader), max_new_tokens=64, processes=2) as reward:
        assert reward.in_pool and reward.__name__ == grader.replace("@", "_v")
        rewards = reward(COMPLETIONS, answer=ANSWERS, log_metric=logged.__setitem__)
    assert rewards == [1.0, 1.0, 0.0, 0.0]
    assert logged["reward/timeouts"] == 0.0 and logged["reward/grader_errors"] == 0.0
    assert logged["time/reward_s"] > 0


def test_a_hanging_grading_is_a_counted_timeout_not_a_silent_zero():
    hang = "The answer is \\boxed{9^{9^{9^{9}}}}"  # math-verify evaluates the tower: only a kill stops it
    logged = {}
    with TaskReward(TaskSpec(**MATH), max_new_tokens=64, timeout_s=1.0, processes=2) as reward:
        rewards = reward([hang, COMPLETIONS[0]], answer=[["42"], ["42"]], log_metric=logged.__setitem__)
    assert rewards == [0.0, 1.0]
    assert logged["reward/timeouts"] == 1.0
    assert logged["time/reward_s"] < 10, "the deadline bounds the step"


def test_overlong_shaping_follows_dapo():
    assert overlong_penalty(10, max_new_tokens=32, buffer_tokens=8, factor=1.0) == 0.0
    assert overlong_penalty(24, 32, 8, 1.0) == 0.0  # the buffer starts at 32 - 8
    assert overlong_penalty(28, 32, 8, 1.0) == -0.5
    assert overlong_penalty(32, 32, 8, 1.0) == -1.0
    assert overlong_penalty(40, 32, 8, 0.5) == -0.5  # capped at the factor
    assert overlong_penalty(40, 32, 0, 1.0) == 0.0  # off
    task = TaskSpec(**MATH, overlong={"buffer_tokens": 8})
    with TaskReward(task, max_new_tokens=32, processes=1) as reward:
        shaped = reward([COMPLETIONS[0], COMPLETIONS[2]], answer=[["42"], ["42"]],
                        completion_ids=[[0] * 28, [0] * 10])
    assert shaped == [0.5, 0.0]
