"""The PostgreSQL store analyzes the workers' table as registrations grow it from empty, so that the plans
PostgreSQL cached while the table was empty (sequential scans) are made again as index scans; a real database
(``postgres_dsn``) throughout."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from hodei import WorkerCapabilities, WorkerRecord, WorkerType
from hodei.stores import PostgresRegistryStore
from hodei.stores._postgres_statistics import TableStatistics
from tests.helpers import wait_for

T0 = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)

# The store's own lookup of rows by id, prepared as it is: a generic plan, made while the table is empty.
LOOKUP = "SELECT worker_id FROM hodei_workers WHERE worker_id = ANY($1::text[]) ORDER BY worker_id FOR UPDATE"
# Rows added behind the store's back, as another replica's registrations would be.
FILL = (
    "INSERT INTO hodei_workers (worker_id, worker_type, status, pool, hostname, agent_version, incarnation, "
    "cpu_cores, memory_mb, disk_mb, gpu_count, labels, drained) "
    "SELECT $1 || n, 'docker', 'available', 'default', 'host', '0.1.0', 0, 2, 1024, 0, 0, '{}', false "
    "FROM generate_series(1, $2) AS n"
)


def record(worker_id: str) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        worker_type=WorkerType.DOCKER,
        capabilities=WorkerCapabilities(2, 1024),
        registered_at=T0,
        updated_at=T0,
    )


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PostgresRegistryStore]:
    opened = await PostgresRegistryStore.open(postgres_dsn, min_size=1, max_size=2)
    yield opened
    await opened.close()


@pytest.fixture
async def db(postgres_dsn: str, store: PostgresRegistryStore) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres_dsn)
    # Only the store analyzes the table here: autovacuum, should it come by during a test, would too.
    await connection.execute("ALTER TABLE hodei_workers SET (autovacuum_enabled = false)")
    yield connection
    await connection.close()


def statistics_of(store: PostgresRegistryStore, *, every: float = 0.0) -> TableStatistics:
    """Statistics of the store's table, checked at most every ``every`` seconds (by default after every write
    that may)."""
    return TableStatistics(store._pool, store.dsn, every=every)


async def generic_plan(db: asyncpg.Connection) -> str:
    rows = await db.fetch("EXPLAIN EXECUTE lookup('{w-1}')")
    return "\n".join(row[0] for row in rows)


async def analyzed_rows(db: asyncpg.Connection) -> float:
    return float(await db.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'hodei_workers'"))


async def test_a_plan_cached_on_the_empty_table_is_made_again_with_the_index_once_the_store_analyzed_it(
    store: PostgresRegistryStore, db: asyncpg.Connection
) -> None:
    await db.execute("SET plan_cache_mode = force_generic_plan")
    await db.execute(f"PREPARE lookup(text[]) AS {LOOKUP}")
    assert "Seq Scan on hodei_workers" in await generic_plan(db)  # what PostgreSQL plans for an empty table
    await db.execute(FILL, "other-", 3000)
    assert "Seq Scan on hodei_workers" in await generic_plan(db)  # and keeps, however the table grows

    await store.upsert([record("w-1")])
    await store.statistics.checked()

    assert store.statistics.analyses == 1
    assert await analyzed_rows(db) == 3001
    plan = await generic_plan(db)
    assert "Seq Scan" not in plan
    assert "Index Cond: (worker_id = ANY ($1))" in plan  # through the primary key


async def test_only_a_write_that_created_rows_checks_the_statistics(
    store: PostgresRegistryStore, db: asyncpg.Connection
) -> None:
    store.statistics = statistics_of(store)
    await store.upsert([record(f"w-{n}") for n in range(1000)])
    await store.statistics.checked()
    assert store.statistics.analyses == 1
    await db.execute(FILL, "other-", 5000)

    await store.upsert([record(f"w-{n}") for n in range(1000)])  # every one updated, none created
    await store.statistics.checked()

    assert store.statistics.analyses == 1
    assert await analyzed_rows(db) == 1000


async def test_a_table_is_analyzed_again_only_once_it_more_than_doubled(
    store: PostgresRegistryStore, db: asyncpg.Connection
) -> None:
    statistics = statistics_of(store)
    await statistics.check()
    assert statistics.analyses == 0  # empty: nothing to analyze

    await db.execute(FILL, "a-", 10_000)
    await statistics.check()
    assert (statistics.analyses, await analyzed_rows(db)) == (1, 10_000)

    await db.execute(FILL, "b-", 9_000)  # not quite doubled: 19,000 rows
    await statistics.check()
    assert (statistics.analyses, await analyzed_rows(db)) == (1, 10_000)

    await db.execute(FILL, "c-", 4_000)  # more than doubled: 23,000 rows
    await statistics.check()
    assert (statistics.analyses, await analyzed_rows(db)) == (2, 23_000)


async def test_one_check_at_a_time_and_none_again_within_its_interval(
    store: PostgresRegistryStore, db: asyncpg.Connection
) -> None:
    hourly = statistics_of(store, every=3600.0)
    await db.execute(FILL, "a-", 2000)
    assert hourly.grew() is True
    assert hourly.grew() is False  # one is running
    await hourly.checked()
    assert hourly.analyses == 1

    await db.execute(FILL, "b-", 3000)
    assert hourly.grew() is False  # the hour is not up
    await hourly.checked()
    assert hourly.analyses == 1

    always = statistics_of(store)
    assert always.grew() is True
    await always.checked()
    assert always.grew() is True
    await always.checked()
    assert always.analyses == 1  # the second check found the statistics fresh


async def test_a_check_that_fails_is_logged_short_and_changes_nothing(
    store: PostgresRegistryStore, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    statistics = statistics_of(store)
    await db.execute("ALTER TABLE hodei_workers RENAME TO hodei_workers_away")
    try:
        with caplog.at_level(logging.WARNING, logger="hodei.stores._postgres_statistics"):
            await statistics.check()
    finally:
        await db.execute("ALTER TABLE hodei_workers_away RENAME TO hodei_workers")

    assert statistics.analyses == 0
    [failed] = [r for r in caplog.records if r.getMessage() == "store.statistics_failed"]
    assert (
        failed.__dict__["error"]
        == "UNAVAILABLE: the registry database cannot be used now (UndefinedTableError)"
    )


async def test_closing_cancels_a_check_that_is_running(
    store: PostgresRegistryStore, db: asyncpg.Connection
) -> None:
    statistics = statistics_of(store)
    await db.execute(FILL, "a-", 1000)
    assert statistics.grew() is True

    await statistics.aclose()

    assert statistics.analyses == 0
    assert statistics.grew() is False  # closed: none starts after


async def test_closing_the_store_cancels_a_check_that_waits_for_the_table(
    store: PostgresRegistryStore, db: asyncpg.Connection
) -> None:
    theirs = db.transaction()
    await theirs.start()
    await db.execute("LOCK TABLE hodei_workers IN ACCESS EXCLUSIVE MODE")
    try:
        assert store.statistics.grew() is True

        async def waiting_for_the_table() -> bool:
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'hodei_workers'::regclass AND NOT granted"
            )
            return bool(waiting == 1)

        await wait_for(waiting_for_the_table)
        await asyncio.wait_for(store.close(), 5)  # without the check cancelled, the pool waits for it
    finally:
        await theirs.rollback()

    assert store.statistics.analyses == 0
    assert store.statistics.grew() is False


async def test_a_role_that_does_not_own_the_table_leaves_its_statistics_to_autovacuum(
    store: PostgresRegistryStore, db: asyncpg.Connection, postgres_dsn: str
) -> None:
    role = f"{urllib.parse.urlsplit(postgres_dsn).path.lstrip('/')}_rows"
    await db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        await db.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        parts = urllib.parse.urlsplit(postgres_dsn)
        as_role = urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        pool = await asyncpg.create_pool(as_role, min_size=1, max_size=1)
        try:
            statistics = TableStatistics(pool, "test", every=0.0)
            await db.execute(FILL, "a-", 2000)
            await statistics.check()
        finally:
            await pool.close()
        assert statistics.analyses == 0
        assert await analyzed_rows(db) == -1  # never analyzed
    finally:
        await db.execute(f'DROP OWNED BY "{role}"')
        await db.execute(f'DROP ROLE "{role}"')
