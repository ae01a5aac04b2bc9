"""A :class:`~hodei.ports.RegistryStore` in one SQLite file: the embedded default, durable across restarts.

Every call is one transaction: a batch of registrations is one ``BEGIN IMMEDIATE … COMMIT``, so a batch costs
one fsync, not one per worker. Registrations are group committed (:class:`~hodei.stores._group.GroupCommit`):
those that arrive while a commit runs share the next transaction and its fsync, each answered once that
transaction committed (under load, a group waits up to :data:`GATHER` seconds for more). They are written by a
process of the store's own (:mod:`hodei.stores._sqlite_writer`), off the scheduler's GIL; every other call
runs on the store's thread (sqlite3 blocks), on a connection of its own. The file is in WAL mode with
``synchronous=FULL``: a commit that returned is on disk, and a registration acknowledged to a client survives
the scheduler's crash and the machine's. The schema is versioned (``PRAGMA user_version``) and migrated when
the store opens; a file written by a newer hodei is refused rather than misread. Its migrations and statements
are :mod:`hodei.stores._sqlite_schema`.

The store is also :class:`~hodei.ports.BoundJobs` (a unique index on ``job_id``: at most one worker per job; a
write that would bind a second raises :class:`~hodei.errors.JobAlreadyBound` and writes nothing — for
``upsert``, nothing of its whole call, though a caller whose registrations were group committed with it is
answered for its own) and :class:`~hodei.ports.PoolDefinitions` (a table of one row).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from hodei.domain import UpsertOutcome, WorkerRecord, WorkerStatus, apply_change, utcnow, wire_size
from hodei.errors import StoreError, StoreUnavailable
from hodei.pools import Requirements
from hodei.ports import WorkerFilter
from hodei.stores._bound import job_of
from hodei.stores._file_lock import RegistryFileLock
from hodei.stores._group import GroupCommit
from hodei.stores._rows import by_pool
from hodei.stores._sqlite_schema import (
    DRIVER_ERRORS,
    SELECT,
    STATEMENT_CACHE,
    UPSERT,
    as_row,
    bind_jobs,
    by_worker_id,
    configure,
    driver_error,
    fetch_rows,
    migrate,
    record,
)
from hodei.stores._sqlite_writer import WriterProcess

__all__ = ["SqliteRegistryStore"]

T = TypeVar("T")

log = logging.getLogger(__name__)

GATHER = 0.010
"""Seconds a group of registrations may wait for more when they came in while one committed (under load): each
transaction costs the event loop an exchange with the writer process, and the writer a ``BEGIN``, a read and
a ``COMMIT`` with its fsync, whatever the group's size. A group waits for the registrations waiting and as
many again as the last commit answered (``gather_as_last``, at most :data:`GATHER_RECORDS`): a few callers that
send again soon are not held this long, and hundreds are gathered into groups of dozens. Callers that do not
come back (a burst, then silence) hold the last group of the burst up to this long. Measured here:
``benchmarks/README.md``, issue 17, the twelfth session."""

GATHER_RECORDS = 256
"""Registrations that end a group's wait, however many the last group held."""


