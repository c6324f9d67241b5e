"""JSON that every parser reads: occctl writes ``null`` for a non-finite float (NaN, ±Infinity), never the bare
``NaN`` / ``Infinity`` Python's ``json`` emits by default, which strict parsers (``jq``, browsers, ``json.loads``
with ``parse_constant``) refuse.

Every JSON file occctl writes goes through ``dumps`` (``summary.json``, ``metrics.jsonl``, ``env.json``, eval results,
bench results, ...): non-finite floats become ``null`` and anything else that could not be written is a ValueError
(``allow_nan=False``), so a regression fails loudly. Readers treat ``null`` as missing: ``number`` for one value,
and ``RunDir.read_metrics`` hands a metrics row's ``null`` back as NaN, what the in-process rows hold. ``read_object``
reads a file that may be absent or torn (another machine's record, an old cache) as a dict or None.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists and tuples, recursively) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` of ``finite(value)``, refusing any non-finite float left (``allow_nan=False``)."""
    return json.dumps(finite(value), allow_nan=False, **options)


def number(value: Any, default: float = math.nan) -> float:
    """A JSON value as a float: ``default`` for null (a non-finite float written as null), a missing key's None,
    a bool or a non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)


def read_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing, unreadable, not JSON or not an object."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
