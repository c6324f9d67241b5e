"""veRL's console log -> per-step metrics, occctl's metric names, and a progress view.

veRL's console logger prints one line per step, ``step:N - key:value - key:value ...`` (values through
``pprint.pformat``, so numpy scalars read ``np.float64(0.5)``); under Ray the line carries a prefix such as
``(TaskRunnerV1 pid=123)``.
"""

from __future__ import annotations

import math
import re
from typing import Any

STEP_LINE = re.compile(r"(?:^|[\s)])step:(\d+) - (.+)$")
NUMPY_SCALAR = re.compile(r"^np\.\w+\((.*)\)$")

# veRL's key -> occctl's (README's metric table); the actor's loss metrics arrive as actor/<key>
RENAMES = {"critic/score/mean": "reward", "actor/mtp_losses/mtp_1_loss": "mtp/nll"}
PASSTHROUGH_PREFIXES = ("actor/occ/", "actor/mtp/")


def parse_step_line(line: str) -> tuple[int, dict[str, float]] | None:
    """(step, metrics) from one console line, or None when the line is not a step record."""
    match = STEP_LINE.search(line.rstrip("\r\n"))
    if match is None:
        return None
    metrics: dict[str, float] = {}
    for item in match.group(2).split(" - "):
        key, sep, raw = item.rpartition(":")
        if not sep or not key:
            continue
        value = parse_number(raw)
        if value is not None:
            metrics[key.strip()] = value
    return int(match.group(1)), metrics


def parse_number(raw: str) -> float | None:
    text = raw.strip()
    wrapped = NUMPY_SCALAR.match(text)
    if wrapped:
        text = wrapped.group(1)
    if text in ("True", "False"):
        return float(text == "True")
    try:
        return float(text)
    except ValueError:
        return None


def occctl_metrics(verl_metrics: dict[str, float]) -> dict[str, float]:
    """The metrics occctl names (same keys as the TRL backend): reward, mtp/*, occ/*."""
    out: dict[str, float] = {}
    for key, value in verl_metrics.items():
        if key in RENAMES:
            out[RENAMES[key]] = value
        elif key.startswith(PASSTHROUGH_PREFIXES):
            out[key.removeprefix("actor/")] = value
    return out


class StepFollower:
    """Feeds veRL's log lines to the run: occctl-named metrics to ``sink`` (at occctl's optimizer-step count),
    every parsed veRL metric to ``record``, and a progress bar."""

    def __init__(self, sink, record, optimizer_steps_per_generation: int, total_verl_steps: int, label: str,
                 progress: Any = None) -> None:
        self.sink, self.record = sink, record
        self.factor = optimizer_steps_per_generation
        self.total = total_verl_steps
        self.label = label
        self.progress = progress
        self.task = progress.add_task(f"veRL {label}", total=total_verl_steps * self.factor) if progress else None
        self.last_step = 0
        self.state = {"reward": math.nan, "lambda": math.nan}

    def feed(self, line: str) -> int | None:
        parsed = parse_step_line(line)
        if parsed is None:
            return None
        step, metrics = parsed
        self.record(step, metrics)
        named = occctl_metrics(metrics)
        occctl_step = step * self.factor
        if named:
            self.sink(occctl_step, named)
        self.last_step = max(self.last_step, step)
        self.state["reward"] = named.get("reward", self.state["reward"])
        self.state["lambda"] = named.get("occ/lambda", self.state["lambda"])
        if self.progress is not None:
            self.progress.update(self.task, completed=occctl_step,
                                 description=f"veRL {self.label}  step {step}/{self.total}  "
                                             f"reward {self.state['reward']:.3f}  λ {self.state['lambda']:+.4f}")
        return step
