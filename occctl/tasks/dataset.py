"""The dataset task: math problems from a file or the HF hub, graded by a math grader (``occctl.eval.graders``).

``task.train`` is a JSONL or parquet file (``<dataset>/<file>`` under the data root, or an absolute path) or an HF
dataset id, read with ``datasets`` (a local file works offline; a hub id needs network). Rows carry ``problem``
and ``answer`` or ``answers`` (a list, main answer first), as ``../shared/data/math6/``. ``task.heldout`` names
benchmarks as ``<suite>/<benchmark>`` (``math6/aime24``: the suite's files, as ``occctl eval`` reads them) or files
like ``task.train``. A bad row (empty problem, no answer), an unknown column or an absolute path that is no file is
a SpecError (exit 2) naming the file, the row and the field; a ``<dataset>/<file>`` the data root lacks is missing
data (``DataMissingError``, exit 3, as everywhere in occctl), named with its ``task.*`` field. Prompts are rendered by ``occctl.eval.prompts`` (the code ``occctl eval`` uses).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from occctl.errors import DataMissingError, EnvError, SpecError
from occctl.registry import TASK_GRADERS
from occctl.tasks.arith import Problem

if TYPE_CHECKING:
    from occctl.spec import TaskSpec

GRADERS = TASK_GRADERS["dataset"]  # default first
VERL_ONLY_GRADERS = ("verl_math_dapo@1",)  # veRL's own DAPO scorer (its `math_dapo` reward), kept as a choice
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_file_ref(ref: str) -> bool:
    return ref.endswith(FILE_SUFFIXES) or Path(ref).expanduser().is_absolute()


def resolve_file(ref: str) -> Path:
    """A data file: an absolute path, or ``<dataset>/<file>`` under occctl's data root (``occctl.data``)."""
    from occctl.data import dataset_dir

    path = Path(ref).expanduser()
    if path.is_absolute():
        if not path.is_file():
            raise SpecError(f"no such file: {path}")
        return path
    name, _, rest = ref.partition("/")
    if not rest:
        raise SpecError(f"{ref}: expected <dataset>/<file>, e.g. math6/train/dapo_math_17k.jsonl, an absolute path "
                        "or an HF dataset id")
    return dataset_dir(name, [rest]) / rest


def load_rows(ref: str) -> tuple[list[dict[str, Any]], str]:
    """The rows of a file or HF dataset, with the name messages use for it."""
    import datasets

    datasets.disable_progress_bars()
    if is_file_ref(ref):
        path = resolve_file(ref)
        kind = "parquet" if path.suffix == ".parquet" else "json"
        try:
            table = datasets.load_dataset(kind, data_files=str(path), split="train")
        except (ValueError, datasets.exceptions.DatasetGenerationError) as e:
            raise SpecError(f"{path}: cannot read it as {kind}: {str(e).splitlines()[0]}") from None
        return list(table), str(path)
    try:
        table = datasets.load_dataset(ref, split="train")
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types; report the first line
        raise EnvError(f"task data {ref}: cannot load it from the HF hub: {str(e).splitlines()[0]}",
                       hint="give a local JSONL/parquet file, or check network access and HF_HUB_OFFLINE") from None
    return list(table), ref


def to_problems(rows: list[dict[str, Any]], source: str) -> list[Problem]:
    """Rows -> problems; the first bad row is a SpecError naming the file, the row (1-based) and the field."""
    out = []
    for n, row in enumerate(rows, 1):
        row = {k: v for k, v in row.items() if v is not None}  # `datasets` gives every row every column
        if "problem" not in row:
            raise SpecError(f"{source}: row {n}: no field 'problem' (it has {', '.join(sorted(row)) or 'none'})",
                            hint="rows need `problem` and `answer` or `answers`, as ../shared/data/math6/")
        problem = row["problem"]
        if not isinstance(problem, str) or not problem.strip():
            raise SpecError(f"{source}: row {n}: field 'problem' is empty")
        answers = row.get("answers") or ([row["answer"]] if row.get("answer") not in (None, "") else [])
        answers = [str(a).strip() for a in answers if a is not None and str(a).strip()]
        if not answers:
            field = "answers" if "answers" in row else "answer"
            raise SpecError(f"{source}: row {n}: no answer (field '{field}' missing or empty)")
        out.append(Problem(prompt=problem, answer=answers[0], answers=tuple(answers), id=str(row.get("id", n))))
    if not out:
        raise SpecError(f"{source}: no rows")
    return out


