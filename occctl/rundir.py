"""The results tree: results/runs/<name>/ per run (``RunDir`` owns its files), a shared cache, atomic writes,
no path escapes for names that come from specs.

A run folder::

    results/runs/<name>/
      spec.yaml            the resolved spec (written first: a folder without it is not a run)
      native_config.json   what the backend was given (a TRL config, veRL overrides)
      env.json             git SHA, Python, package versions
      tracking.json        the MLflow run id and the last step published to MLflow
      run.lock             held by the process writing the folder (``occctl.runlock``), naming its pid and host
      wall.json            each process's training seconds up to its last checkpoint (``WallClock``)
      metrics.jsonl        one JSON object per optimizer step: {"step": n, "area/name": value, ...}
      checkpoints/final/   HF weights + model-mtp.safetensors (the MTP head in its native layout), and
                           occctl_complete.json last (what `occctl eval` reads)
      eval/<suite>/        cached generations and scores of `occctl eval`
      summary.json         written last: the run is finished

Every JSON file here is strict JSON (``occctl.jsonio``): a non-finite float (a NaN mean of no values, a NaN loss) is
written as ``null``, never as a bare ``NaN``; readers treat ``null`` as missing, and ``read_metrics`` returns a
row's ``null`` as NaN, as the runner's rows in memory hold it.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occctl.errors import OccError, SpecError
from occctl.jsonio import dumps
from occctl.spec import NAME_PATTERN, Spec, dump_spec, read_spec_file, validate_spec

METRICS_TAIL_BYTES = 1 << 16
METRICS_MAX_BYTES = 1 << 25


def results_root() -> Path:
    """``$OCCCTL_RESULTS_DIR``, else ``./results``."""
    return Path(os.environ.get("OCCCTL_RESULTS_DIR", "results")).expanduser().resolve()


def cache_root() -> Path:
    """``$OCCCTL_CACHE_DIR``, else ``<results>/cache`` (warm-up checkpoints, reused across runs)."""
    env = os.environ.get("OCCCTL_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else results_root() / "cache"


WARMUP_RECORD = "warmup.json"  # written last in a warm-up cache folder (``occctl.warmup``): key, steps, machine


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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: results/ may be shared with a group (mkstemp gives 0600)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as strict JSON (non-finite floats as ``null``: ``occctl.jsonio``), replacing ``path`` atomically."""
    write_text_atomic(path, dumps(data, indent=2, sort_keys=False) + "\n")


class RunFileError(OccError):
    """A file of a run folder is missing or unreadable; the message starts with the file's name."""

    exit_code = 2


@dataclass(frozen=True)
class TrackingState:
    """``tracking.json``: the run's MLflow run and the last step whose metrics were published to it."""

    mlflow_run_id: str | None = None
    published_step: int = 0


