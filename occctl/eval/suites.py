"""Suites: a name -> its benchmarks, where their data lives, and the sampling the paper evaluates with.

``math6`` is the paper's suite (DeepScaleR's test files plus MathArena's AIME 2025); ``tiny`` is the held-out
split of the embedded arithmetic task, evaluated exactly as a run's own held-out eval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occctl.data import HubSource, dataset_dir, load_hub_rows, read_jsonl
from occctl.errors import SpecError, did_you_mean

# DeepScaleR's prompt: the problem, a space, then this instruction (one user message; chat template if any).
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


@dataclass(frozen=True)
class BenchmarkProblem:
    """One problem of a math benchmark (a task's own problems are ``occctl.tasks.arith.Problem``)."""

    id: str
    problem: str
    answers: tuple[str, ...]  # every acceptable reference, main answer first


@dataclass(frozen=True)
class Sampling:
    """Sampling per the paper: k samples per problem, temperature 1.0, top-p 0.7 (no top-k)."""

    k: int = 32
    temperature: float = 1.0
    top_p: float = 0.7
    max_new_tokens: int = 8192
    seed: int = 0

    def key_fields(self) -> dict[str, Any]:
        """What identifies a set of generations (k is not part of it: samples 0..k-1 are shared across k)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed}


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str  # "math": JSONL benchmarks graded by a math grader; "task": the embedded task's held-out split
    benchmarks: tuple[str, ...] = ()  # evaluated by default
    optional: tuple[str, ...] = ()  # selectable with --benchmarks
    hub: dict[str, HubSource] = field(default_factory=dict)
    sampling: Sampling = Sampling()
    about: str = ""  # one line for --help, after the benchmarks

    @property
    def all_benchmarks(self) -> tuple[str, ...]:
        return self.benchmarks + self.optional


_AMC = HubSource("AI-MO/aimo-validation-amc", "train")
SUITES: dict[str, Suite] = {
    "math6": Suite(
        name="math6", kind="math",
        benchmarks=("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench"),
        optional=("amc23_40",),
        hub={
            "aime24": HubSource("HuggingFaceH4/aime_2024", "train"),
            "aime25": HubSource("math-ai/aime25", "test"),
            "amc23": _AMC,
            "amc23_40": HubSource(_AMC.repo, _AMC.split, keep_if={"url": "2023_AMC_12"}),
            "math500": HubSource("HuggingFaceH4/MATH-500", "test"),
            "minerva": HubSource("math-ai/minervamath", "test"),
            "olympiadbench": HubSource("Hothan/OlympiadBench", "train", config="OE_TO_maths_en_COMP",
                                       problem_fields=("question", "problem"),
                                       answer_fields=("final_answer", "answer")),
        },
        sampling=Sampling(k=32, temperature=1.0, top_p=0.7, max_new_tokens=8192, seed=0),
        about="the paper's six benchmarks",
    ),
    "tiny": Suite(name="tiny", kind="task", benchmarks=("heldout",), about="the embedded task's held-out split"),
}


def describe_suites() -> str:
    """Every suite in one line, from the registry: ``math6 (the paper's ...: aime24, ...; amc23_40 selectable)``."""
    parts = []
    for suite in SUITES.values():
        names = ", ".join(suite.benchmarks) if suite.kind == "math" else ""
        if suite.optional:
            names += f"; {', '.join(suite.optional)} selectable"
        parts.append(f"{suite.name} ({suite.about}{': ' + names if names else ''})")
    return " or ".join(parts)


def training_eval_key(suite: str, metric: str) -> str:
    """The metric key of a held-out eval during training, e.g. ``eval/tiny/avg_at_k`` (plotted by reports)."""
    return f"eval/{suite}/{metric}"


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        hint = did_you_mean(name, SUITES)
        raise SpecError(f"unknown suite {name!r}{hint}; valid suites: {', '.join(SUITES)}")
    return SUITES[name]


def select_benchmarks(suite: Suite, names: list[str] | None) -> list[str]:
    """The suite's default benchmarks, or the named ones (any of the suite's, optional ones included)."""
    if not names:
        return list(suite.benchmarks)
    chosen = []
    for name in names:
        if name not in suite.all_benchmarks:
            hint = did_you_mean(name, suite.all_benchmarks)
            raise SpecError(f"suite {suite.name} has no benchmark {name!r}{hint}; valid: "
                            f"{', '.join(suite.all_benchmarks)}")
        if name not in chosen:
            chosen.append(name)
    return chosen


def load_benchmarks(suite: Suite, names: list[str], data_dir: str | Path | None = None, limit: int | None = None,
                    from_hub: bool = False) -> dict[str, list[BenchmarkProblem]]:
    """Problems per benchmark (the first ``limit`` of each when set); missing data is one clear SpecError."""
    if from_hub:
        missing = [n for n in names if n not in suite.hub]
        if missing:
            raise SpecError(f"suite {suite.name} has no HF-hub source for {', '.join(missing)}",
                            hint=f"put the files under the data root ({suite.name}/<benchmark>.jsonl) and drop "
                            "--from-hub")
        rows = {n: load_hub_rows(n, suite.hub[n]) for n in names}
    else:
        root = dataset_dir(suite.name, [f"{n}.jsonl" for n in names], data_dir)
        rows = {n: read_jsonl(root / f"{n}.jsonl") for n in names}
    out: dict[str, list[BenchmarkProblem]] = {}
    for name, items in rows.items():
        problems = [_problem(name, i, row) for i, row in enumerate(items)]
        ids = [p.id for p in problems]
        if len(set(ids)) != len(ids):
            raise SpecError(f"{name}: duplicate problem ids in the data")
        out[name] = problems[:limit] if limit is not None else problems
    return out


def _problem(benchmark: str, index: int, row: dict[str, Any]) -> BenchmarkProblem:
    try:
        answers = row.get("answers") or [row["answer"]]
        return BenchmarkProblem(id=str(row.get("id", f"{benchmark}-{index:04d}")), problem=str(row["problem"]),
                       answers=tuple(str(a) for a in answers))
    except KeyError as e:
        raise SpecError(f"{benchmark}: row {index} has no {e.args[0]!r} field (expected id, problem, answer, "
                        f"answers)") from None
