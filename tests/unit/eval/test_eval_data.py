"""Data-dir resolution (--data-dir, then $OCCCTL_DATA_DIR, then ../shared/data when present), suite loading, and
the missing-data error (exit 2, one clear line)."""

import json
import os
import subprocess
import sys

import pytest

import occctl.data as data
from occctl.errors import DataMissingError, SpecError
from occctl.eval.suites import get_suite, load_benchmarks, select_benchmarks

NAMES = ["aime24", "minerva"]


def _write(directory, names=NAMES, tag="x"):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        rows = [{"id": f"{name}-{i}", "problem": f"{tag} problem {i}", "answer": str(i), "answers": [str(i)]}
                for i in range(5)]
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def _problems(**kw):
    return load_benchmarks(get_suite("math6"), NAMES, **kw)


def test_explicit_dir_beats_env_beats_default(tmp_path, monkeypatch):
    explicit = _write(tmp_path / "explicit", tag="explicit")
    env = _write(tmp_path / "env" / "math6", tag="env")  # a data root holding math6/
    default = _write(tmp_path / "shared" / "data" / "math6", tag="default")
    monkeypatch.setattr(data, "default_roots", lambda: [tmp_path / "shared" / "data"])
    monkeypatch.setenv("OCCCTL_DATA_DIR", str(tmp_path / "env"))
    assert _problems(data_dir=explicit)["aime24"][0].problem == "explicit problem 0"
    assert _problems()["aime24"][0].problem == "env problem 0"
    monkeypatch.delenv("OCCCTL_DATA_DIR")
    assert _problems()["aime24"][0].problem == "default problem 0"
    assert data.dataset_dir("math6", ["aime24.jsonl"]) == default.resolve()
    # the dir itself or its parent holding math6/ both work
    assert data.dataset_dir("math6", ["aime24.jsonl"], env.parent) == env.resolve()
    assert data.dataset_dir("math6", ["aime24.jsonl"], env) == env.resolve()


def test_the_default_is_shared_data_next_to_the_checkout():
    roots = data.default_roots()
    assert (data.REPO / ".." / "shared" / "data").resolve() in roots


def test_an_explicit_dir_that_lacks_the_files_does_not_fall_through(tmp_path, monkeypatch):
    _write(tmp_path / "shared" / "data" / "math6")
    monkeypatch.setattr(data, "default_roots", lambda: [tmp_path / "shared" / "data"])
    monkeypatch.delenv("OCCCTL_DATA_DIR", raising=False)
    partial = _write(tmp_path / "partial", names=["aime24"])
    with pytest.raises(DataMissingError, match=r"minerva\.jsonl missing in .*partial \(--data-dir"):
        _problems(data_dir=partial)


def test_limit_selection_and_unknown_benchmarks(tmp_path):
    directory = _write(tmp_path / "d", names=["aime24", "amc23_40"])
    suite = get_suite("math6")
    got = load_benchmarks(suite, ["aime24", "amc23_40"], data_dir=directory, limit=3)
    assert [p.id for p in got["amc23_40"]] == ["amc23_40-0", "amc23_40-1", "amc23_40-2"]
    assert select_benchmarks(suite, None) == ["aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench"]
    assert select_benchmarks(suite, ["amc23_40"]) == ["amc23_40"]
    with pytest.raises(SpecError, match="did you mean 'amc23'"):
        select_benchmarks(suite, ["amc22"])
    with pytest.raises(SpecError, match="did you mean 'math6'"):
        get_suite("math5")


def test_real_math6_row_counts():
    suite = get_suite("math6")
    try:
        got = load_benchmarks(suite, list(suite.all_benchmarks))
    except DataMissingError:
        pytest.skip("math6 data not available")
    counts = {k: len(v) for k, v in got.items()}
    assert counts == {"aime24": 30, "aime25": 30, "amc23": 83, "math500": 500, "minerva": 272,
                      "olympiadbench": 675, "amc23_40": 40}
    assert all(p.answers and p.problem for rows in got.values() for p in rows)


@pytest.mark.parametrize("args", [["eval", "selfcheck", "--suite", "math6"],
                                  ["eval", "--suite", "math6", "--model", "{ckpt}", "--limit", "1", "-k", "1"]])
def test_missing_data_is_one_line_exit_3(tmp_path, results_dir, args):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    args = [a.replace("{ckpt}", str(ckpt)) for a in args]
    env = {**os.environ, "OCCCTL_DATA_DIR": str(tmp_path / "nowhere"), "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-m", "occctl", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 3, proc.stderr  # missing data is the environment's (errors.py)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: math6 data not found") and "OCCCTL_DATA_DIR" in lines[0]
    assert "nowhere" in lines[0]
