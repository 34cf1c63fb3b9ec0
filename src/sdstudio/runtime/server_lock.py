"""Which server may recover the queue on disk: a POSIX record lock beside the history database.

A server holds a shared lock on ``<history database>.lock`` while it runs; the kernel drops it
when the process ends, however it ends (``kill -9`` included). A starting server first asks for
the lock exclusively: it gets it only when no other server on the same outputs folder is alive,
and only then does it fail the job left running, re-queue the jobs left queued and reconcile the
history with the files (:class:`~sdstudio.api.service.StudioService`). A server started beside a
live one leaves that one's jobs alone; before, it failed the running job and ran every queued
job a second time.

POSIX locks (``fcntl.lockf``) belong to a process, so servers inside one process (tests) never
exclude each other; where ``fcntl`` is missing (Windows) every server counts as the only one.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from sdstudio.errors import SDStudioError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

_BUSY = (errno.EACCES, errno.EAGAIN)


class ServerLock:
    """The lock file of one history database, held by one server from start to stop."""

    def __init__(self, db_path: str | os.PathLike, *, wait_seconds: float = 60.0) -> None:
        self.path = Path(f"{db_path}.lock")
        self.wait_seconds = wait_seconds
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Hold the lock; True when no other live server holds it (this one may recover jobs).

        Held exclusively when True, until :meth:`share`; shared otherwise. Another server's
        start-up holds it exclusively for a moment: this waits up to ``wait_seconds`` for that.
        """
        if fcntl is None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only outputs folder: saving says so, job by job
            log.warning("cannot create %s (%s); assuming no other server uses this folder", self.path, exc)
            return True
        deadline = time.monotonic() + self.wait_seconds
        try:
            while True:
                if _try_lock(fd, fcntl.LOCK_EX):  # again each round: the other may have just stopped
                    sole = True
                    break
                if _try_lock(fd, fcntl.LOCK_SH):
                    sole = False
                    break
                if time.monotonic() > deadline:
                    raise SDStudioError(
                        f"another sdstudio server holds {self.path} and did not finish starting in "
                        f"{self.wait_seconds:.0f} s; stop it or use another --outdir"
                    )
                time.sleep(0.1)
        except OSError as exc:  # no locks on this filesystem (NFS without lockd, some FUSE mounts)
            os.close(fd)
            log.warning("cannot lock %s (%s); assuming no other server uses this folder", self.path, exc)
            return True
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return sole

    def share(self) -> None:
        """Turn an exclusive hold into a shared one (start-up recovery is done)."""
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_SH)

    def release(self) -> None:
        """Let the lock go (the server stopped)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
