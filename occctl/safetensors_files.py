"""Checks of a checkpoint's ``.safetensors`` files before torch or transformers read them, so a truncated, empty
or damaged file is one line naming the file (exit 2) instead of a Rust panic or a deep traceback.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N, N bytes of JSON
``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the data, whose size is the
largest ``end``. Only the header is read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from occctl.errors import OccError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


class DamagedWeightsError(OccError):
    """A ``.safetensors`` file cannot be what its writer meant (truncated, empty, a bad header)."""

    exit_code = 2


def check_weights(directory: str | Path, what: str = "checkpoint") -> None:
    """DamagedWeightsError for the first damaged ``*.safetensors`` file of a local ``directory`` (hub ids and
    directories without such files pass)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for file in sorted(directory.glob("*.safetensors")):
        found = problem(file)
        if found:
            raise DamagedWeightsError(f"{what} {directory}: {file.name} is not a readable safetensors file "
                                      f"({found})",
                                      hint="write it again (a full disk or a killed copy leaves such files); a "
                                           "damaged warm-up cache folder can be deleted: it is retrained")


def problem(file: Path) -> str | None:
    """What is wrong with one safetensors file, or None."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{size} bytes: empty or truncated before its header"
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                return f"header of {length} bytes in a file of {size}: truncated or not safetensors"
            header = json.loads(f.read(length).decode("utf-8"))
    except OSError as e:
        return f"unreadable: {e.strerror or type(e).__name__}"
    except (ValueError, UnicodeDecodeError):
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return f"tensor {name!r} has no valid data_offsets"
        ends.append(offsets[1])
    data = size - 8 - length
    if max(ends, default=0) != data:
        return f"{data} bytes of tensor data where the header describes {max(ends, default=0)}: truncated"
    return None
