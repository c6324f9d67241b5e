"""Failures of the machine rather than of occctl: a full disk, a read-only or unwritable results directory.

``environment_error`` turns one (an ``OSError`` anywhere in the exception's chain, or the text torch, safetensors
and sqlite put in their own exception types) into one ``EnvError`` line naming the file, exit 3. The CLI asks it
about any exception a command raises; what it does not recognise stays a bug with its traceback.
"""

from __future__ import annotations

import errno

from occctl.errors import EnvError

REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}
HINTS = {errno.ENOSPC: "free space (or point OCCCTL_RESULTS_DIR / OCCCTL_CACHE_DIR elsewhere) and rerun: a run "
                       "resumes from its last checkpoint, an eval from its cached generations",
         errno.EROFS: "point OCCCTL_RESULTS_DIR at a writable directory",
         errno.EACCES: "point OCCCTL_RESULTS_DIR at a directory you may write, or fix its permissions"}
HINTS[errno.EDQUOT] = HINTS[errno.ENOSPC]
# How libraries that do not raise OSError report the same failures.
TEXTS = (("no space left on device", errno.ENOSPC), ("storagefull", errno.ENOSPC), ("os error 28", errno.ENOSPC),
         ("database or disk is full", errno.ENOSPC), ("file write failed", errno.ENOSPC),  # torch.save's ("disk quota exceeded", errno.EDQUOT),
         ("read-only file system", errno.EROFS), ("os error 30", errno.EROFS),
         ("attempt to write a readonly database", errno.EROFS))


def environment_error(e: BaseException) -> EnvError | None:
    """The EnvError for a full disk, a read-only file system or a denied write in ``e`` or its causes, else None."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in REASONS:
            where = current.filename or ""
            return EnvError(f"{REASONS[current.errno]}{f': {where}' if where else ''} "
                            f"({errno.errorcode[current.errno]})", hint=HINTS[current.errno])
        text = str(current).lower()
        for needle, code in TEXTS:
            if needle in text:
                return EnvError(f"{REASONS[code]} ({type(current).__name__}: {str(current).splitlines()[0][:200]})",
                                hint=HINTS[code])
        current = current.__cause__ or current.__context__
    return None
