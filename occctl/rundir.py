"""The results tree: results/runs/<name>/ per run, a shared cache, atomic writes, no path escapes."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from occctl.errors import SpecError
from occctl.spec import NAME_PATTERN


def results_root() -> Path:
    """``$OCCCTL_RESULTS_DIR``, else ``./results``."""
    return Path(os.environ.get("OCCCTL_RESULTS_DIR", "results")).expanduser().resolve()


def cache_root() -> Path:
    """``$OCCCTL_CACHE_DIR``, else ``<results>/cache`` (warm-up checkpoints, reused across runs)."""
    env = os.environ.get("OCCCTL_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else results_root() / "cache"


def run_dir(name: str) -> Path:
    """``results/runs/<name>``; a name that could leave ``results/runs`` is refused."""
    if not re.fullmatch(NAME_PATTERN, name) or set(name) <= {"."}:
        raise SpecError(f"run name {name!r} is not allowed",
                        hint="use letters, digits, '.', '_' and '-' (no path separators)")
    runs = results_root() / "runs"
    path = (runs / name).resolve()
    if path.parent != runs.resolve():
        raise SpecError(f"run name {name!r} resolves outside {runs}")
    return path


def move_aside(path: Path) -> Path:
    """Rename an existing run directory to ``<name>.old-<timestamp>`` (never delete it)."""
    target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    path.rename(target)
    return target


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
