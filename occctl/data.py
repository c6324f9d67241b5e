"""Dataset paths under the data root, JSONL reading, and the HF-hub loader (for machines with network).

The data root is ``--data-dir``, then ``$OCCCTL_DATA_DIR``, then ``../shared/data`` (next to the checkout or
the working directory) when present. A named dataset (``math6``) lives in ``<root>/<name>/``; a directory that
holds the files itself is accepted too, so ``--data-dir ../shared/data/math6`` and ``--data-dir ../shared/data``
mean the same thing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occctl.errors import DataMissingError, EnvError, SpecError

DATA_ENV = "OCCCTL_DATA_DIR"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the HF hub and how its columns map onto our row schema."""

    repo: str
    split: str
    config: str | None = None
    problem_fields: tuple[str, ...] = ("problem", "question")
    answer_fields: tuple[str, ...] = ("answer", "final_answer")
    id_fields: tuple[str, ...] = ("id", "unique_id")
    keep_if: dict[str, str] = field(default_factory=dict)  # column -> substring that must occur


def default_roots() -> list[Path]:
    """``../shared/data`` beside the checkout and beside the working directory (in that order, deduplicated)."""
    roots: list[Path] = []
    for base in (REPO, Path.cwd()):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate not in roots:
            roots.append(candidate)
    return roots


def dataset_dir(name: str, required: list[str], data_dir: str | Path | None = None) -> Path:
    """The directory holding dataset ``name``'s files ``required``; one clear DataMissingError (exit 3) when absent."""
    if data_dir is not None:
        origins = [(Path(data_dir).expanduser(), "--data-dir")]
    elif os.environ.get(DATA_ENV):
        origins = [(Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}")]
    else:
        origins = [(root, "the default") for root in default_roots()]
    for base, _ in origins:
        for candidate in (base / name, base):
            if all((candidate / f).is_file() for f in required):
                return candidate.resolve()
    base, origin = origins[0]
    where = " or ".join(str(b) for b, _ in origins) if len(origins) > 1 else str(base)
    missing = [f for f in required if not (base / name / f).is_file() and not (base / f).is_file()]
    raise DataMissingError(f"{name} data not found: {', '.join(missing)} missing in {where} ({origin}, also tried "
                    f"<dir>/{name}/); pass --data-dir DIR, set ${DATA_ENV}, or use --from-hub with network access")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SpecError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def load_hub_rows(name: str, source: HubSource) -> list[dict[str, Any]]:
    """Rows of one benchmark from the HF hub, in the local schema ``{id, problem, answer, answers, source}``."""
    try:
        import datasets
    except ImportError:
        raise EnvError("--from-hub needs the `datasets` package", hint="pip install datasets") from None
    try:
        table = datasets.load_dataset(source.repo, source.config, split=source.split)
    except Exception as e:  # noqa: BLE001 - network/hub errors come in many types; report the first line
        raise EnvError(f"{name}: cannot load {source.repo} from the HF hub: {str(e).splitlines()[0] if str(e) else e}",
                       hint="check network access and HF_HUB_OFFLINE, or use the local data (--data-dir)") from None
    columns = set(table.column_names)

    def pick(fields: tuple[str, ...], what: str) -> str | None:
        found = next((f for f in fields if f in columns), None)
        if found is None and what:
            raise EnvError(f"{name}: {source.repo} has no {what} column (looked for {', '.join(fields)}; "
                           f"it has {', '.join(sorted(columns))})")
        return found

    problem_col, answer_col, id_col = pick(source.problem_fields, "problem"), pick(source.answer_fields, "answer"), \
        pick(source.id_fields, "")
    rows = []
    for i, raw in enumerate(table):
        if any(needle not in str(raw.get(col, "")) for col, needle in source.keep_if.items()):
            continue
        answer = raw[answer_col]
        answers = [str(a).strip() for a in answer] if isinstance(answer, list) else [str(answer).strip()]
        answers = [_canonical_number(a) for a in answers]
        rows.append({"id": f"{name}-{raw[id_col] if id_col else i}", "problem": raw[problem_col],
                     "answer": answers[0], "answers": answers,
                     "source": f"hf:{source.repo}{'/' + source.config if source.config else ''}:{source.split}"})
    return rows


def _canonical_number(answer: str) -> str:
    """``142.0`` -> ``142`` (AMC floats), as the local files store them."""
    try:
        value = float(answer)
    except ValueError:
        return answer
    return str(int(value)) if value.is_integer() and "e" not in answer.lower() else answer
