"""The tasks: problem format, the grader behind the reward, splits, and the spec's length checks. Every task of
the registry (``occctl.tasks.TASKS``) is picked up by the parametrized tests, not by a hand-written list: a new
generated task is tested with ``small(name)``, its defaults with a small split."""

import pytest

from occctl.errors import SpecError
from occctl.eval.graders import GRADERS
from occctl.spec import Spec, TaskSpec, validate_spec
from occctl.tasks import EMBEDDED_GRADERS, TASKS, get_task, grader_of
from occctl.tasks.chain import final_answer_match, make_problem
from occctl.tasks.rewards import TaskReward

CHAIN = TaskSpec(name="chain", digits=1, operands=10, heldout_problems=50, train_problems=200)


def test_chain_writes_running_sums_lsd_first_at_a_fixed_offset():
    p = make_problem((3, 9, 4, 1, 9, 9, 9, 9, 9, 9), CHAIN)
    assert p.prompt == "30+90+40+10+90+90+90+90+90+90="
    assert p.answer == "21=61=71=62=53=44=35=26=17"  # 12, 16, 17, 26, 35, … least-significant digit first
    assert len(p.answer) == get_task(CHAIN).answer_length(CHAIN) == 26
    assert len(p.prompt) == get_task(CHAIN).prompt_length(CHAIN)


def test_reward_checks_only_the_final_sum():
    answer = "21=61=71"
    assert final_answer_match("21=61=71", answer) == 1.0
    assert final_answer_match("99=99=71 ", answer) == 1.0  # wrong working, right final sum
    assert final_answer_match("21=61=72", answer) == 0.0
    assert final_answer_match("", answer) == 0.0
    reward = TaskReward(CHAIN, max_new_tokens=28)
    assert reward(["21=61=71", "21=61"], answer=[answer, answer]) == [1.0, 0.0]
    assert reward.__name__ == "final_sum_v1" and not reward.in_pool  # its own key, not exact_match's


GENERATED = sorted(n for n in TASKS if TASKS[n].generated)


def small(name: str) -> TaskSpec:
    """A generated task at its spec defaults, with splits small enough for a unit test."""
    return TaskSpec(name=name, heldout_problems=50, train_problems=300)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_has_its_own_graders(name):
    task = TASKS[name]
    assert task.graders and len(set(task.graders)) == len(task.graders)
    for key in task.graders:
        assert "@" in key and (key in EMBEDDED_GRADERS or key in GRADERS or key.startswith("verl_")), key
    if task.generated:  # a string check of its own: scores of different checks never share a column
        others = {g for n, t in TASKS.items() if n != name for g in t.graders}
        assert not set(task.graders) & others


def test_a_grader_of_another_task_is_refused():
    with pytest.raises(SpecError, match="does not grade task chain"):
        validate_spec({"name": "t", "task": {"name": "chain", "grader": "exact_match@1"}}, "s.yaml")
    assert grader_of(CHAIN) == "final_sum@1" and grader_of(TaskSpec()) == "exact_match@1"


@pytest.mark.parametrize("name", GENERATED)
def test_splits_are_disjoint_deterministic_and_equal_length(name):
    task = small(name)
    t = TASKS[name]
    held, train = t.heldout_problems(task), t.train_problems(task, seed=3)
    assert len(held) == 50 and len(train) == 300
    assert not {p.prompt for p in held} & {p.prompt for p in train}
    assert train == t.train_problems(task, seed=3) and train != t.train_problems(task, seed=4)
    assert len({len(p.prompt + p.answer) for p in held + train}) == 1  # the warm-up batches them unpadded


@pytest.mark.parametrize("name", GENERATED)
def test_lengths_and_the_check_agree_with_the_problems(name):
    """The lengths the spec checks and the model sizes are computed from, and the in-process grader, on real rows."""
    task = small(name)
    t = TASKS[name]
    for p in t.heldout_problems(task)[:20]:
        assert len(p.prompt) == t.prompt_length(task) and len(p.answer) == t.answer_length(task), p
        assert t.is_correct(p.answer, p.answer) == 1.0 and t.is_correct(f" {p.answer} ", p.answer) == 1.0
        assert t.is_correct("", p.answer) == 0.0


def _spec(**task_and_train):
    task = {k: v for k, v in task_and_train.items() if k in TaskSpec.model_fields}
    train = {k: v for k, v in task_and_train.items() if k not in TaskSpec.model_fields}
    return {"name": "t", "task": task, "train": train}


@pytest.mark.parametrize("raw, field", [
    (_spec(name="chain", digits=1, operands=10, max_new_tokens=20), "train.max_new_tokens"),
    (_spec(name="chain", digits=2, operands=12, max_new_tokens=60), "context"),
    (_spec(name="arith", operands=3), "task.operands"),
])
def test_answers_that_cannot_fit_are_refused(raw, field):
    with pytest.raises(SpecError) as e:
        validate_spec(raw, "s.yaml")
    assert field in str(e.value)


def test_long_specs_fit():
    spec = validate_spec(_spec(name="chain", digits=1, operands=10, max_new_tokens=28), "s.yaml")
    assert isinstance(spec, Spec) and spec.task.operands == 10


def test_the_registry_names_exactly_the_tasks_and_their_graders():
    from occctl.registry import TASK_GRADERS

    assert {name: task.graders for name, task in TASKS.items()} == TASK_GRADERS
