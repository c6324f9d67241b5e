"""The dataset task: rows with `problem` and `answer`/`answers` (as ../shared/data/math6/), bad rows and missing
files as one-line spec errors naming the file, the row and the field, the prompt formats, the spec keys and the
`--set model=tiny_cpu` preset."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.cli import app
from occctl.errors import SpecError
from occctl.eval.prompts import TEMPLATES, render_task_prompt
from occctl.spec import TaskSpec, load_spec, validate_spec
from occctl.tasks import get_task
from occctl.tasks.dataset import data_problems, heldout_benchmarks, load_rows, to_problems

REPO = Path(__file__).resolve().parents[2]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_become_problems_with_every_answer(tmp_path):
    file = _jsonl(tmp_path / "t.jsonl", [{"id": "a", "problem": "1+1?", "answer": "2"},
                                          {"problem": "half?", "answers": ["1/2", "0.5"], "answer": "1/2"}])
    rows, source = load_rows(str(file))
    problems = to_problems(rows, source)
    assert [(p.prompt, p.answer, p.answers, p.id) for p in problems] == [
        ("1+1?", "2", ("2",), "a"), ("half?", "1/2", ("1/2", "0.5"), "2")]


@pytest.mark.parametrize("row, message", [
    ({"question": "1+1?", "answer": "2"}, "row 2: no field 'problem'"),
    ({"problem": "  ", "answer": "2"}, "row 2: field 'problem' is empty"),
    ({"problem": "1+1?"}, "row 2: no answer (field 'answer' missing or empty)"),
    ({"problem": "1+1?", "answers": []}, "row 2: no answer (field 'answers' missing or empty)"),
])
def test_a_bad_row_names_the_file_the_row_and_the_field(tmp_path, row, message):
    file = _jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, row])
    with pytest.raises(SpecError) as e:
        to_problems(*load_rows(str(file)))
    assert str(file) in e.value.message and message in e.value.message


def test_a_bad_row_or_a_missing_file_exits_2_in_one_line(tmp_path, results_dir):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, {"problem": "x"}])
    spec = tmp_path / "s.yaml"
    spec.write_text(f"task: {{name: dataset, train: {bad}, heldout: [{bad}]}}\n")
    result = CliRunner().invoke(app, ["run", str(spec), "--set", "model=tiny_cpu", "--set", "train.steps=1"])
    assert result.exit_code == 2 and f"{bad}: row 2: no answer" in result.output, result.output
    missing = CliRunner().invoke(app, ["run", str(spec), "--set", "task.train=math6/train/nope.jsonl",
                                       "--set", "model=tiny_cpu", "--dry-run"])
    # a file the data root lacks is missing data (exit 3, errors.py); an absolute path that is no file is a spec error
    assert missing.exit_code == 3 and "task.train" in missing.output and "nope.jsonl" in missing.output, missing.output
    absent = CliRunner().invoke(app, ["run", str(spec), "--set", f"task.train={tmp_path / 'nope.jsonl'}",
                                      "--set", "model=tiny_cpu", "--dry-run"])
    assert absent.exit_code == 2 and "task.train" in absent.output and "nope.jsonl" in absent.output, absent.output


def test_heldout_reads_suite_benchmarks_and_files(tmp_path):
    file = _jsonl(tmp_path / "mine.jsonl", [{"problem": "p", "answer": "1"}] * 3)
    task = TaskSpec(name="dataset", train=str(file), heldout=["math6/aime24", str(file)], heldout_limit=2)
    benchmarks = heldout_benchmarks(task)
    assert list(benchmarks) == ["aime24", "mine"] and [len(v) for v in benchmarks.values()] == [2, 2]
    assert benchmarks["aime24"][0].id == "aime24-000" and benchmarks["aime24"][0].answers
    assert len(get_task(task).heldout_problems(task)) == 4
    assert data_problems(task) == []
    bad = TaskSpec(name="dataset", train=str(file), heldout=["math6/aime42"])
    assert "aime42" in data_problems(bad)[0]


def test_prompts_use_the_chat_template_when_there_is_one():
    from occctl.models import build_tokenizer

    tok = build_tokenizer()
    assert render_task_prompt(tok, "1+1?", "raw") == "1+1?"
    assert render_task_prompt(tok, "1+1?", "deepscaler").startswith("1+1? Let's think step by step")
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    assert render_task_prompt(tok, "1+1?", "dapo") == "<|user|>" + TEMPLATES["dapo"].format(problem="1+1?") + \
        "<|assistant|>"


@pytest.mark.parametrize("task, message", [
    ({"name": "dataset", "heldout": ["math6/aime24"]}, "task.train"),
    ({"name": "dataset", "train": "math6/train/dapo_math_17k.jsonl"}, "task.heldout"),
    ({"name": "arith", "train": "x.jsonl"}, "task.train belongs to task.name: dataset"),
    ({"name": "dataset", "train": "a.jsonl", "heldout": ["b.jsonl"], "grader": "exact_match@1"}, "does not grade"),
])
def test_dataset_keys_are_checked(task, message):
    with pytest.raises(SpecError, match=message):
        validate_spec({"name": "t", "task": task, "warmup": {"enabled": False}}, "s.yaml")


def test_the_tiny_cpu_preset_sets_explicit_keys_that_a_later_set_overrides():
    spec = load_spec(REPO / "specs" / "qwen25_math_1p5b_occ.yaml",
                     ["model=tiny_cpu", "train.steps=3", "train.max_new_tokens=40"])
    assert spec.model.preset == "tiny" and spec.model.path is None and spec.model.tiny.num_heads == 2
    assert spec.model.tiny.hidden_size // spec.model.tiny.num_heads >= 32, "head size >= 32"
    assert spec.train.steps == 3 and spec.train.max_new_tokens == 40 and not spec.warmup.enabled
    assert spec.task.name == "dataset" and spec.task.max_prompt_tokens == 256 and spec.backend_options == {}
    with pytest.raises(SpecError, match="unknown model preset 'tiny_gpu'"):
        load_spec(REPO / "specs" / "tiny_occ.yaml", ["model=tiny_gpu"])
    assert load_spec(REPO / "specs" / "tiny_occ.yaml", ["model=tiny_cpu"]).task.max_prompt_tokens == 1024


def test_a_model_shape_that_cannot_hold_the_task_is_refused(tmp_path, results_dir):
    result = CliRunner().invoke(app, ["run", str(REPO / "specs" / "qwen25_math_1p5b_occ.yaml"), "--dry-run",
                                      "--set", "train.max_new_tokens=3500"])
    assert result.exit_code == 2 and "max_position_embeddings = 4096" in result.output, result.output
