"""Training / validation prompts: occctl's JSONL (``problem``, ``answer``) -> veRL's RL parquet rows.

veRL reads ``prompt`` (chat messages), ``data_source`` (routes its rule-based scorer), ``reward_model``
(``ground_truth``) and ``extra_info``. The DAPO template and the ``math_dapo`` scorer are DAPO-Math-17k's
(as in veRL's DAPO recipe and the authors' script); ``deepscaler`` asks for ``\\boxed{}`` (veRL's MATH scorer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from occctl.data import read_jsonl
from occctl.errors import SpecError
from occctl.eval.prompts import TEMPLATES  # one copy of the prompt formats: the TRL backend and occctl eval use it

from backends.verl_backend.translate import TEMPLATE_SOURCES



def verl_rows(rows: list[dict[str, Any]], template: str, split: str, source: str) -> list[dict[str, Any]]:
    out = []
    for n, row in enumerate(rows):
        if "problem" not in row or "answer" not in row:
            raise SpecError(f"{source}: row {n + 1} has no 'problem' / 'answer' field (occctl JSONL schema)")
        out.append({
            "data_source": TEMPLATE_SOURCES[template],
            "prompt": [{"role": "user", "content": TEMPLATES[template].format(problem=row["problem"])}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(row["answer"])},
            "extra_info": {"split": split, "index": n, "id": str(row.get("id", n)),
                           "answers": [str(a) for a in row.get("answers") or [row["answer"]]]},
        })
    return out


def write_parquet(source: Path, target: Path, template: str, split: str) -> int:
    """Convert one JSONL file; returns the number of rows."""
    import pandas as pd

    rows = verl_rows(read_jsonl(source), template, split, str(source))
    if not rows:
        raise SpecError(f"{source}: no prompts")
    target.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(target, index=False)
    return len(rows)
