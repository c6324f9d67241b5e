"""One spec, either backend: the dataset task's keys become veRL's data, overlong and reward settings (the grader
through veRL's custom reward function, calling the same occctl grader in a grading pool)."""

from pathlib import Path

import pytest
import yaml

from occctl.errors import SpecError
from occctl.spec import validate_spec

from backends.verl_backend.adapter import verl_options
from backends.verl_backend.translate import verl_overrides

REPO = Path(__file__).resolve().parents[2]
TASK = {"name": "dataset", "train": "math6/train/dapo_math_17k.jsonl", "heldout": ["math6/aime24", "math6/math500"],
        "prompt": "dapo", "max_prompt_tokens": 1024, "overlong": {"buffer_tokens": 2048}}


def _verl_spec(**task):
    raw = yaml.safe_load((REPO / "specs" / "mimo7b_dapo_occ.yaml").read_text())
    for key in ("data", "overlong_buffer"):
        raw["backend_options"].pop(key)
    raw["task"] = {**TASK, **task}
    return validate_spec(raw, "mimo7b_dapo_occ.yaml")


def _items(spec, tmp_path):
    return dict(item.split("=", 1) for item in verl_overrides(spec, verl_options(spec), tmp_path, None))


def test_the_task_keys_drive_verl(tmp_path):
    spec = _verl_spec()
    options = verl_options(spec)
    assert (options.data.train, options.data.val, options.data.prompt_template) == (
        "math6/train/dapo_math_17k.jsonl", "math6/aime24.jsonl", "dapo")
    assert options.overlong_buffer.enabled and options.overlong_buffer.tokens == 2048
    items = _items(spec, tmp_path)
    assert items["data.max_prompt_length"] == "1024"
    assert items["reward.custom_reward_function.path"].endswith("occctl/tasks/verl_reward.py")
    assert items["+reward.custom_reward_function.reward_kwargs.grader"] == "math_verify@1"
    assert items["reward.reward_manager.name"] == "dapo"


def test_verl_math_dapo_keeps_verls_own_scorer(tmp_path):
    items = _items(_verl_spec(grader="verl_math_dapo@1"), tmp_path)
    assert not any(key.startswith(("reward.custom", "+reward.custom")) for key in items)


def test_data_given_twice_is_refused():
    raw = yaml.safe_load((REPO / "specs" / "mimo7b_dapo_occ.yaml").read_text())
    raw["task"] = TASK
    with pytest.raises(SpecError, match="backend_options.data and task.train"):
        verl_options(validate_spec(raw, "s.yaml"))


def test_verls_reward_function_grades_with_the_occctl_grader():
    from occctl.tasks.verl_reward import compute_score

    right = compute_score("math_dapo", "so \\boxed{\\frac12}", "0.5", {"answers": ["0.5"]})
    wrong = compute_score("math_dapo", "so \\boxed{3}", "0.5", None, grader="deepscaler@2")
    assert right == {"score": 1.0, "acc": 1.0, "timeout": 0.0} and wrong["score"] == 0.0
    hang = compute_score("math_dapo", "\\boxed{9^{9^{9^{9}}}}", "1", None, timeout_s=1.0)
    assert hang == {"score": 0.0, "acc": 0.0, "timeout": 1.0}


def test_the_reward_file_loads_by_path_as_verl_loads_it():
    """veRL imports ``reward.custom_reward_function.path`` as a fresh module of its own name (load_extern_object)."""
    import importlib.util

    from occctl.tasks import verl_reward

    spec = importlib.util.spec_from_file_location("custom_module_test", verl_reward.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.compute_score("math_dapo", "Answer: \\boxed{7}", "7")["score"] == 1.0
