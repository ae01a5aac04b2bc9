"""Statistics that keep up with the workers' table while registrations grow it from empty.

asyncpg prepares every statement, and PostgreSQL keeps a statement's generic plan after its fifth execution.
Made while the table is nearly empty, the plan of a lookup by ids (``worker_id = ANY($1)``, which every
registration, change and lease sync runs) is a sequential scan, and it stays one as the table grows: plans are
made again only when the table's statistics change, at autovacuum's first ``ANALYZE``, a minute or more later.
Until then each small group of registrations scans the whole table: measured here, at 20,000 rows, 318 µs of the
database's CPU per registration in groups of eight, against 78 µs once analyzed.

So while registrations create rows, the store asks (at most every :data:`CHECK_EVERY` seconds) whether the table
has more than doubled in pages since its statistics were taken, and if so analyzes it; the analysis makes the
cached plans be made again, from the table as it is. Doubling bounds the work: a table is analyzed this way
about log2 of its size in pages times in its life (a few milliseconds each while it is small; PostgreSQL
samples at most 30,000 rows of a large one), and autovacuum keeps the statistics after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from hodei._quoting import driver_message
from hodei.errors import StoreError
from hodei.stores._postgres_retry import Db, retrying

__all__ = ["CHECK_EVERY", "SLACK_PAGES", "TableStatistics"]

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between checks, while registrations create rows
SLACK_PAGES = 8  # pages a table may have beyond twice what its statistics say before it is analyzed

# Whether hodei_workers has more than twice the pages (plus the slack) its statistics were taken at (none, for a
# table never analyzed), the size being the file's as it is now; and whether this role owns the table (a member
# of its owner's role). Only the owner analyzes: a role granted only its rows would be skipped by ANALYZE, with a
# warning, at every check, and so would some roles that may (a database's owner, PostgreSQL 17's MAINTAIN), which
# leave it to autovacuum.
_OUTGROWN = (
    "SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint > 2 * c.relpages + $1 "
    "AND pg_has_role(c.relowner, 'USAGE') FROM pg_class AS c WHERE c.oid = 'hodei_workers'::regclass"
)


class TableStatistics:
    """``grew()`` after rows were created; :meth:`aclose` with the store. ``analyses`` counts the analyses this
    store asked for (what a test reads)."""

    def __init__(
        self, pool: asyncpg.Pool, store: str, *, every: float = CHECK_EVERY, slack_pages: int = SLACK_PAGES
    ) -> None:
        self._pool = pool
        self._store = store
        self._every = every
        self._slack_pages = slack_pages
        self._due = 0.0  # the event loop's time before which no check starts
        self._checking: asyncio.Task[None] | None = None
        self._closed = False
        self.analyses = 0

    def grew(self) -> bool:
        """Rows were created: check the statistics, unless a check is running or one started within ``every``
        seconds; whether a check started. Never waits."""
        if self._checking is not None or self._closed:
            return False
        loop = asyncio.get_running_loop()
        if loop.time() < self._due:
            return False
        self._due = loop.time() + self._every
        self._checking = loop.create_task(self.check(), name="hodei-table-statistics")
        self._checking.add_done_callback(self._checked)
        return True

    def _checked(self, task: asyncio.Task[None]) -> None:
        self._checking = None
        if not task.cancelled() and (error := task.exception()) is not None:  # a StoreError is logged inside
            log.error("store.statistics_failed", extra={"store": self._store}, exc_info=error)

    async def check(self) -> None:
        """Analyze the table if it outgrew its statistics. A failure is logged, never raised: the plans stay
        as they were, and autovacuum analyzes the table in time."""
        try:
            if await retrying(self._pool, self._store, self._analyze_outgrown, transaction=False):
                self.analyses += 1
                log.info("store.analyzed", extra={"store": self._store, "table": "hodei_workers"})
        except StoreError as error:
            log.warning(
                "store.statistics_failed", extra={"store": self._store, "error": driver_message(error)}
            )

    async def _analyze_outgrown(self, db: Db) -> bool:
        if not await db.fetchval(_OUTGROWN, self._slack_pages):
            return False
        # Not waiting for the table: another replica analyzing it meanwhile does the same.
        await db.execute("ANALYZE (SKIP_LOCKED) hodei_workers")
        return True

    async def checked(self) -> None:
        """Wait for the check running now, if any."""
        if self._checking is not None:
            await asyncio.shield(self._checking)

    async def aclose(self) -> None:
        """Cancel a check that is running; none starts after."""
        self._closed = True
        if self._checking is not None:
            self._checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checking
