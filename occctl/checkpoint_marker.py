"""The completion marker of an exported checkpoint (``checkpoints/final``, ``checkpoints/step-N``): written after
every file of the export, it lists them with their sizes. A checkpoint without it (an export cut short by a full
disk, a kill, or a copy still under way) or whose files no longer match it is refused, never evaluated."""

from __future__ import annotations

import json
from pathlib import Path

from occctl.errors import RunError
from occctl.rundir import FILE_MODE, write_json_atomic

MARKER = "occctl_complete.json"
MARKER_FORMAT = "occctl-checkpoint@1"


class IncompleteCheckpointError(RunError):
    """A run's checkpoint lacks its completion marker, or its files differ from what the marker lists."""

    exit_code = 2


def mark_complete(directory: Path) -> None:
    """Record every file of an exported checkpoint (relative path -> size); call once the export has returned.
    Files written private (safetensors writes 0600) get the read bits the umask allows, like the rest of results/."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MARKER:
            mode = path.stat().st_mode
            if mode | (FILE_MODE & 0o444) != mode:
                path.chmod(mode | (FILE_MODE & 0o444))
            files[str(path.relative_to(directory))] = path.stat().st_size
    write_json_atomic(directory / MARKER, {"format": MARKER_FORMAT, "files": files})


def is_complete(directory: Path) -> bool:
    return problem(directory) is None


def require_complete(directory: Path, what: str) -> None:
    """IncompleteCheckpointError (one line, exit 2) unless ``directory`` is a complete export."""
    found = problem(directory)
    if found:
        raise IncompleteCheckpointError(f"{what}: checkpoint {directory} is incomplete ({found}); refusing to "
                                        "evaluate it",
                                        hint="rerun it with `occctl run` to export it again (a folder written "
                                             "by an occctl older than the marker: --fresh, or evaluate a native "
                                             "checkpoint, --checkpoint <run>/trl/checkpoint-N, which is exported "
                                             "and marked)")


def problem(directory: Path) -> str | None:
    """Why ``directory`` is not a complete export, or None."""
    try:
        data = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {MARKER}: its export did not finish"
    except (OSError, ValueError) as e:
        return f"{MARKER} unreadable: {type(e).__name__}"
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("format") != MARKER_FORMAT or not isinstance(files, dict):
        return f"{MARKER}: unknown format"
    for name, size in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the export wrote {size}"
    return None
