"""A :class:`~hodei.ports.RegistryStore` in PostgreSQL (asyncpg), shared by several scheduler replicas.

Every call commits one transaction; registrations that arrive while one commits are group committed
(:class:`~hodei.stores._group.GroupCommit`; under load a group gathers registrations for up to :data:`GATHER` seconds,
or until as many have come as the last commit answered). A group of new workers, each once and bound to no job, is one
``INSERT`` of them all (a unique violation if any is stored: then it writes nothing, and this group and the next ones
go the locked way, until one finds none of its workers stored). Any other group of registrations locks the rows it
touches (``SELECT … FOR UPDATE``, in worker-id order so that two replicas cannot deadlock on one batch), merges each
registration with :func:`hodei.domain.merge_registration`, and writes creations with one ``INSERT … ON CONFLICT DO
NOTHING`` and updates with one ``UPDATE … FROM unnest(…)``. A creation that meets a row another replica created
meanwhile rolls the transaction back and runs it again, so the incarnation fence holds across replicas. The store also
shares the agents' leases between replicas (:class:`~hodei.ports.SharedLeases`), :class:`PostgresLeadership` elects
the one replica that expires leases, with a session advisory lock, and :class:`PostgresEventRelay` passes events and
commands between replicas with LISTEN/NOTIFY.

The store is also :class:`~hodei.ports.BoundJobs`: a unique index on ``job_id`` keeps at most one worker per
job. A write that would bind a second raises :class:`~hodei.errors.JobAlreadyBound` and writes nothing (for
``upsert``, nothing of its whole call; a caller whose registrations were group committed with it is answered
for its own): found by looking the jobs up in the write's transaction, or, when another replica bound one of
them meanwhile, by the index's unique violation — never retried as a race, and no :class:`StoreUnavailable`.
And it is :class:`~hodei.ports.PoolDefinitions`: one row, which every replica reads.

The schema is versioned (table ``hodei_schema``) and migrated on open, under an advisory lock so that
replicas starting together migrate once; its migrations and statements are
:mod:`hodei.stores._postgres_schema`. Each call runs under the retry policy of
:mod:`hodei.stores._postgres_retry`; the job bindings are looked up and enforced by
:mod:`hodei.stores._postgres_bound`. Leadership and the relay are modules of their own
(:mod:`hodei.stores._postgres_leadership`, :mod:`hodei.stores._postgres_relay`), and so is the analysis of the
workers' table while registrations grow it (:mod:`hodei.stores._postgres_statistics`).
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from hodei.domain import (
    UpsertOutcome,
    WorkerRecord,
    WorkerStatus,
    apply_change,
    merge_registrations,
    wire_size,
)
from hodei.errors import StoreError, StoreUnavailable
from hodei.pools import Requirements
from hodei.ports import TouchedLeases, WorkerFilter
from hodei.stores._bound import job_of
from hodei.stores._group import GroupCommit
from hodei.stores._postgres_bound import bind, binding
from hodei.stores._postgres_errors import UNREACHABLE, RaceLost, dsn_hint
from hodei.stores._postgres_retry import Db, retrying
from hodei.stores._postgres_schema import (
    CHANGE,
    INSERT,
    INSERT_NEW,
    MIGRATION_LOCK,
    MIGRATIONS,
    SCHEMA_VERSION,
    SELECT,
    UPDATE,
    VIEW,
    as_rows,
    record,
    viewed,
)
from hodei.stores._postgres_statistics import TableStatistics
from hodei.stores._rows import by_pool

__all__ = ["PostgresRegistryStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

GATHER = 0.010
"""Seconds a group of registrations may wait for more when they came in while one committed. A transaction costs the
scheduler's event loop about a tenth (one statement, for new workers) to half a millisecond (the locked merge)
whatever its size (asyncpg's round trips), so under load fewer, larger groups go further. A group waits for the
registrations waiting and as many again as the last commit answered (``gather_as_last``, at most
:data:`GATHER_RECORDS`), so that a few callers are not held this long. Measured here with 500 registrations in flight
(``hodei bench``, three pairs against a wait of up to 5 ms or 64 records): 0.708 to 0.808 of raw gRPC calls against
0.618 to 0.742, batches 25.5k to 31.2k/s against 22.2k to 28.0k; with 2 and 8 in flight, 534 to 681 and 1,206 to 1,681
registrations/s against 268 to 312 and 680 to 769. The first registration on an idle store does not wait."""

IDLE_IN_TRANSACTION = 60.0
"""Seconds PostgreSQL lets one of the store's connections sit idle inside a transaction before it ends the session
(``idle_in_transaction_session_timeout``): a replica frozen in the middle of a group (stopped, or cut off) then
lets go of the rows it locked, and the other replicas' registrations of those workers go on. The store's own
transactions are a few statements, milliseconds apart."""

GATHER_RECORDS = 256
"""Registrations that end a group's wait, however many the last commit answered."""


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The store's pooled connections keep no session state (no LISTEN, session lock, setting or cursor: the
    leadership and the relay have connections of their own), so one released needs no reset query: a round trip
    less per call. The pool still rolls back a transaction left open."""


_WORKER_KEY = "hodei_workers_pkey"  # the primary key's index, which PostgreSQL names after the table


def _worker_id(record: WorkerRecord) -> str:
    return record.worker_id


class PostgresRegistryStore:
    """``await PostgresRegistryStore.open("postgresql://user@host/db")``; close it with :meth:`close`."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn_hint(dsn)
        self._registrations: GroupCommit[WorkerRecord, tuple[UpsertOutcome, WorkerRecord]] = GroupCommit(
            self._upsert_now,
            size=wire_size,
            gather=GATHER,
            gather_records=GATHER_RECORDS,
            gather_as_last=True,
        )
        self.statistics = TableStatistics(pool, self.dsn)
        self._new_first = True  # whether the next group of new workers is tried as one INSERT first

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 2, max_size: int = 10) -> PostgresRegistryStore:
        hint = dsn_hint(dsn)
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                reset=_keep_session,
                server_settings={"idle_in_transaction_session_timeout": f"{IDLE_IN_TRANSACTION * 1000:.0f}"},
            )
        except UNREACHABLE as error:
            raise StoreUnavailable(f"the registry database {hint} is unreachable: {error}") from error
        except asyncpg.PostgresError as error:  # no such database or user, a wrong password, too many clients
            raise StoreError(f"the registry database {hint} refused the connection: {error}") from error
        store = cls(pool, dsn)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        await self._retrying(self._migrate_in)

    async def _migrate_in(self, db: Db) -> None:
        await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await db.execute(
            "CREATE TABLE IF NOT EXISTS hodei_schema "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = await db.fetchval("SELECT coalesce(max(version), 0) FROM hodei_schema")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.dsn} has registry schema version {version}, newer than this hodei's "
                f"{SCHEMA_VERSION}: upgrade hodei, or use another database"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                await db.execute(statement)
            await db.execute("INSERT INTO hodei_schema (version) VALUES ($1)", number)
            log.info("store.migrated", extra={"store": self.dsn, "schema_version": number})

    async def _retrying(self, work: Callable[[Db], Awaitable[T]], *, transaction: bool = True) -> T:
        """Run ``work`` under the retry policy (:func:`~hodei.stores._postgres_retry.retrying`)."""
        return await retrying(self._pool, self.dsn, work, transaction=transaction)

    async def _read(self, query: str, *args: Any) -> builtins.list[asyncpg.Record]:
        return await self._retrying(lambda db: db.fetch(query, *args), transaction=False)

    # -- RegistryStore ---------------------------------------------------------------------------------

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        return await self._registrations.write(records)

    @property
    def registration_transactions(self) -> int:
        """Transactions that committed registrations so far (group commit: fewer than calls)."""
        return self._registrations.commits

    async def _upsert_now(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        """A group's transaction. New workers, each once and bound to no job (what a fleet registers), are
        inserted by one statement: one round trip, one commit. If the table holds any of them, that statement
        writes nothing and the group is merged in a transaction that locks their rows (:meth:`_upsert_locked`);
        the groups after it go there at once, until one of them finds none of its workers stored."""
        if (
            not self._new_first
            or len({record.worker_id for record in records}) < len(records)
            or any(record.assignment is not None or record.running_jobs for record in records)
        ):
            return await self._upsert_locked(records)
        outcomes, written = merge_registrations({}, records)  # as if none were stored: each one CREATED
        rows = as_rows(sorted(written.values(), key=_worker_id))  # in worker id order, as every write locks

        async def insert_new(db: Db) -> bool:
            try:
                await db.execute(INSERT_NEW, rows)
            except asyncpg.UniqueViolationError as error:
                if error.constraint_name != _WORKER_KEY:
                    raise
                return False  # one of them is stored: the statement wrote nothing
            return True

        if not await self._retrying(insert_new, transaction=False):
            self._new_first = False
            return await self._upsert_locked(records)
        self.statistics.grew()
        return outcomes

    async def _upsert_locked(
        self, records: Sequence[WorkerRecord]
    ) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        """``records`` merged against their stored rows, locked in worker id order, in one transaction."""
        ids = sorted({record.worker_id for record in records})

        async def write(db: Db) -> tuple[list[tuple[UpsertOutcome, WorkerRecord]], bool]:
            rows = await db.fetch(
                f"{SELECT} WHERE worker_id = ANY($1::text[]) ORDER BY worker_id FOR UPDATE", ids
            )
            current = {row[0]: record(row) for row in rows}
            self._new_first = not current
            held = {worker_id: job_of(stored) for worker_id, stored in current.items()}
            outcomes, written = merge_registrations(current, records)
            created = sorted((r for worker_id, r in written.items() if worker_id not in held), key=_worker_id)
            updated = [r for worker_id, r in written.items() if worker_id in held]
            with binding(await bind(db, held, written)):
                if created:
                    inserted = await db.fetch(INSERT, as_rows(created))
                    if len(inserted) != len(created):
                        raise RaceLost
                if updated:
                    await db.execute(UPDATE, as_rows(updated))
            return outcomes, bool(created)

        outcomes, grew = await self._retrying(write)
        if grew:
            self.statistics.grew()
        return outcomes

    async def modify(
        self, worker_id: str, change: Callable[[WorkerRecord], WorkerRecord | None]
    ) -> tuple[WorkerRecord, WorkerRecord] | None:
        [changed] = await self.modify_many([(worker_id, change)])
        return changed

    async def modify_many(
        self, changes: Sequence[tuple[str, Callable[[WorkerRecord], WorkerRecord | None]]]
    ) -> builtins.list[tuple[WorkerRecord, WorkerRecord] | None]:
        async def write(db: Db) -> builtins.list[tuple[WorkerRecord, WorkerRecord] | None]:
            # Rows are locked in worker-id order (as every write here locks them): no deadlock with another.
            ids = sorted({worker_id for worker_id, _ in changes})
            rows = await db.fetch(
                f"{SELECT} WHERE worker_id = ANY($1::text[]) ORDER BY worker_id FOR UPDATE", ids
            )
            current = {row[0]: record(row) for row in rows}
            results: builtins.list[tuple[WorkerRecord, WorkerRecord] | None] = []
            for worker_id, change in changes:
                result, written = apply_change(current.get(worker_id), change)
                if result is not None and written is not None:
                    with binding(await bind(db, {worker_id: job_of(result[0])}, {worker_id: written})):
                        await db.execute(CHANGE, as_rows([written]))
                    current[worker_id] = written
                results.append(result)
            return results

        return await self._retrying(write)

    async def get(self, worker_id: str) -> WorkerRecord | None:
        rows = await self._read(f"{VIEW} WHERE worker_id = $1", worker_id)
        return viewed(rows[0]) if rows else None

    async def delete(self, worker_id: str, *, only_if: Callable[[WorkerRecord], bool] | None = None) -> bool:
        async def write(db: Db) -> bool:
            if only_if is not None:
                row = await db.fetchrow(f"{SELECT} WHERE worker_id = $1 FOR UPDATE", worker_id)
                if row is None or not only_if(record(row)):
                    return False
            deleted = await db.fetchval(
                "WITH gone AS (DELETE FROM hodei_workers WHERE worker_id = $1 RETURNING 1) SELECT count(*) FROM gone",
                worker_id,
            )
            return bool(deleted)

        return await self._retrying(write)

    async def list(
        self, worker_filter: WorkerFilter, *, after: str = "", limit: int = 100
    ) -> list[WorkerRecord]:
        where = ["worker_id > $1"]
        params: list[Any] = [after]
        if worker_filter.statuses:
            params.append(sorted(s.value for s in worker_filter.statuses))
            where.append(f"status = ANY(${len(params)}::text[])")
        if worker_filter.worker_type is not None:
            params.append(worker_filter.worker_type.value)
            where.append(f"worker_type = ${len(params)}")
        _where_labels(worker_filter.labels, where, params)
        params.append(limit)
        query = f"{VIEW} WHERE {' AND '.join(where)} ORDER BY worker_id LIMIT ${len(params)}"
        return [viewed(row) for row in await self._read(query, *params)]

    async def count(self) -> int:
        [row] = await self._read("SELECT count(*) FROM hodei_workers")
        return int(row[0])

    async def leases(self) -> builtins.list[tuple[str, float, WorkerStatus]]:
        rows = await self._read(
            "SELECT worker_id, lease_ttl, status FROM hodei_workers WHERE lease_ttl IS NOT NULL ORDER BY worker_id"
        )
        return [(row[0], row[1], WorkerStatus(row[2])) for row in rows]

    async def count_by_status(self) -> dict[WorkerStatus, int]:
        rows = await self._read("SELECT status, count(*) FROM hodei_workers GROUP BY status")
        return {WorkerStatus(row[0]): int(row[1]) for row in rows}

    async def any_fitting(self, requirements: Requirements, *, with_lease: bool = False) -> bool:
        params: list[Any] = [
            requirements.cpu_cores,
            requirements.memory_mb,
            requirements.disk_mb,
            requirements.gpu_count,
        ]
        where = ["cpu_cores >= $1", "memory_mb >= $2", "disk_mb >= $3", "gpu_count >= $4"]
        if requirements.pool is not None:
            params.append(requirements.pool)
            where.append(f"pool = ${len(params)}")
        if with_lease:
            where.append("lease_ttl IS NOT NULL")
        _where_labels(requirements.labels, where, params)
        return bool(
            await self._read(f"SELECT 1 FROM hodei_workers WHERE {' AND '.join(where)} LIMIT 1", *params)
        )

    async def count_by_pool(self) -> dict[str, dict[WorkerStatus, int]]:
        return by_pool(
            await self._read("SELECT pool, status, count(*) FROM hodei_workers GROUP BY pool, status")
        )

    # -- BoundJobs, PoolDefinitions ---------------------------------------------------------------------

    async def find_job(self, job_id: str) -> WorkerRecord | None:
        rows = await self._read(f"{VIEW} WHERE job_id = $1", job_id)
        return viewed(rows[0]) if rows else None

    async def bound(self) -> builtins.list[WorkerRecord]:
        return [
            viewed(row) for row in await self._read(f"{VIEW} WHERE job_id IS NOT NULL ORDER BY worker_id")
        ]

    async def find_assignment(self, assignment_id: str) -> WorkerRecord | None:
        if "\x00" in assignment_id:  # PostgreSQL's text holds no NUL: no stored assignment has one
            return None
        # Looked for by the server: only the match comes back.
        query = f"{VIEW} WHERE job_id IS NOT NULL AND (assignment::jsonb ->> 'assignment_id') = $1"
        rows = await self._read(query, assignment_id)
        return viewed(rows[0]) if rows else None

    async def save_pools(self, source: str, text: str) -> None:
        async def write(db: Db) -> None:
            await db.execute(
                "INSERT INTO hodei_pools (singleton, source, text) VALUES (true, $1, $2) ON CONFLICT (singleton) "
                "DO UPDATE SET source = excluded.source, text = excluded.text, saved_at = now()",
                source,
                text,
            )

        await self._retrying(write)

    async def load_pools(self) -> tuple[str, str] | None:
        rows = await self._read("SELECT source, text FROM hodei_pools")
        return (rows[0][0], rows[0][1]) if rows else None

    async def close(self) -> None:
        await self._registrations.aclose()
        await self.statistics.aclose()
        await self._pool.close()

    # -- SpentTokens -----------------------------------------------------------------------------------

    async def spend(self, token_id: str, expires_at: datetime, worker_id: str, incarnation: int) -> bool:
        async def write(db: Db) -> bool:
            await db.execute("DELETE FROM hodei_spent_tokens WHERE expires_at < now()")
            # A row comes back when inserted, or spent already by the same registration (a retry, perhaps of
            # this very transaction after a commit whose answer was lost); none when another one spent it.
            written = await db.fetchval(
                "INSERT INTO hodei_spent_tokens AS t (token_id, expires_at, worker_id, incarnation) "
                "VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (token_id) DO UPDATE SET expires_at = greatest(t.expires_at, excluded.expires_at) "
                "WHERE t.worker_id = excluded.worker_id AND t.incarnation = excluded.incarnation RETURNING 1",
                token_id,
                expires_at,
                worker_id,
                incarnation,
            )
            return bool(written == 1)

        return await self._retrying(write)

    # -- SharedLeases ----------------------------------------------------------------------------------

    async def touch(
        self, worker_ids: Sequence[str], *, stream_at: str = "", left: Sequence[str] = ()
    ) -> TouchedLeases:
        async def write(db: Db) -> builtins.list[asyncpg.Record]:
            # Heard first, closed after: a stream that heartbeated and then closed within one sync is closed.
            rows = (
                []
                if not worker_ids
                else await db.fetch(
                    "WITH touched AS (UPDATE hodei_workers SET last_seen = now(), stream_at = coalesce($2, stream_at) "
                    "WHERE worker_id = ANY($1::text[]) AND lease_ttl IS NOT NULL RETURNING worker_id, status) "
                    "SELECT worker_id, status FROM touched UNION ALL "
                    "SELECT a.worker_id, NULL FROM unnest($1::text[]) AS a(worker_id) "
                    "WHERE NOT EXISTS (SELECT 1 FROM hodei_workers w WHERE w.worker_id = a.worker_id)",
                    list(worker_ids),
                    stream_at or None,
                )
            )
            if left and stream_at:
                await db.execute(
                    "UPDATE hodei_workers SET stream_at = NULL WHERE worker_id = ANY($1::text[]) AND stream_at = $2",
                    list(left),
                    stream_at,
                )
            return rows

        rows = await self._retrying(write)
        return TouchedLeases(
            lost=[row[0] for row in rows if row[1] == WorkerStatus.LOST.value],
            gone=[row[0] for row in rows if row[1] is None],
        )

    async def lease_ages(self) -> builtins.list[tuple[str, float, float]]:
        rows = await self._read(
            "SELECT worker_id, lease_ttl, extract(epoch FROM now() - last_seen)::float8 FROM hodei_workers "
            "WHERE lease_ttl IS NOT NULL AND last_seen IS NOT NULL AND status <> $1",
            WorkerStatus.LOST.value,
        )
        return [(row[0], row[1], row[2]) for row in rows]


def _where_labels(labels: Mapping[str, str], where: list[str], params: list[Any]) -> None:
    """The condition that a worker has every one of ``labels`` (key and value), added to ``where`` and
    ``params``: one JSONB containment."""
    if labels:
        params.append(json.dumps(dict(labels)))
        where.append(f"labels @> ${len(params)}::jsonb")
