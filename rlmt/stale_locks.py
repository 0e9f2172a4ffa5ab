"""Snakemake's working-directory locks, freed when the Snakemake that held them is gone.

Snakemake locks its working directory with files in ``.snakemake/locks/`` and removes them when
it exits normally. Killed outright (``kill -9``, the OOM killer, a lost node) it leaves them
behind, and the same command run again stops with a ``LockException`` until someone runs
``snakemake --unlock``. The lock files do not say who wrote them, so Snakemake cannot tell a
stale lock from a live one.

Every main Snakemake process of this workflow therefore holds a shared ``flock`` on
``.snakemake/rlmt-alive.lock`` for its whole life; the kernel drops it when the process dies,
however it dies. A starting Snakemake that can take that lock exclusively knows that no other
Snakemake of this workflow is alive here, so any lock files left are stale: it removes them
(what ``--unlock`` does) and then holds the shared lock like the others. With another Snakemake
alive, nothing is touched and Snakemake's own lock check decides as usual.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

ALIVE_FILE = "rlmt-alive.lock"
_held: list[int] = []  # the open lock, kept for the life of the process


def release_stale_locks(workdir: str | Path = ".") -> list[Path]:
    """Remove ``.snakemake/locks/*`` of Snakemakes that are gone; return what was removed."""
    meta = Path(workdir) / ".snakemake"
    meta.mkdir(exist_ok=True)
    if _held:
        return []
    fd = os.open(meta / ALIVE_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    removed: list[Path] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # another Snakemake of this workflow is alive: its locks are real
    else:
        locks = meta / "locks"
        if locks.is_dir():
            for lock in sorted(locks.glob("*.lock")):
                lock.unlink(missing_ok=True)
                removed.append(lock)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held.append(fd)
    return removed
