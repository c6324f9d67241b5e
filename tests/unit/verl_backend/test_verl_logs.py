"""Following veRL's console log: step records, occctl metric names, progress, and the launch wrapper."""

import json
import sys
from pathlib import Path

import pytest

from occctl.errors import RunError

from backends.verl_backend.adapter import run_logged
from backends.verl_backend.logs import StepFollower, occctl_metrics, parse_step_line

LINE = ("(TaskRunnerV1 pid=4242) step:3 - actor/pg_loss:-0.0125 - actor/occ/lambda:np.float64(0.25) - "
        "actor/mtp/loss:np.float32(-0.5) - critic/score/mean:0.375 - actor/occ/nonfinite:0 - "
        "timing_s/gen:12.5 - actor/mtp_losses/mtp_1_loss:1.75 - training/global_step:3 - flag:True - x:nan - "
        "actor/lr:1e-06")


def test_parse_step_line():
    step, metrics = parse_step_line(LINE)
    assert step == 3
    assert metrics["actor/pg_loss"] == -0.0125 and metrics["actor/occ/lambda"] == 0.25
    assert metrics["actor/mtp/loss"] == -0.5 and metrics["actor/lr"] == 1e-6 and metrics["flag"] == 1.0
    assert metrics["x"] != metrics["x"]  # nan survives
    assert parse_step_line("\x1b[36m(TaskRunnerV1 pid=7)\x1b[0m step:12 - critic/score/mean:0.5\n") == \
        (12, {"critic/score/mean": 0.5})  # Ray's coloured prefix
    assert parse_step_line("Training Progress:  15%|█▌  | 3/20 [00:31<02:57]") is None
    assert parse_step_line("(WorkerDict pid=1) INFO step:abc") is None


def test_occctl_names():
    _, metrics = parse_step_line(LINE)
    named = occctl_metrics(metrics)
    assert named == {"reward": 0.375, "occ/lambda": 0.25, "mtp/loss": -0.5, "occ/nonfinite": 0.0, "mtp/nll": 1.75}


class FakeProgress:
    def __init__(self):
        self.tasks, self.updates = [], []

    def add_task(self, description, total):
        self.tasks.append((description, total))
        return 0

    def update(self, task, completed, description):
        self.updates.append((completed, description))


def test_follower_counts_optimizer_steps_and_records_everything():
    sunk, recorded, progress = [], [], FakeProgress()
    follower = StepFollower(lambda s, m: sunk.append((s, m)), lambda s, m: recorded.append((s, m)), 4, 200, "occ",
                            progress)
    assert progress.tasks == [("veRL occ", 800)]
    assert follower.feed("(TaskRunnerV1 pid=1) some other line\n") is None
    assert follower.feed(LINE + "\n") == 3
    assert sunk == [(12, occctl_metrics(parse_step_line(LINE)[1]))]  # veRL step 3 = optimizer step 12
    assert recorded[0][0] == 3 and recorded[0][1]["timing_s/gen"] == 12.5
    assert progress.updates[-1][0] == 12 and "step 3/200" in progress.updates[-1][1]
    assert "λ +0.2500" in progress.updates[-1][1] and follower.last_step == 3


def test_run_logged_tees_and_reports_failures(tmp_path):
    script = "import sys\nfor i in range(30): print(f'step:{i} - critic/score/mean:{i / 10}', flush=True)\n" \
             "print('Traceback: boom', file=sys.stderr)\nsys.exit(3)\n"
    lines = []
    with pytest.raises(RunError) as info:
        run_logged([sys.executable, "-c", script], tmp_path / "cwd", tmp_path / "verl.log", lines.append)
    message = info.value.message
    assert "veRL exited with code 3" in message and str(tmp_path / "verl.log") in message
    assert message.splitlines()[-1] == "Traceback: boom" and "step:11 " in message and "step:10 " not in message
    assert len(lines) == 31 and (tmp_path / "verl.log").read_text().count("\n") == 31

    ok = "print('step:1 - critic/score/mean:0.5')"
    run_logged([sys.executable, "-c", ok], tmp_path / "cwd", tmp_path / "ok.log", lines.append)
    assert lines[-1].startswith("step:1 ")


def test_train_follows_a_fake_verl_and_collects_the_checkpoint(tmp_path, results_dir, monkeypatch):
    """train() end to end with a stand-in for `python -m verl.trainer.main_ppo` (a script that prints veRL's step
    lines and writes veRL's checkpoint layout): metrics reach the sink, the HF dir lands in checkpoints/final."""
    from occctl.backend import Plan
    from occctl.rundir import RunDir
    from occctl.spec import load_spec

    from backends.verl_backend import adapter

    data = tmp_path / "data" / "math6"
    (data / "train").mkdir(parents=True)
    for name in ("train/dapo_math_17k.jsonl", "aime24.jsonl"):
        (data / name).write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    monkeypatch.setenv("OCCCTL_DATA_DIR", str(tmp_path / "data"))
    spec = load_spec(Path(__file__).resolve().parents[3] / "specs" / "mimo7b_dapo_occ.yaml",
                     ["train.steps=8", "name=fake"])
    run_dir = results_dir / "runs" / "fake"
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({"model.norm.weight": torch.ones(2)}, str(weights))
    root = run_dir / "verl" / "checkpoints" / "global_step_2"
    fake = (f"import os, pathlib\nfor s in (1, 2): print(f'step:{{s}} - critic/score/mean:0.{{s}} - "
            f"actor/occ/lambda:0.0{{s}}', flush=True)\n"
            f"hf = pathlib.Path({str(root)!r}) / 'actor' / 'model' / 'huggingface'\nhf.mkdir(parents=True)\n"
            f"(hf / 'config.json').write_text('{{}}')\nimport shutil; shutil.copy({str(weights)!r}, hf)\n"
            f"(hf.parent.parent / 'ckpt_contents.json').write_text('{{}}')\n"
            f"assert os.environ['VERL_USE_EXTERNAL_MODULES'] == 'backends.verl_backend.plugin'\n"
            f"assert os.environ['MLFLOW_RUN_ID'] == 'run-123'\n")
    plan = Plan(spec=spec, run_dir=RunDir(run_dir), native_config={"verl_version": "0.9.1"},
                command=("env", "VERL_USE_EXTERNAL_MODULES=backends.verl_backend.plugin", sys.executable, "-c", fake),
                mlflow_run_id="run-123")
    sunk = []
    result = adapter.VerlBackend().train(plan, lambda s, m: sunk.append((s, m)))
    assert sunk == [(4, {"reward": 0.1, "occ/lambda": 0.01}), (8, {"reward": 0.2, "occ/lambda": 0.02})]
    assert result.checkpoint == run_dir / "checkpoints" / "final"
    assert (result.checkpoint / "model.safetensors").is_file() and (result.checkpoint / "config.json").is_file()
    assert "no MTP layer" in (result.checkpoint / "MTP_HEAD_NOT_EXTRACTED.txt").read_text()
    assert (run_dir / "data" / "train.parquet").is_file() and (run_dir / "verl_metrics.jsonl").is_file()
    command = json.loads((run_dir / "verl_command.json").read_text())
    assert command[1] == "MLFLOW_RUN_ID=run-123"
