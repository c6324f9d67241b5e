"""A TRL checkpoint is complete only once occctl's marker is written, after the trainer's files and the OCC
calibrator's state: a SIGKILL between the trainer's ``trainer_state.json`` and the calibrator's state must not leave a
checkpoint that resume takes (it once resumed with a fresh calibrator and diverged by 1e-4)."""

from types import SimpleNamespace

import torch

from backends.trl_backend.adapter import last_checkpoint
from backends.trl_backend.callbacks import CALIBRATOR_STATE, CHECKPOINT_DONE, CheckpointSaved
from occctl.occ.calibration import Calibrator


def _checkpoint(run, step, *files):
    folder = run / "trl" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}")
    return folder


def test_a_checkpoint_without_the_marker_is_not_resumed_from(tmp_path):
    done = _checkpoint(tmp_path, 4, "trainer_state.json", CALIBRATOR_STATE, CHECKPOINT_DONE)
    _checkpoint(tmp_path, 8, "trainer_state.json")  # killed before the calibrator's state and the marker
    _checkpoint(tmp_path, 12)  # killed while the trainer wrote it
    assert last_checkpoint(tmp_path) == done
    assert last_checkpoint(tmp_path / "elsewhere") is None


def test_on_save_writes_the_calibrator_then_the_marker_then_commits(tmp_path):
    folder = tmp_path / "checkpoint-8"
    folder.mkdir()
    seen = []

    def commit(step):
        seen.append((step, (folder / CALIBRATOR_STATE).is_file(), (folder / CHECKPOINT_DONE).is_file()))

    calibrator = Calibrator()
    CheckpointSaved(commit, calibrator).on_save(SimpleNamespace(output_dir=str(tmp_path)),
                                                SimpleNamespace(global_step=8), None)
    assert seen == [(8, True, True)]
    assert torch.load(folder / CALIBRATOR_STATE).keys() == calibrator.state_dict().keys()
