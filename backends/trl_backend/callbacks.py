"""The TRL backend's TrainerCallbacks: metrics to the runner's sink, checkpoints completed (the OCC calibrator's
state, then the completion marker) and periodic held-out evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

from occctl.occ.calibration import Calibrator
from occctl.rundir import write_json_atomic


class MetricsCallback(TrainerCallback):
    """Hands every numeric log entry (per optimizer step) to ``sink(step, metrics)``."""

    def __init__(self, sink: Callable[[int, dict[str, float]], None]) -> None:
        self.sink = sink

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {k: float(v) for k, v in (logs or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self.sink(state.global_step, numeric)


CALIBRATOR_STATE = "occ_calibrator.pt"
CHECKPOINT_DONE = "occctl_checkpoint.json"  # written last: a TRL checkpoint without it is incomplete


class CheckpointSaved(TrainerCallback):
    """Completes each TRL checkpoint once the trainer has written it: the OCC calibrator's state beside it (when
    there is one), then the ``CHECKPOINT_DONE`` marker, then ``commit(step)`` (the runner publishes metrics up to
    it). A kill at any moment before the marker leaves a checkpoint that resume skips (``last_checkpoint``): the
    trainer's own last file (``trainer_state.json``) is written before the calibrator's state, so it cannot be the
    mark. Must be the last callback with an ``on_save``."""

    def __init__(self, commit: Callable[[int], None], calibrator: Calibrator | None = None) -> None:
        self.commit, self.calibrator = commit, calibrator

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.calibrator is not None:
            torch.save(self.calibrator.state_dict(), folder / CALIBRATOR_STATE)
        write_json_atomic(folder / CHECKPOINT_DONE, {"step": state.global_step})
        self.commit(state.global_step)


class PeriodicEval(TrainerCallback):
    """Calls ``evaluate(step)`` every ``every`` optimizer steps before the last (the last is evaluated anyway)."""

    def __init__(self, every: int, last_step: int, evaluate: Callable[[int], None]) -> None:
        self.every, self.last_step, self.evaluate = every, last_step, evaluate

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 and state.global_step < self.last_step:
            self.evaluate(state.global_step)
