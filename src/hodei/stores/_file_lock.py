"""One registry file, one scheduler: an exclusive lock on ``<file>.lock`` beside it, held while a store has the
file open, with the holder's PID written in it so that a second opener can say who holds it.

``flock`` locks belong to the open file, so the kernel drops the lock when its holder exits however it exits
(SIGKILL included): a stale lock file never blocks a restart. The file itself stays (removing it would let a
third opener lock a new file while the second still holds the old one).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from hodei.errors import StoreError

__all__ = ["RegistryFileLock"]


class RegistryFileLock:
    """``RegistryFileLock(path).acquire()`` locks ``path``'s lock file or raises :class:`StoreError` naming the
    file and the PID that holds it; :meth:`release` (idempotent) unlocks it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise StoreError(f"cannot open {self.path}: cannot make its lock file: {error}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreError(
                f"{self.path} is in use by another scheduler (PID {holder or 'unknown'}, holding "
                f"{self.lock_path}): a SQLite registry serves one scheduler; stop that one, or give this one "
                "another --store (several replicas share a PostgreSQL store)"
            ) from None
        except OSError as error:
            os.close(fd)
            raise StoreError(f"cannot lock {self.lock_path}: {error}") from error
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the open file drops the lock
