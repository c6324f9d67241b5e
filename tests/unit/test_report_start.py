"""`occctl report` ends table.md with where the compared runs started (their warm-up) and what ran them (env.json),
read from the run folders; a run whose folder is not here is counted, not an error."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from occctl.cli import app
from occctl.rundir import RunDir
from occctl.spec import dump_spec, validate_spec

MACHINE = {"cpu": "Warm-up CPU 9000", "cores": 2, "torch_threads": 1,
           "packages": {"torch": "2.5.1", "transformers": "4.46.0"}}


def env(sha: str, cpu: str = "Test CPU Model X", **machine) -> dict:
    """An env.json as `occctl.environment.environment` writes it; ``machine``: cores, torch_threads (older ones
    lack them)."""
    return {"git_sha": sha, "python": "3.11.9", "platform": "Linux-6.8-x86_64", "cpu": cpu, **machine,
            "packages": {"occctl": "0.1.0", "torch": "2.5.1", "transformers": "4.46.0", "trl": "0.12.0",
                         "mlflow": "2.17.0", "verl": None}}


def warmup_folder(cache, key: str, steps: int = 550, machine: dict | None = MACHINE, checks=True) -> str:
    """A warm-up cache folder as `occctl.warmup` leaves it (older ones lack machine and checks)."""
    record = {"key": key, "steps": steps, "wall_s": 61.0,
              "heldout": {"avg_at_k": 0.0762, "greedy": 0.05, "n_problems": 128}}
    record.update({"checks": [{"step": 25, "avg_at_k": 0.01}]} if checks else {})
    record.update({"machine": machine} if machine else {})
    folder = cache / "warmup" / key
    folder.mkdir(parents=True)
    (folder / "warmup.json").write_text(json.dumps(record))
    return str(folder)


def make_run(name: str, regime: str, seed: int, warm_start: str | None, environment: dict | None,
             target: list | None = None) -> None:
    """A finished run folder (resolved spec, summary.json, env.json) as `occctl run` leaves one."""
    run = RunDir.named(name)
    run.path.mkdir(parents=True)
    spec = {"name": name, "backend": "trl", "algorithm": {"name": "dapo"}, "train": {"steps": 40, "seed": seed},
            "mtp": {"regime": regime}, "eval": {"samples_per_problem": 4}, "tracking": {"experiment": "tiny"},
            "warmup": {"target": target}}
    run.write_spec(validate_spec(spec, name))
    run.write_summary({"name": name, "steps": 40, "warm_start": warm_start})
    if environment is not None:
        run.env_file.write_text(json.dumps(environment))


def log_runs(results, names: list[str]) -> None:
    """Finished MLflow runs named after the folders (regime and seed from the name ``r.regime-<r>.seed-<s>``)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    results.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.create_experiment("tiny")
    for name in names:
        regime, seed = name.split(".")[1].split("-")[1], name.split("-")[-1]
        rid = client.create_run(exp, run_name=name, tags={"occctl.regime": regime, "occctl.seed": seed}).info.run_id
        client.log_param(rid, "train.seed", seed)
        client.log_batch(rid, metrics=[Metric("summary/heldout_acc_after", 0.5 + int(seed) / 10, 0, 40)])
        client.set_terminated(rid, "FINISHED")


def report_section(results) -> str:
    result = CliRunner().invoke(app, ["report", "--experiment", "tiny", "--compare", "detach,occ", "--metric",
                                      "summary/heldout_acc_after", "--name", "start"])
    assert result.exit_code == 0, result.output
    table = (results / "reports" / "start" / "table.md").read_text()
    assert table.rstrip().splitlines()[-1].startswith("Produced by `occctl report"), table
    return table.split("**Start and machine**", 1)[1].split("Produced by")[0].strip()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("OCCCTL_CACHE_DIR", str(root))
    return root


NAMES = ["r.regime-detach.seed-0", "r.regime-detach.seed-1", "r.regime-occ.seed-0"]


