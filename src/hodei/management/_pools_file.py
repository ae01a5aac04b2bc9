"""The pools file the control plane was given (``--pools``), applied to the scheduler whenever it changes."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from hodei._quoting import clip
from hodei.errors import SchedulerError
from hodei.pools import PoolFileError, PoolStatus, parse_pools
from hodei.pools._file import read_pool_file
from hodei.ports import PoolPort

__all__ = ["PoolsFile"]

log = logging.getLogger(__name__)

_SETTLED_NS = 2_000_000_000  # a file's modification time this far in the past cannot be that of a new write


class PoolsFile:
    """The pools file the control plane was given (``--pools``): applied to the scheduler at start and again
    whenever its content changes (polled: its modification time, size and inode, then a hash of the content).

    A file that is invalid — checked here with :func:`~hodei.pools.parse_pools` first, then by the scheduler —
    is refused (``pools.file_refused`` with the file, line and field) and the running pools keep their
    definitions; it is not tried again until it changes. A scheduler that cannot be reached is tried again at
    the next :meth:`sync`.
    """

    def __init__(self, path: str | Path, pools: PoolPort, *, call_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.pools = pools
        self.call_timeout = call_timeout
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) last read
        self._handled: str | None = None  # the hash of the content last applied or refused
        self._refusal: str | None = None  # the last refusal logged: a file that stays unreadable is said once

    async def sync(self) -> list[PoolStatus] | None:
        """Apply the file if its content changed since it was last applied or refused; the pools applied,
        or None when nothing was applied."""
        try:
            stat = self.path.stat()
        except OSError as error:
            self._refuse(PoolFileError(str(self.path), 0, [(0, "file", f"cannot be read: {error}")]))
            return None
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen:
            return None
        try:
            text = read_pool_file(self.path)
        except PoolFileError as error:
            self._refuse(error)
            return None
        # A file written again within the clock's granularity keeps its modification time: until that time is
        # safely past, it is read (and its hash compared) at every sync.
        self._seen = seen if time.time_ns() - stat.st_mtime_ns > _SETTLED_NS else None
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._handled:
            return None
        try:
            parse_pools(text, source=str(self.path))
        except PoolFileError as error:
            self._handled = digest
            self._refuse(error)
            return None
        try:
            applied = await self.pools.apply_pools(str(self.path), text, timeout=self.call_timeout)
        except SchedulerError as error:
            if error.retryable:
                self._seen = None  # read it again next time
                log.warning("pools.apply_failed", extra={"file": str(self.path), "error": clip(str(error))})
                return None
            self._handled = digest
            log.error("pools.file_refused", extra={"file": str(self.path), "error": clip(str(error), 400)})
            return None
        self._handled, self._refusal = digest, None
        log.info(
            "pools.applied",
            extra={"file": str(self.path), "pools": ",".join(p.spec.name for p in applied)},
        )
        return applied

    def _refuse(self, error: PoolFileError) -> None:
        if str(error) == self._refusal:
            return
        self._refusal = str(error)
        log.error(
            "pools.file_refused",
            extra={
                "file": error.path,
                "line": error.line,
                "field": error.field,
                "error": clip(str(error), 400),
            },
        )
