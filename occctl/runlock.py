"""One writer per run folder: ``<run>/run.lock``, held (``flock``) by the process that trains the run.

A second ``occctl run`` of the same run, a study cell dispatched while another process writes it, or ``--fresh``
on a run being written is refused (exit 2) naming the holder's pid, host and start time, which the holder writes
into the lock file. The kernel (or the NFS server) drops the lock when its holder dies however it dies (SIGKILL,
a lost node), so a stale lock is taken over by the next run with no clean-up and no guessing from pids.

Where the lock holds: local filesystems (ext4, xfs, btrfs, tmpfs, ZFS); NFSv4, and NFSv3 with lockd, where
Linux turns ``flock`` into a whole-file POSIX lock that the server arbitrates between hosts (a dead client's lock
is released when its lease expires, ≈ 90 s); GPFS/Spectrum Scale; Lustre mounted with ``-o flock``. It does not
hold across hosts on Lustre with ``localflock`` (one host only) nor on filesystems without locks (SMB without
``nobrl`` handles, some FUSE mounts): a filesystem that refuses ``flock`` is reported (exit 3) rather than
trusted.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from occctl.errors import EnvError, OccError, SpecError
from occctl.rundir import RunDir, RunFileError, move_aside

LOCK_NAME = "run.lock"
LOCK_MODE = 0o664


class RunLockedError(OccError):
    """Another live process writes this run folder."""

    exit_code = 2


def lock_path(run: RunDir) -> Path:
    return run.path / LOCK_NAME


@contextmanager
def hold_run(run: RunDir, fresh: bool = False, console=None) -> Iterator[None]:
    """Hold the run folder's lock while the body writes it (the folder is created). ``fresh``: an existing folder
    is moved aside under its lock first, and the new folder is locked before anything is written to it."""
    fd = _acquire(run)
    try:
        if fresh and any(p.name != LOCK_NAME for p in run.path.iterdir()):
            moved = move_aside(run.path)  # our lock moves with it: nobody writes the old folder meanwhile
            if console is not None:
                console.print(f"moved the old run aside: {moved}", markup=False, highlight=False)
            new_fd = _acquire(run)
            os.close(fd)
            fd = new_fd
        yield
    except RunFileError as e:  # name the run: "spec.yaml: unreadable" alone does not say where
        raise RunFileError(f"run {run.name!r} ({run.path}): {e.message}", hint=e.hint) from None
    finally:
        os.close(fd)  # releases the lock; the file stays, naming the last holder


def holder(run: RunDir) -> str | None:
    """Who holds the run folder's lock (``pid 123 on host h since …``), or None when nobody does (no folder,
    no lock file, or its holder died)."""
    path = lock_path(run)
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(path)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_held(run: RunDir, what: str) -> None:
    """RunLockedError when a live process holds the run folder (``what``: the action refused)."""
    who = holder(run)
    if who:
        raise _locked(run, who, what)


def _acquire(run: RunDir) -> int:
    if run.path.exists() and not run.path.is_dir():
        raise SpecError(f"run {run.name!r}: {run.path} is a file, not a run folder",
                        hint="move that file away, or choose another name with --set name=<new name>")
    run.path.mkdir(parents=True, exist_ok=True)
    path = lock_path(run)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _locked(run, _describe(path), "not started") from None
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise EnvError(f"{path}: the filesystem does not support file locks ({errno.errorcode[e.errno]}), so "
                           "occctl cannot keep two processes from writing one run",
                           hint="put results/ on a local disk, NFS or Lustre mounted with -o flock "
                                "(OCCCTL_RESULTS_DIR)") from None
        raise
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return fd


HOLDER_WRITE_WAIT_S = 1.0  # the holder writes its record right after taking the lock: a loser may read it empty


def _describe(path: Path) -> str:
    deadline = time.monotonic() + HOLDER_WRITE_WAIT_S
    while True:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on host {info['host']} since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "a process that has not yet written its pid"
            time.sleep(0.02)


def _locked(run: RunDir, who: str, what: str) -> RunLockedError:
    return RunLockedError(f"run {run.name!r}: {what}: {who} is writing it ({lock_path(run)})",
                          hint="wait for it to end or stop that process; a lock of a process that died is taken "
                               "over by the next run by itself")