@dataclass(frozen=True)
class RunDir:
    """One run folder: its paths and typed readers. The only code that spells the folder's file names."""

    path: Path

    @classmethod
    def named(cls, name: str) -> "RunDir":
        """``results/runs/<name>`` (a name that could leave ``results/runs`` is refused)."""
        return cls(run_dir(name))

    @property
    def name(self) -> str:
        return self.path.name

    def __truediv__(self, part: str) -> Path:
        """A path inside the folder (``run_dir / "trl"``): backends keep their native files here."""
        return self.path / part

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    spec_file = property(lambda self: self.path / "spec.yaml")
    summary_file = property(lambda self: self.path / "summary.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    tracking_file = property(lambda self: self.path / "tracking.json")
    wall_file = property(lambda self: self.path / "wall.json")
    native_config_file = property(lambda self: self.path / "native_config.json")
    env_file = property(lambda self: self.path / "env.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    final_checkpoint = property(lambda self: self.path / "checkpoints" / "final")

    def exists(self) -> bool:
        return self.path.is_dir()

    def is_finished(self) -> bool:
        return self.summary_file.is_file()

    # ---- reading ----

    def read_spec(self) -> Spec:
        """The resolved spec; RunFileError ``spec.yaml: missing`` / ``spec.yaml: invalid (...)``."""
        if not self.spec_file.is_file():
            raise RunFileError("spec.yaml: missing")
        try:
            return validate_spec(read_spec_file(self.spec_file), "spec.yaml", run_folder=True)
        except SpecError as e:
            raise RunFileError(f"spec.yaml: invalid ({e.message.splitlines()[0]})") from None
        except (OSError, RecursionError, UnicodeDecodeError) as e:
            raise RunFileError(f"spec.yaml: unreadable ({_first_line(e)})") from None

    def spec_text(self) -> str | None:
        """The saved spec's text (None before the first start), to compare with ``dump_spec`` of a rerun."""
        if not self.spec_file.is_file():
            return None
        try:
            return self.spec_file.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RunFileError(f"spec.yaml: unreadable ({_first_line(e)})") from None

    def read_summary(self) -> dict[str, Any]:
        """``summary.json``; RunFileError ``summary.json: missing`` / ``unreadable (...)`` / ``not a JSON object``."""
        try:
            data = json.loads(self.summary_file.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise RunFileError("summary.json: missing") from None
        except (OSError, ValueError, RecursionError) as e:
            raise RunFileError(f"summary.json: unreadable ({_first_line(e)})") from None
        if not isinstance(data, dict):
            raise RunFileError("summary.json: not a JSON object")
        return data

    def read_metrics(self, until: int | None = None) -> list[dict[str, float]]:
        """The rows of metrics.jsonl (those with ``step <= until`` when given); [] when there is none. A value
        written as ``null`` (non-finite) is NaN here, as in the rows the runner holds in memory."""
        if not self.metrics_file.is_file():
            return []
        lines = [(n, line) for n, line in enumerate(self.metrics_file.read_bytes().splitlines(), 1) if line.strip()]
        rows = []
        for i, (n, line) in enumerate(lines):
            try:
                row = json.loads(line)  # bytes: json decodes UTF-8 itself
            except (ValueError, RecursionError) as e:
                if i == len(lines) - 1:
                    break  # a torn last line (the process died mid-write): its step is redone on resume
                raise RunFileError(f"metrics.jsonl:{n}: not a JSON line ({_first_line(e)})",
                                   hint="the file was damaged; --fresh starts the run over") from None
            if _step_of(line) is None:
                raise RunFileError(f"metrics.jsonl:{n}: not a metrics row (no integer 'step')",
                                   hint="the file was damaged; --fresh starts the run over")
            rows.append({k: math.nan if v is None else v for k, v in row.items()})
        return [r for r in rows if until is None or r["step"] <= until]

    def last_step(self) -> int | None:
        """The largest ``step`` in the last lines of metrics.jsonl (a torn last line is skipped)."""
        try:
            size = self.metrics_file.stat().st_size
            with self.metrics_file.open("rb") as f:
                for chunk in (METRICS_TAIL_BYTES, METRICS_MAX_BYTES):
                    f.seek(max(0, size - chunk))
                    lines = f.read(chunk).splitlines()
                    if size > chunk:
                        lines = lines[1:]  # the first line of a tail is cut
                    steps = [s for s in map(_step_of, lines) if s is not None]
                    if steps or size <= chunk:
                        return max(steps, default=None)
        except OSError:
            return None
        return None

    def tracking_state(self) -> TrackingState:
        if not self.tracking_file.is_file():
            return TrackingState()
        try:
            data = json.loads(self.tracking_file.read_bytes())
            return TrackingState(data.get("mlflow_run_id"), int(data.get("published_step", 0)))
        except (OSError, ValueError, TypeError, AttributeError, RecursionError) as e:
            raise RunFileError(f"tracking.json: unreadable ({_first_line(e)})",
                               hint="it names the run's MLflow run; restore it, or --fresh starts the run over "
                                    "in a new MLflow run") from None

    # ---- writing ----

    def write_spec(self, spec: Spec) -> None:
        write_text_atomic(self.spec_file, dump_spec(spec))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_file, summary)

    def write_tracking_state(self, state: TrackingState) -> None:
        write_json_atomic(self.tracking_file, {"mlflow_run_id": state.mlflow_run_id,
                                               "published_step": state.published_step})


class WallClock:
    """A run's training time across resumes: each process adds its own segment to ``wall.json``, brought up to date
    at every checkpoint, so a killed process counts up to its last checkpoint (the rest is redone, and counted, by
    the process that resumes) and ``total()`` is the time of every segment the run kept."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._start = time.perf_counter()
        self._key = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._earlier = sum(v for k, v in self._segments().items() if k != self._key)

    def checkpoint(self) -> None:
        """Record this segment's time so far (at a checkpoint: what a resume keeps)."""
        segments = self._segments()
        segments[self._key] = round(time.perf_counter() - self._start, 3)
        write_json_atomic(self.run.wall_file, segments)

    def total(self) -> float:
        return self._earlier + time.perf_counter() - self._start

    def _segments(self) -> dict[str, float]:
        try:
            data = json.loads(self.run.wall_file.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise RunFileError(f"wall.json: unreadable ({_first_line(e)})") from None
        if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
            raise RunFileError("wall.json: not a JSON object of seconds")
        return data


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _step_of(line: bytes) -> int | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    if isinstance(step, float) and step.is_integer():
        return int(step)
    return step if isinstance(step, int) and not isinstance(step, bool) else None
