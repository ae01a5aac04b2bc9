"""Leadership among the scheduler replicas of one PostgreSQL database: a session advisory lock, on a
connection of its own."""

from __future__ import annotations

import contextlib
import logging

import asyncpg

from hodei.stores._postgres_errors import TROUBLE

__all__ = ["LEADER_LOCK", "PostgresLeadership"]

log = logging.getLogger(__name__)

LEADER_LOCK = 0x686F6465_69000002  # "hodei" + 2: held by the replica that runs lease expiry


class PostgresLeadership:
    """Leadership among the replicas of one database: whoever holds a session advisory lock leads.

    The lock lives on a connection of its own. When the leader dies its connection closes and PostgreSQL
    releases the lock; the next replica to ask takes it. A leader that loses its connection stops leading at
    once (the database has released the lock too). A leader that stops (:meth:`release`) lets go of the lock
    before it ends its session, so that the next replica to ask leads at once, not once the database has seen
    the session end.
    """

    def __init__(self, dsn: str, *, key: int = LEADER_LOCK, connect_timeout: float = 2.0) -> None:
        self._dsn = dsn
        self._key = key
        self._connect_timeout = connect_timeout
        self._db: asyncpg.Connection | None = None
        self.leading = False

    async def acquire(self) -> bool:
        try:
            if self._db is None or self._db.is_closed():
                self.leading = False
                self._db = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
            if self.leading:
                await self._db.fetchval("SELECT 1", timeout=self._connect_timeout)
            else:
                self.leading = bool(
                    await self._db.fetchval(
                        "SELECT pg_try_advisory_lock($1)", self._key, timeout=self._connect_timeout
                    )
                )
        except TROUBLE as error:
            if self.leading:
                log.warning("leadership.lost", extra={"error": str(error)})
            self._end_session()
        return self.leading

    async def release(self) -> None:
        """Stop leading: the lock is let go of (if this replica held it), then the session ends."""
        db = self._db
        if self.leading and db is not None and not db.is_closed():
            with contextlib.suppress(*TROUBLE):  # then the session's end releases it
                await db.execute("SELECT pg_advisory_unlock($1)", self._key, timeout=self._connect_timeout)
        self._end_session()

    def _end_session(self) -> None:
        self.leading = False
        db, self._db = self._db, None
        if db is not None:
            db.terminate()  # ending the session releases the lock, whatever state the connection is in