class SqliteRegistryStore:
    """``await SqliteRegistryStore.open("registry.db")``; close it with :meth:`close`.

    An open store holds an exclusive lock on ``registry.db.lock`` beside its file (``exclusive=False``: it does
    not, for tests of two handles on one file): two schedulers on one file would expire and delete each other's
    workers, so a second store opened on a locked file is refused, naming the PID that holds it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        exclusive: bool = True,
    ) -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hodei-sqlite")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._busy_timeout_ms = round(busy_timeout * 1000)  # how long a write waits for another's lock
        self._lock = RegistryFileLock(self.path) if exclusive else None
        self._writer = WriterProcess(
            self.path, synchronous=synchronous, busy_timeout_ms=self._busy_timeout_ms
        )
        self._registrations: GroupCommit[WorkerRecord, tuple[UpsertOutcome, WorkerRecord]] = GroupCommit(
            self._writer.register,
            size=wire_size,
            gather=GATHER,
            gather_records=GATHER_RECORDS,
            gather_as_last=True,
        )

    @classmethod
    async def open(
        cls, path: str | Path, *, synchronous: str = "FULL", busy_timeout: float = 5.0, exclusive: bool = True
    ) -> SqliteRegistryStore:
        store = cls(path, synchronous=synchronous, busy_timeout=busy_timeout, exclusive=exclusive)
        await store._run(store._connect)
        try:
            await store._writer.start()
        except BaseException:
            await store.close()
            raise
        return store

    # -- the thread ------------------------------------------------------------------------------------

    async def _run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the store's thread; every error of the driver becomes a :class:`StoreError` kind."""
        if self._closed:
            raise StoreUnavailable(f"the registry store {self.path} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work)
        except DRIVER_ERRORS as error:
            told = driver_error(error)
            if isinstance(told, StoreUnavailable):
                log.warning("store.unavailable", extra={"path": str(self.path), "error": told.message})
            raise told from error

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot open {self.path}: {error}") from error
        if (
            self._lock is not None
        ):  # one scheduler per file: a second would expire and delete the first's workers
            self._lock.acquire()
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=STATEMENT_CACHE
            )
        except (OSError, sqlite3.Error) as error:
            self._release_lock()
            raise StoreError(f"cannot open {self.path}: {error}") from error
        try:
            configure(db, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms)
            migrate(db, self.path)
        except sqlite3.DatabaseError as error:  # not a database, or a damaged one
            db.close()
            self._release_lock()
            raise StoreError(f"cannot use {self.path} as a registry: {error}") from error
        except BaseException:
            db.close()
            self._release_lock()
            raise
        self._db = db

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        def run() -> T:
            db = self._db
            if db is None:
                raise StoreUnavailable(f"the registry store {self.path} is closed")
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return run

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        def run() -> T:
            if self._db is None:
                raise StoreUnavailable(f"the registry store {self.path} is closed")
            return work(self._db)

        return run

    # -- RegistryStore ---------------------------------------------------------------------------------

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        return await self._registrations.write(records)

    @property
    def registration_transactions(self) -> int:
        """Transactions that committed registrations so far (group commit: fewer than calls)."""
        return self._registrations.commits

    @property
    def writer_pid(self) -> int | None:
        """The PID of the process that writes registrations (:mod:`hodei.stores._sqlite_writer`), while it runs."""
        return self._writer.pid

    async def modify(
        self, worker_id: str, change: Callable[[WorkerRecord], WorkerRecord | None]
    ) -> tuple[WorkerRecord, WorkerRecord] | None:
        [changed] = await self.modify_many([(worker_id, change)])
        return changed

    async def modify_many(
        self, changes: Sequence[tuple[str, Callable[[WorkerRecord], WorkerRecord | None]]]
    ) -> list[tuple[WorkerRecord, WorkerRecord] | None]:
        def write(db: sqlite3.Connection) -> list[tuple[WorkerRecord, WorkerRecord] | None]:
            results: list[tuple[WorkerRecord, WorkerRecord] | None] = []
            for worker_id, change in changes:
                result, written = apply_change(_fetch(db, [worker_id]).get(worker_id), change)
                if result is not None and written is not None:
                    bind_jobs(db, {worker_id: job_of(result[0])}, {worker_id: written})
                    db.execute(UPSERT, as_row(written))
                results.append(result)
            return results

        return await self._run(self._transaction(write))

    async def get(self, worker_id: str) -> WorkerRecord | None:
        return await self._run(self._read(lambda db: _fetch(db, [worker_id]).get(worker_id)))

    async def delete(self, worker_id: str, *, only_if: Callable[[WorkerRecord], bool] | None = None) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            if only_if is not None:
                stored = _fetch(db, [worker_id]).get(worker_id)
                if stored is None or not only_if(stored):
                    return False
            return db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,)).rowcount > 0

        return await self._run(self._transaction(write))

    async def list(
        self, worker_filter: WorkerFilter, *, after: str = "", limit: int = 100
    ) -> list[WorkerRecord]:
        where = ["worker_id > ?"]
        params: list[Any] = [after]
        if worker_filter.statuses:
            where.append(f"status IN ({', '.join('?' for _ in worker_filter.statuses)})")
            params += sorted(s.value for s in worker_filter.statuses)
        if worker_filter.worker_type is not None:
            where.append("worker_type = ?")
            params.append(worker_filter.worker_type.value)
        _where_labels(worker_filter.labels, where, params)
        query = f"{SELECT} WHERE {' AND '.join(where)} ORDER BY worker_id LIMIT ?"
        params.append(limit)
        rows = await self._run(self._read(lambda db: db.execute(query, params).fetchall()))
        return [record(row) for row in rows]

    async def count(self) -> int:
        (count,) = await self._run(
            self._read(lambda db: db.execute("SELECT count(*) FROM workers").fetchone())
        )
        return int(count)

    async def leases(self) -> builtins.list[tuple[str, float, WorkerStatus]]:
        query = (
            "SELECT worker_id, lease_ttl, status FROM workers WHERE lease_ttl IS NOT NULL ORDER BY worker_id"
        )
        rows = await self._run(self._read(lambda db: db.execute(query).fetchall()))
        return [(worker_id, ttl, WorkerStatus(status)) for worker_id, ttl, status in rows]

    async def count_by_status(self) -> dict[WorkerStatus, int]:
        rows = await self._run(
            self._read(
                lambda db: db.execute("SELECT status, count(*) FROM workers GROUP BY status").fetchall()
            )
        )
        return {WorkerStatus(status): int(count) for status, count in rows}

    async def any_fitting(self, requirements: Requirements, *, with_lease: bool = False) -> bool:
        where = ["cpu_cores >= ?", "memory_mb >= ?", "disk_mb >= ?", "gpu_count >= ?"]
        params: list[Any] = [
            requirements.cpu_cores,
            requirements.memory_mb,
            requirements.disk_mb,
            requirements.gpu_count,
        ]
        if requirements.pool is not None:
            where.append("pool = ?")
            params.append(requirements.pool)
        if with_lease:
            where.append("lease_ttl IS NOT NULL")
        _where_labels(requirements.labels, where, params)
        query = f"SELECT 1 FROM workers WHERE {' AND '.join(where)} LIMIT 1"
        return bool(await self._run(self._read(lambda db: db.execute(query, params).fetchall())))

    async def count_by_pool(self) -> dict[str, dict[WorkerStatus, int]]:
        query = "SELECT pool, status, count(*) FROM workers GROUP BY pool, status"
        return by_pool(await self._run(self._read(lambda db: db.execute(query).fetchall())))

    async def spend(self, token_id: str, expires_at: datetime, worker_id: str, incarnation: int) -> bool:
        now, until = utcnow().timestamp(), expires_at.timestamp()  # seconds since the epoch

        def write(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM spent_tokens WHERE expires_at < ?", (now,))
            # Inserted, or spent already by the same registration (a retry): one row changed; by another: none.
            written = db.execute(
                "INSERT INTO spent_tokens (token_id, expires_at, worker_id, incarnation) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (token_id) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at) "
                "WHERE worker_id = excluded.worker_id AND incarnation = excluded.incarnation",
                (token_id, until, worker_id, incarnation),
            )
            return written.rowcount == 1

        return await self._run(self._transaction(write))

    # -- BoundJobs, PoolDefinitions ---------------------------------------------------------------------

    async def find_job(self, job_id: str) -> WorkerRecord | None:
        rows = await self._run(
            self._read(lambda db: db.execute(f"{SELECT} WHERE job_id = ?", (job_id,)).fetchall())
        )
        return record(rows[0]) if rows else None

    async def bound(self) -> builtins.list[WorkerRecord]:
        query = f"{SELECT} WHERE job_id IS NOT NULL ORDER BY worker_id"
        return [record(row) for row in await self._run(self._read(lambda db: db.execute(query).fetchall()))]

    async def find_assignment(self, assignment_id: str) -> WorkerRecord | None:
        # Looked for in SQLite, on the store's thread: only the match is decoded.
        query = f"{SELECT} WHERE job_id IS NOT NULL AND json_extract(assignment, '$.assignment_id') = ?"
        rows = await self._run(self._read(lambda db: db.execute(query, (assignment_id,)).fetchall()))
        return record(rows[0]) if rows else None

    async def save_pools(self, source: str, text: str) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO pools (singleton, source, text) VALUES (1, ?, ?) "
                "ON CONFLICT (singleton) DO UPDATE SET source = excluded.source, text = excluded.text",
                (source, text),
            )

        await self._run(self._transaction(write))

    async def load_pools(self) -> tuple[str, str] | None:
        rows = await self._run(self._read(lambda db: db.execute("SELECT source, text FROM pools").fetchall()))
        return (rows[0][0], rows[0][1]) if rows else None

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._release_lock()

        if not self._closed:
            self._closed = True
            await self._writer.close()  # after the group it writes, if any
            await self._registrations.aclose()
            await asyncio.get_running_loop().run_in_executor(self._thread, shut)
            self._thread.shutdown(wait=True)


def _fetch(db: sqlite3.Connection, worker_ids: Sequence[str]) -> dict[str, WorkerRecord]:
    return by_worker_id(fetch_rows(db, worker_ids))


def _where_labels(labels: Mapping[str, str], where: list[str], params: list[Any]) -> None:
    """Conditions that a worker has every one of ``labels`` (key and value), added to ``where`` and ``params``."""
    for key, value in sorted(labels.items()):
        where.append("EXISTS (SELECT 1 FROM json_each(labels) WHERE key = ? AND value = ?)")
        params += [key, value]
