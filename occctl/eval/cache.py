"""The eval cache: generations, grades and MTP acceptance as append-only JSONL, one directory per
(checkpoint, suite, prompt, sampling params).

    <base>/eval/<suite>/<t..._p..._n..._s...>-<hash>/
        key.json                      what the hash covers (checkpoint fingerprint, suite, prompt, sampling)
        generations/<benchmark>.jsonl {id, sample, text, token_ids, finish, prompt_tokens, engine}
        grades/<grader>/<benchmark>.jsonl {id, sample, correct, pred, status}
        mtp_acceptance/<benchmark>.jsonl  {id, sample, hits, tokens}
        results_<grader>[_limit<N>].json / .md

k is not part of the key: sample indices 0..k-1 are shared, so a larger k only generates the new indices and
``--limit`` runs are reused by the full run. Rows are appended and flushed batch by batch; a torn last line
(a kill mid-write) is dropped on the next open, so an interrupted eval resumes where it stopped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from occctl.errors import RunError
from occctl.jsonio import dumps
from occctl.rundir import write_json_atomic

CACHE_FORMAT = 1
RowKey = tuple[str, int]  # (problem id, sample index)


def cache_dir_for(eval_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True).encode()).hexdigest()
    s = key["sampling"]
    label = f"t{s['temperature']:g}_p{s['top_p']:g}_n{s['max_new_tokens']}_s{s['seed']}"
    return eval_dir / f"{label}-{digest[:10]}"


def open_cache(eval_dir: Path, key: dict[str, Any]) -> Path:
    directory = cache_dir_for(eval_dir, key)
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "key.json").is_file():
        write_json_atomic(directory / "key.json", {"format": CACHE_FORMAT, **key})
    return directory


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One writer per cache directory; a second eval on the same cache fails fast instead of interleaving."""
    with (directory / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"another occctl eval is writing {directory}",
                           hint="wait for it to finish (or stop it); the cache is shared, nothing is lost") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _repair(path: Path) -> None:
    """Drop a torn (unterminated) last line left by a kill mid-write."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def read_rows(path: Path) -> dict[RowKey, dict[str, Any]]:
    """Rows by (id, sample); a later row for the same key wins; an unparsable line is skipped."""
    rows: dict[RowKey, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                rows[(row["id"], int(row["sample"]))] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return rows


class RowWriter:
    """Appends rows to one JSONL file, flushed (and fsynced) per batch."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair(path)
        self._f = path.open("a", encoding="utf-8")

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._f.write("".join(dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def generations_path(directory: Path, benchmark: str) -> Path:
    return directory / "generations" / f"{benchmark}.jsonl"


def grades_path(directory: Path, grader_slug: str, benchmark: str) -> Path:
    return directory / "grades" / grader_slug / f"{benchmark}.jsonl"


def acceptance_path(directory: Path, benchmark: str) -> Path:
    return directory / "mtp_acceptance" / f"{benchmark}.jsonl"


def fingerprint(model: str) -> str:
    """Identifies a checkpoint's contents: names, sizes and the first/last MiB of each file (cheap for big
    weights); a hub id is its own fingerprint."""
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}"
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]
