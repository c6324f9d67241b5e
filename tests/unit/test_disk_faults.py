"""A full disk (ENOSPC) or a read-only results directory (EROFS) is one `error:` line, exit 3, in run, eval,
report and bench. A fault-injecting writer always runs; the real thing runs on a small tmpfs where this process
may mount one (root), and is skipped elsewhere."""

from __future__ import annotations

import errno
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from occctl.oserrors import environment_error
from reliability import SPEC, assert_one_line_error, invoke, log_runs, tiny_checkpoint

RUN_ARGS = ["run", str(SPEC), "--set", "name=r", "--set", "train.steps=2", "--set", "tracking.mlflow=false"]


# ---- how libraries report a full disk --------------------------------------------------------------------------

@pytest.mark.parametrize("exc, reason", [
    (OSError(errno.ENOSPC, "No space left on device", "/r/spec.yaml"), "no space left on device: /r/spec.yaml"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "/r"), "read-only file system: /r"),
    (OSError(errno.EACCES, "Permission denied", "/r"), "permission denied: /r"),
    (RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: "
                  "file write failed"), "no space left on device"),  # torch.save
    (Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on "
               "device\" })"), "no space left on device"),  # safetensors' SafetensorError
    (sqlite3.OperationalError("database or disk is full"), "no space left on device"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "read-only file system"),
])
def test_environment_errors_are_recognised(exc, reason):
    found = environment_error(exc)
    assert found is not None and found.exit_code == 3 and found.message.startswith(reason)


def test_a_cause_is_followed_and_other_errors_are_left_alone():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/x")
        except OSError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as outer:
        assert environment_error(outer).message.startswith("no space left on device: /x")
    assert environment_error(ValueError("a bug")) is None
    assert environment_error(OSError(errno.ENOENT, "No such file")) is None  # not the machine's fault


def test_a_bug_keeps_its_traceback(results_dir, monkeypatch):
    monkeypatch.setattr("occctl.runner.plan_run", _bug)
    result = invoke(RUN_ARGS)
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)


def _bug(*args, **kwargs):
    raise ZeroDivisionError("a bug")


# ---- fault injection: always runs ------------------------------------------------------------------------------

def _full(*args, dir=None, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(dir))


def test_run_on_a_full_disk_injected(results_dir, monkeypatch):
    monkeypatch.setattr("occctl.rundir.tempfile.mkstemp", _full)
    assert_one_line_error(invoke(RUN_ARGS), 3, "no space left on device")


def test_report_on_a_full_disk_injected(results_dir, monkeypatch):
    results_dir.mkdir(parents=True)
    log_runs(f"sqlite:///{results_dir / 'mlflow.db'}", [("occ", 0, "FINISHED"), ("ce", 0, "FINISHED")])
    monkeypatch.setattr("occctl.rundir.tempfile.mkstemp", _full)
    assert_one_line_error(invoke(["report", "--group", "g", "--compare", "occ,ce"]), 3, "no space left on device")


# ---- a real full / read-only filesystem: a small tmpfs -----------------------------------------------------------

def _mount(directory: Path, options: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")


@pytest.fixture
def mounts(tmp_path):
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        directory = tmp_path / name
        _mount(directory, options)
        mounted.append(directory)
        return directory

    yield mount
    for directory in mounted:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)


def _fill(directory: Path) -> None:
    """Write zeros until the filesystem is full."""
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def test_full_disk_run_eval_report_bench(mounts, monkeypatch, checkpoint, tmp_path):
    disk = mounts("full", "size=4m")
    results = disk / "results"
    results.mkdir()
    log_runs(f"sqlite:///{results / 'mlflow.db'}", [("occ", 0, "FINISHED"), ("ce", 0, "FINISHED")])
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(results))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _fill(disk)
    assert_one_line_error(invoke(RUN_ARGS), 3, "no space left on device")
    assert_one_line_error(invoke(["eval", "--suite", "tiny", "--checkpoint", str(checkpoint), "--limit", "2", "-k",
                                  "1", "--no-mlflow"]), 3, "no space left on device")
    assert_one_line_error(invoke(["report", "--group", "g", "--compare", "occ,ce"]), 3, "no space left on device")
    assert_one_line_error(invoke(["bench", "rollout", str(SPEC), "--checkpoint", str(checkpoint), "--rounds", "2",
                                  "--out", str(disk / "bench.json")]), 3, "no space left on device")


def test_read_only_results_directory(mounts, monkeypatch, checkpoint):
    results = mounts("ro", "ro,size=1m")
    monkeypatch.setenv("OCCCTL_RESULTS_DIR", str(results))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert_one_line_error(invoke(RUN_ARGS), 3, "read-only file system")
    assert_one_line_error(invoke(["eval", "--suite", "tiny", "--checkpoint", str(checkpoint), "--limit", "2", "-k",
                                  "1", "--no-mlflow"]), 3, "read-only file system")
