"""The local launcher: each cell its own process, at most ``jobs`` at once, each with ``cpus_per_cell`` torch
threads (default: the cores this process may use // jobs).

Cells are forked from a ``multiprocessing`` forkserver that imported torch, transformers, TRL and occctl once
(``PRELOAD``), so a cell does not pay the ≈ 5 s of imports a fresh interpreter would: on a 20-cell study of
25-second cells that start-up was a quarter of the parallel wall time. Each cell leads its own process group
(stopped whole on Ctrl-C) and appends its output to its log, whose first line names its pid.

A cell also dies with its study however the study dies: it asks the kernel for SIGKILL when its parent (the
forkserver, which exits with the study, or dies with it when the study's process group is killed) goes
(``PR_SET_PDEATHSIG``, Linux). Without that, a SIGKILLed study left its cells training as orphans that nobody
published. What such a cell had not checkpointed is redone by the rerun, which resumes it.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from occctl.errors import RunError, SpecError
from occctl.processes import stop_group
from occctl.rundir import results_root
from occctl.spec import LauncherSpec

# What the forkserver imports once for every cell (a module that fails to import is imported by the cell instead).
PRELOAD = ["torch", "transformers", "trl", "occctl.runner", "backends.trl_backend.adapter"]


def default_threads(jobs: int) -> int:
    """The cores this process may use, split between ``jobs`` cells (at least one each)."""
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def cell_process(name: str, log: str, results: str, threads: int) -> None:
    """The body of a cell's process: its own session, stdout and stderr appended to ``log``, then the cell."""
    os.setsid()
    die_with_parent()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"cell {name}: pid {os.getpid()}", flush=True)
    code = 1
    try:
        from occctl.launchers.cell import run_reporting

        code = run_reporting(name, log=log, results=results, threads=threads)
    except BaseException:  # noqa: BLE001 - what a fresh interpreter would print before exiting with 1
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not the forkserver's atexit handlers: they belong to the server


def die_with_parent() -> None:
    """SIGKILL this process when its parent ends (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing). A parent
    that is already gone (the process was re-parented) ends this process at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent or parent == 1:
        os._exit(1)


PR_SET_PDEATHSIG = 1


class CellProcess:
    """A running cell's ``multiprocessing.Process``, with the ``pid`` and ``poll()`` that ``stop_group`` needs.
    Only ``wait`` reads the process's exit (one reader of its sentinel); ``poll`` reports what ``wait`` saw."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self.pid = process.pid
        self._code: int | None = None

    def poll(self) -> int | None:
        return self._code

    def wait(self) -> int:
        self.process.join()
        self._code = self.process.exitcode
        return self._code


def forkserver() -> multiprocessing.context.BaseContext:
    """The forkserver context with ``PRELOAD`` (the server starts with the first cell)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


class LocalProcesses:
    def __init__(self, launcher: LauncherSpec, directory: Path) -> None:
        if launcher.gpus_per_cell:
            raise SpecError("launcher.gpus_per_cell: the local launcher does not place GPUs",
                            hint="use --launcher ray, which gives each cell its GPUs")
        self.directory = directory
        self.threads = launcher.cpus_per_cell or default_threads(launcher.jobs)
        self._context = forkserver()
        self._executor = ThreadPoolExecutor(max_workers=launcher.jobs)  # a thread waits on each cell's process
        self._procs: dict[str, CellProcess] = {}
        self._lock = threading.Lock()
        self._closing = False

    def submit(self, name: str) -> Future:
        return self._executor.submit(self._run, name)

    def _run(self, name: str) -> int:
        log = self.directory / f"{name}.log"
        with self._lock:
            if self._closing:
                raise RunError("not started: the study was stopped")
            process = self._context.Process(target=cell_process, name=f"occctl-cell-{name}", daemon=False,
                                            args=(name, str(log), str(results_root()), self.threads))
            process.start()
            self._procs[name] = proc = CellProcess(process)
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
