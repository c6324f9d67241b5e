"""The launcher block, its CLI options and errors, the missing-extra message, the live view's plain lines."""

import json
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from occctl.cli import app
from occctl.launchers.slurm import executor_parameters
from occctl.launchers.view import StudyView, read_progress
from occctl.rundir import RunDir
from occctl.spec import load_study

STUDY = """# a study with a launcher block
matrix: {train.seed: [0, 1]}
train: {steps: 2}
launcher: {name: local, jobs: 2}
"""


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "st.yaml"
    path.write_text(STUDY)
    return path


def test_the_launcher_block_is_read_and_overridden_but_not_part_of_the_runs(study):
    specs, launcher = load_study(study)
    assert (launcher.name, launcher.jobs, launcher.cpus_per_cell) == ("local", 2, None)
    assert "launcher" not in specs[0].model_dump(), "changing the launcher does not change the runs"
    _, launcher = load_study(study, ["launcher.name=slurm", "launcher.slurm.partition=gpu", "launcher.jobs=8"])
    assert (launcher.name, launcher.jobs, launcher.slurm.partition) == ("slurm", 8, "gpu")


@pytest.mark.parametrize("args, message", [
    (["--launcher", "locl"], "launcher.name: Input should be 'sequential', 'local', 'ray' or 'slurm'; got 'locl'"),
    (["--launcher", "sequential", "--jobs", "2"], "jobs = 2 needs a parallel launcher"),
    (["--set", "launcher.slurm.partion=gpu"], "launcher.slurm.partion: unknown key (did you mean 'partition'?)"),
])
def test_a_bad_launcher_is_one_line_and_exit_2(study, results_dir, args, message):
    result = CliRunner().invoke(app, ["run", str(study), *args])
    assert result.exit_code == 2 and message in result.output
    assert not results_dir.exists(), "nothing was written"


@pytest.mark.parametrize("launcher, module", [("ray", "ray"), ("slurm", "submitit")])
def test_a_missing_extra_is_exit_2_with_the_install_command(study, results_dir, monkeypatch, launcher, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    result = CliRunner().invoke(app, ["run", str(study), "--launcher", launcher])
    assert result.exit_code == 2
    assert f"--launcher {launcher} needs the {module} package" in result.output
    assert f"pip install 'occctl[{launcher}]'" in result.output
    assert not (results_dir / "runs").exists(), "no cell was prepared"


def test_slurm_job_parameters_come_from_the_launcher_block(study):
    _, launcher = load_study(study, ["launcher.name=slurm", "launcher.gpus_per_cell=2", "launcher.cpus_per_cell=8",
                                     "launcher.slurm.partition=gpu", "launcher.slurm.time_min=90",
                                     "launcher.slurm.additional={account: occ}"])
    assert executor_parameters(launcher, "occctl-st") == {
        "name": "occctl-st", "timeout_min": 90, "cpus_per_task": 8, "gpus_per_node": 2, "slurm_partition": "gpu",
        "slurm_additional_parameters": {"account": "occ"}}


def test_the_view_prints_plain_lines_and_skips_a_line_being_written(study, results_dir, tmp_path):
    specs, _ = load_study(study)
    run = RunDir.named(specs[0].name)
    run.path.mkdir(parents=True)
    rows = [{"step": 1, "reward": 0.25, "occ/lambda": 0.0}, {"step": 2, "occ/lambda": -0.5}]
    run.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "rew')
    assert read_progress(run) == (2, 0.25, -0.5)
    log = tmp_path / "view.log"
    with log.open("w") as stream:
        console = Console(file=stream, force_terminal=False, width=200)
        with StudyView(console, specs, "study st") as view:
            view.set_state(specs[0].name, "running")
            view.set_state(specs[1].name, "failed", "exit code 1: boom")
    lines = log.read_text().splitlines()
    assert lines == ["cell st.seed-0  running  step 2/2  reward 0.250  λ -0.5000",
                     "cell st.seed-1  failed  step 0/2  exit code 1: boom"]


def test_on_a_terminal_the_view_is_one_table_of_cells(study, results_dir):
    specs, _ = load_study(study)
    console = Console(force_terminal=True, width=200, record=True)
    view = StudyView(console, specs, "study st")
    view.cells[specs[0].name].state = "finished"
    console.print(view.table())
    text = console.export_text()
    assert "study st: 1 finished, 0 running, 0 failed of 2" in text
    for header in ("cell", "state", "step", "reward", "λ", "ETA"):
        assert header in text
    assert "st.seed-1" in text and "pending" in text
