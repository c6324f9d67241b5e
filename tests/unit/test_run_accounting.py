"""Resume accounting and shared files: wall_s adds up over a run's segments, files are as readable as the umask
allows, checkpoint markers catch a changed export, report gaps name the cells left out."""

from __future__ import annotations

import os
import stat

from occctl.checkpoint_marker import MARKER, is_complete, mark_complete, problem
from occctl.report.selection import group_gaps
from occctl.rundir import FILE_MODE, RunDir, WallClock, write_text_atomic


def test_wall_s_adds_up_across_segments(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    times = iter([100.0, 130.0, 150.0,   # segment 1: starts, checkpoint at +30, killed at +50 (20 s redone)
                  500.0, 510.0, 540.0])  # segment 2: starts, checkpoint at +10, ends at +40
    monkeypatch.setattr("occctl.rundir.time.perf_counter", lambda: next(times))
    first = WallClock(run)
    first.checkpoint()
    next(times)  # the kill: nothing recorded
    second = WallClock(run)
    second.checkpoint()
    assert second.total() == 30.0 + 40.0  # what the run kept: segment 1 up to its checkpoint, all of segment 2


def test_atomic_writes_follow_the_umask(tmp_path):
    write_text_atomic(tmp_path / "x.json", "{}")
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == FILE_MODE
    assert FILE_MODE & 0o040, "group-readable under the usual umask 022 / 002"


def test_marker_makes_private_files_readable_and_catches_changes(tmp_path):
    d = tmp_path / "final"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"x" * 10)
    os.chmod(d / "model.safetensors", 0o600)  # as safetensors writes
    assert problem(d) == f"no {MARKER}: its export did not finish"
    mark_complete(d)
    assert is_complete(d) and stat.S_IMODE((d / "model.safetensors").stat().st_mode) & 0o044 == FILE_MODE & 0o044
    (d / "model.safetensors").write_bytes(b"x" * 5)
    assert problem(d) == "model.safetensors has 5 bytes, the export wrote 10"


def test_group_gaps_name_unfinished_and_unpublished_cells():
    gaps = group_gaps(["g"], finished_names={"g.a"},
                      statuses={"g": {"g.a": "FINISHED", "g.b": "RUNNING", "g.c": "RUNNING", "g.d": "KILLED"}},
                      folders={"g": {"g.a": "finished", "g.b": "finished", "g.c": "unfinished"}})
    assert gaps == ["group g: 2 cell(s) not finished, left out: g.c (unfinished), g.d (killed) (rerun the study to "
                    "finish them)",
                    "group g: 1 finished cell(s) not published to MLflow, left out: g.b (rerun the study: it "
                    "publishes them)"]
    assert group_gaps(["g"], {"g.a"}, {"g": {"g.a": "FINISHED"}}, {"g": {"g.a": "finished"}}) == []
