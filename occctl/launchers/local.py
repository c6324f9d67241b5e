"""The local launcher: each cell its own process (``python -m occctl.launchers.cell``), at most ``jobs`` at once,
each with ``cpus_per_cell`` torch threads (default: the cores this process may use // jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from occctl.errors import RunError, SpecError
from occctl.processes import stop_group
from occctl.rundir import results_root
from occctl.spec import LauncherSpec


def default_threads(jobs: int) -> int:
    """The cores this process may use, split between ``jobs`` cells (at least one each)."""
    return max(1, len(os.sched_getaffinity(0)) // jobs)


class LocalProcesses:
    def __init__(self, launcher: LauncherSpec, directory: Path) -> None:
        if launcher.gpus_per_cell:
            raise SpecError("launcher.gpus_per_cell: the local launcher does not place GPUs",
                            hint="use --launcher ray, which gives each cell its GPUs")
        self.directory = directory
        self.threads = launcher.cpus_per_cell or default_threads(launcher.jobs)
        self._executor = ThreadPoolExecutor(max_workers=launcher.jobs)  # a thread waits on each cell's process
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._closing = False

    def submit(self, name: str) -> Future:
        return self._executor.submit(self._run, name)

    def _run(self, name: str) -> int:
        log = self.directory / f"{name}.log"
        env = {**os.environ, "OCCCTL_RESULTS_DIR": str(results_root()), "OMP_NUM_THREADS": str(self.threads)}
        with log.open("a", encoding="utf-8") as stream, self._lock:
            if self._closing:
                raise RunError("not started: the study was stopped")
            proc = subprocess.Popen([sys.executable, "-m", "occctl.launchers.cell", name, str(log)], env=env,
                                    stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
            self._procs[name] = proc
        code = proc.wait()
        if code:
            raise RunError(f"exit code {code}: {last_line(log)} (log: {log})")
        return code

    def close(self) -> None:
        """Stop every cell still running (its whole process group), then the threads waiting on them."""
        with self._lock:
            self._closing = True
        for proc in self._procs.values():
            if proc.poll() is None:
                stop_group(proc, grace_s=5.0)
        self._executor.shutdown(wait=True, cancel_futures=True)


def last_line(log: Path) -> str:
    """The last non-empty line of a log (what a failed cell said last)."""
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"
