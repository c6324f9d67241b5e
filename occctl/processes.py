"""Child processes that start their own children (an MLflow server, a veRL launch with Ray): stopping the
whole process group, so nothing is left behind."""

from __future__ import annotations

import os
import signal
import time
from typing import Protocol


class Child(Protocol):
    """A child process that leads its own process group: a ``subprocess.Popen`` started with
    ``start_new_session=True`` (whose ``poll()`` reaps it), or anything with its ``pid`` and a ``poll()``."""

    pid: int

    def poll(self) -> int | None: ...


def stop_group(proc: Child, grace_s: float = 10.0) -> None:
    """SIGINT to the process group of ``proc`` (its leader), then SIGTERM, then SIGKILL, each with ``grace_s`` to
    take effect, until no member of the group is left."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if _group_gone(proc, grace_s):
            return


def _group_gone(proc: Child, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