def test_the_section_names_each_warm_start_and_environment_once(results_dir, cache):
    shared = warmup_folder(cache, "0123456789abcdef")
    machine = {"cores": 16, "torch_threads": 1}
    make_run(NAMES[0], "detach", 0, shared, env("1a2b3c4d" + "0" * 32, **machine), target=[0.05, 0.15])
    make_run(NAMES[1], "detach", 1, shared, env("1a2b3c4d" + "0" * 32, **machine), target=[0.05, 0.15])
    make_run(NAMES[2], "occ", 0, shared, env("5d6e7f80" + "0" * 32, **machine), target=[0.05, 0.15])
    log_runs(results_dir, NAMES)
    assert report_section(results_dir).splitlines() == [
        "Started from:", "",
        "- warm-up 0123456789abcdef: 550 steps, held-out avg@4 0.076, greedy 0.050, band warmup.target 0.05–0.15; "
        "trained on Warm-up CPU 9000 (2 cores, 1 torch thread), torch 2.5.1, transformers 4.46.0 (3 runs)", "",
        "Ran on:", "",
        "- Test CPU Model X (16 cores, 1 torch thread); python 3.11.9 on Linux-6.8-x86_64; occctl 0.1.0, torch 2.5.1, transformers 4.46.0, "
        "trl 0.12.0, mlflow 2.17.0; git 1a2b3c4 (2 runs), 5d6e7f8 (1 run)"]
    logged = json.loads(mlflow_artifact(results_dir, "report/start_and_machine.json"))
    assert logged["columns"] == ["kind", "record", "runs"] and [row[2] for row in logged["data"]] == [3, 3]


def mlflow_artifact(results, path: str) -> str:
    """A file of the report's MLflow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("occctl-reports").experiment_id])[0]
    return Path(client.download_artifacts(run.info.run_id, path)).read_text()


def test_a_missing_warm_up_folder_and_a_folder_not_here_are_counted(results_dir, cache):
    gone = cache / "warmup" / "feedfacefeedface"
    make_run(NAMES[0], "detach", 0, str(gone), env("1a2b3c4" + "0" * 33))
    make_run(NAMES[2], "occ", 0, str(gone), env("1a2b3c4" + "0" * 33, cpu="Other CPU"))
    log_runs(results_dir, NAMES)  # NAMES[1] is in MLflow only
    section = report_section(results_dir)
    assert "- warm-up feedfacefeedface: record missing (its cache folder is not here) (2 runs)" in section
    assert str(cache) not in section, "a path of this machine"
    assert "- Test CPU Model X; python 3.11.9" in section and "- Other CPU; python 3.11.9" in section
    assert "Run folder not here (MLflow store only): 1 run, start and machine unknown." in section


def test_runs_without_a_warm_up_and_an_old_cache_without_its_machine(results_dir, cache):
    old = warmup_folder(cache, "00000000deadbeef", steps=300, machine=None, checks=False)
    make_run(NAMES[0], "detach", 0, None, env("abcdef1" + "0" * 33))
    make_run(NAMES[1], "detach", 1, None, None)
    make_run(NAMES[2], "occ", 0, old, env("abcdef1" + "0" * 33))
    log_runs(results_dir, NAMES)
    section = report_section(results_dir)
    assert "- no warm-up (2 runs)" in section
    assert ("- warm-up 00000000deadbeef: 300 steps, held-out avg@4 0.076, greedy 0.050; trained on a machine not "
            "recorded (1 run)") in section
    assert "- environment not recorded (env.json missing); git unknown (1 run)" in section
    assert "git abcdef1 (2 runs)" in section and "not here" not in section


def test_env_json_records_the_cores_and_torch_threads(monkeypatch):
    """`environment()` (each run's env.json) names the machine as a warm-up's record does, threads included."""
    import torch

    from occctl.environment import environment, machine_record

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr("os.cpu_count", lambda: 7)
    recorded = environment()
    assert (recorded["cores"], recorded["torch_threads"]) == (7, 3)
    assert {k: recorded[k] for k in ("cpu", "cores", "torch_threads")} == \
        {k: v for k, v in machine_record().items() if k != "packages"}
    assert list(recorded) == ["git_sha", "python", "platform", "cpu", "cores", "torch_threads", "packages"]
