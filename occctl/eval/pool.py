"""A grading pool: worker processes with a hard per-answer timeout; a worker that overruns is killed and replaced.

math-verify's own timeouts use ``signal.alarm`` (main thread only, and they cannot interrupt sympy's C-level
big-number arithmetic), and DeepScaleR's sympy check has none. So every answer is graded in a worker process;
the parent waits on the worker's pipe with a deadline, and on expiry kills the worker (SIGKILL), reaps it and
starts a fresh one. Workers ignore SIGINT (the parent cleans up on Ctrl-C), cap their address space, and are
forked from a forkserver that has the graders preloaded, so a replacement starts in milliseconds.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable, Iterable, Sequence

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 4096
STARTUP_TIMEOUT_S = 120.0  # a worker's imports (sympy, math-verify), before it takes answers
READY = "ready"
_PRELOAD = ["__main__", "occctl.eval.graders", "occctl.eval.pool", "math_verify", "sympy"]  # imported once


@dataclass(frozen=True)
class Job:
    grader: str
    response: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    correct: bool
    pred: str | None
    status: str  # "ok", "timeout", "error: <type>", "crash"
    seconds: float
    replaced: int = 0  # worker processes replaced while grading this answer (killed at the deadline, or dead)


def _worker_main(conn: Connection, memory_mb: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from occctl.eval.graders import grade_answer

    try:
        conn.send(READY)  # the imports are done: the parent's per-answer deadline starts only now
    except (OSError, ValueError):
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        job_id, grader, response, answers = msg
        try:
            grade = grade_answer(grader, response, answers)
            reply = (job_id, grade.correct, grade.pred, "ok")
        except (Exception, RecursionError, MemoryError) as e:  # noqa: BLE001 - any failure is "incorrect"
            reply = (job_id, False, None, f"error: {type(e).__name__}")
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


class _Worker:
    def __init__(self, ctx, memory_mb: int | None) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, memory_mb), daemon=True,
                                   name="occctl-grader")
        self.process.start()
        child.close()  # the parent keeps only its end, so a dead worker reads as EOF
        self.conn = parent
        # a cold forkserver imports the graders first (seconds on a busy machine): not part of any deadline
        try:
            ready = parent.recv() if parent.poll(STARTUP_TIMEOUT_S) else None
        except (EOFError, OSError):
            ready = None
        if ready != READY:
            self.kill()
            raise RuntimeError(f"a grading worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
        self.job: int | None = None
        self.deadline = 0.0
        self.started = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class GradingPool:
    """``with GradingPool(timeout_s=5) as pool: outcomes = pool.grade(jobs)``."""

    def __init__(self, processes: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int | None = DEFAULT_MEMORY_MB, preload_main: bool = True) -> None:
        """``preload_main=False``: the forkserver does not import ``__main__`` (a process whose main is not an
        importable file, e.g. a Ray worker grading veRL's rewards)."""
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.processes = processes or max(1, min(len(os.sched_getaffinity(0)), 8))
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(method)
        if method == "forkserver":
            self._ctx.set_forkserver_preload(_PRELOAD if preload_main else [m for m in _PRELOAD if m != "__main__"])
        self.spawned_pids: list[int] = []
        self.replaced = 0
        self._workers: list[_Worker] = []
        for _ in range(self.processes):
            self._start()

    def _start(self) -> _Worker:
        worker = _Worker(self._ctx, self.memory_mb)
        self.spawned_pids.append(worker.process.pid)
        self._workers.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.remove(worker)
        self.replaced += 1
        self._start()

    def live_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.is_alive()]

    def grade(self, jobs: Sequence[Job] | Iterable[Job],
              on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Grade every job; each takes at most ``timeout_s`` (then it is "timeout", i.e. incorrect)."""
        jobs = list(jobs)
        results: list[Outcome | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        replaced = [0] * len(jobs)  # workers found dead while this job was being handed over

        def finish(worker: _Worker, correct: bool, pred: str | None, status: str, now: float) -> None:
            idx = worker.job
            worker.job = None
            results[idx] = outcome = Outcome(correct, pred, status, now - worker.started,
                                             replaced[idx] + (status in ("timeout", "crash")))
            if on_done:
                on_done(idx, outcome)

        while pending or any(w.job is not None for w in self._workers):
            for worker in list(self._workers):
                if worker.job is None and pending:
                    idx = pending.popleft()
                    job = jobs[idx]
                    try:
                        worker.conn.send((idx, job.grader, job.response, job.answers))
                    except (OSError, ValueError):  # died while idle: replace it and retry the job
                        pending.appendleft(idx)
                        replaced[idx] += 1
                        self._replace(worker)
                        continue
                    worker.job, worker.started = idx, time.monotonic()
                    worker.deadline = worker.started + self.timeout_s
            busy = [w for w in self._workers if w.job is not None]
            if not busy:
                continue
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = set(wait([w.conn for w in busy], timeout=wait_s))
            now = time.monotonic()
            for worker in busy:
                if worker.conn in ready:
                    try:
                        job_id, correct, pred, status = worker.conn.recv()
                    except (EOFError, OSError):  # the worker died (e.g. a segfault in a C extension)
                        finish(worker, False, None, "crash", now)
                        self._replace(worker)
                        continue
                    if job_id != worker.job:
                        raise RuntimeError(f"grading worker answered job {job_id}, expected {worker.job}")
                    finish(worker, bool(correct), pred, status, now)
                elif now >= worker.deadline:
                    finish(worker, False, None, "timeout", now)
                    self._replace(worker)
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Idle workers are asked to exit; busy ones (an interrupted grade()) are killed at once."""
        for worker in self._workers:
            if worker.job is not None:
                worker.kill()
                continue
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(2)
            worker.kill()
        self._workers = []

    def __enter__(self) -> "GradingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
