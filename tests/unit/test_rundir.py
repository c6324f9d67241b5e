"""RunDir: the run folder's typed readers and the problems they name."""

import pytest
import yaml

from occctl.rundir import RunDir, RunFileError, TrackingState


def test_readers_name_the_file_and_the_problem(tmp_path):
    run = RunDir(tmp_path / "r")
    for read, problem in ((run.read_spec, "spec.yaml: missing"), (run.read_summary, "summary.json: missing")):
        with pytest.raises(RunFileError, match=problem):
            read()
    run.path.mkdir()
    run.spec_file.write_text(yaml.safe_dump({"name": "r", "mtp": {"regmie": "occ"}}))
    with pytest.raises(RunFileError, match=r"spec.yaml: invalid \(spec.yaml: mtp.regmie: unknown key"):
        run.read_spec()
    run.spec_file.write_text(yaml.safe_dump({"name": "r", "train": {"steps": 7}}))
    assert run.read_spec().train.steps == 7
    run.summary_file.write_text("[1]")
    with pytest.raises(RunFileError, match="summary.json: not a JSON object"):
        run.read_summary()
    run.summary_file.write_bytes(b"\xff{")
    with pytest.raises(RunFileError, match="summary.json: unreadable"):
        run.read_summary()


def test_tracking_state_and_metrics_round_trip(tmp_path):
    run = RunDir(tmp_path)
    assert run.tracking_state() == TrackingState() and run.read_metrics() == [] and run.last_step() is None
    run.write_tracking_state(TrackingState("abc", 8))
    assert run.tracking_state() == TrackingState("abc", 8)
    run.metrics_file.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "reward": 0.7}\n')
    assert run.read_metrics(until=1) == [{"step": 1, "reward": 0.5}] and run.last_step() == 2
    assert run / "trl" == tmp_path / "trl" and str(run) == str(tmp_path)