@functools.lru_cache(maxsize=8)
def _problems(ref: str) -> tuple[Problem, ...]:
    rows, source = load_rows(ref)
    return tuple(to_problems(rows, source))


def train_problems(task: TaskSpec, seed: int = 0, count: int | None = None) -> list[Problem]:
    """The training rows in file order (the trainer shuffles them with its seed); the first ``count`` when set."""
    problems = list(_problems(task.train))
    return problems[:count] if count else problems


def heldout_problems(task: TaskSpec) -> list[Problem]:
    """Every held-out benchmark's problems (the first ``task.heldout_limit`` of each), benchmarks in order."""
    return [p for problems in heldout_benchmarks(task).values() for p in problems]


def heldout_benchmarks(task: TaskSpec) -> dict[str, list[Problem]]:
    """``task.heldout`` -> {benchmark name: problems}; ``<suite>/<benchmark>`` reads the suite's data."""
    out: dict[str, list[Problem]] = {}
    for ref in task.heldout:
        if is_file_ref(ref):
            name, problems = Path(ref).stem, list(_problems(ref))
        else:
            name, problems = ref.rpartition("/")[2], _suite_problems(ref)
        out[name] = problems[:task.heldout_limit] if task.heldout_limit else problems
    return out


def _suite_problems(ref: str) -> list[Problem]:
    from occctl.eval.suites import load_benchmarks

    suite, name = _benchmark(ref)
    return [Problem(prompt=p.problem, answer=p.answers[0], answers=p.answers, id=p.id)
            for p in load_benchmarks(suite, [name])[name]]


def prompt_text(task: TaskSpec, tokenizer: Any, problem: Problem) -> str:
    from occctl.eval.prompts import render_task_prompt

    return render_task_prompt(tokenizer, problem.prompt, task.prompt)


def data_problems(task: TaskSpec) -> list[str]:
    """Bad data references of a dataset task, one line each (cheap: no file is read; hub ids are not checked).

    Raises DataMissingError (exit 3) for a ``<dataset>/<file>`` or benchmark the data root lacks."""
    if task.name != "dataset":
        return []
    problems = []
    for field, refs in (("train", [task.train]), ("heldout", task.heldout)):
        for ref in refs:
            try:
                if is_file_ref(ref):
                    resolve_file(ref)
                elif field == "heldout":
                    _check_benchmark(ref)
            except DataMissingError as e:
                raise DataMissingError(f"task.{field}: {e.message}", e.hint) from None
            except SpecError as e:
                problems.append(f"task.{field}: {e.message}")
    return problems


def _check_benchmark(ref: str) -> None:
    from occctl.data import dataset_dir

    suite, name = _benchmark(ref)
    dataset_dir(suite.name, [f"{name}.jsonl"])


def _benchmark(ref: str):
    """``math6/aime24`` -> (the suite, the benchmark's name)."""
    from occctl.eval.suites import get_suite, select_benchmarks

    suite_name, _, benchmark = ref.partition("/")
    suite = get_suite(suite_name)
    if suite.kind != "math" or not benchmark:
        raise SpecError(f"{ref!r}: expected <suite>/<benchmark> of a math suite, e.g. math6/aime24, or a JSONL file")
    [name] = select_benchmarks(suite, [benchmark])
    return suite, name
