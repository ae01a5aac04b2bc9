"""One contract, three stores: memory, SQLite and PostgreSQL pass the same tests.

The PostgreSQL store runs against the private cluster the hodei pytest plugin starts (``postgres_dsn``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from hodei import (
    StoreError,
    StoreUnavailable,
    WorkerCapabilities,
    WorkerFilter,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
)
from hodei.domain import Assignment, Job, ResourceUsage, UpsertOutcome
from hodei.errors import ErrorCode, JobAlreadyBound
from hodei.pools import Requirements
from hodei.ports import BoundJobs, PoolDefinitions, RegistryStore, SharedLeases, SpentTokens, TouchedLeases
from hodei.stores import PostgresRegistryStore
from hodei.stores._memory import MemoryRegistryStore
from hodei.stores._postgres_schema import MIGRATIONS as POSTGRES_MIGRATIONS
from hodei.stores._rows import COLUMNS, to_row
from hodei.stores._sqlite import SqliteRegistryStore
from hodei.stores._sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from hodei.stores._sqlite_schema import SCHEMA_VERSION
from tests.helpers import free_port, wait_for

T0 = datetime(2026, 11, 28, 3, 4, 5, 123456, tzinfo=UTC)

Opener = Callable[[], Awaitable[RegistryStore]]


def record(worker_id: str = "w-1", incarnation: int = 0, **fields: object) -> WorkerRecord:
    values: dict[str, object] = {
        "worker_type": WorkerType.DOCKER,
        "capabilities": WorkerCapabilities(4, 8192, 100_000, 1),
        "labels": {"zone": "eu-1", "gpu.vendor/model": "x'y\"z ü"},
        "pool": "builders",
        "hostname": "host-1.example",
        "agent_version": "0.1.0",
        "registered_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return WorkerRecord(worker_id=worker_id, incarnation=incarnation, **values)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens the store under test; a second call opens the same registry again (a restart, or a replica)."""
    opened: list[RegistryStore] = []
    if request.param == "memory":
        shared = MemoryRegistryStore()

        async def open_store() -> RegistryStore:
            return shared

    elif request.param == "sqlite":

        async def open_store() -> RegistryStore:
            # Not exclusive: two handles on one file, as two processes would be, test SQLite's transactions.
            store = await SqliteRegistryStore.open(tmp_path / "registry.db", exclusive=False)
            opened.append(store)
            return store

    else:
        dsn = request.getfixturevalue("postgres_dsn")

        async def open_store() -> RegistryStore:
            store = await PostgresRegistryStore.open(dsn, min_size=1, max_size=4)
            opened.append(store)
            return store

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
async def store(opener: Opener) -> RegistryStore:
    return await opener()


async def test_a_new_record_is_created_and_read_back_field_for_field(store: RegistryStore) -> None:
    new = record(lease_ttl=15.0, drained=True, status=WorkerStatus.DRAINING)
    assert await store.upsert([new]) == [(UpsertOutcome.CREATED, new)]
    assert await store.get("w-1") == new
    stored = await store.get("w-1")
    assert stored is not None
    assert (stored.labels, stored.registered_at, stored.lease_ttl, stored.drained) == (
        new.labels,
        T0,
        15.0,
        True,
    )


async def test_a_record_without_labels_or_timestamps_round_trips(store: RegistryStore) -> None:
    bare = record(labels={}, registered_at=None, updated_at=None, hostname="", agent_version="")
    await store.upsert([bare])
    assert await store.get("w-1") == bare


async def test_live_fields_are_not_stored(store: RegistryStore) -> None:
    live = record(connected=True, usage=ResourceUsage(1.0, 2, 3), last_heartbeat_at=T0)
    [(outcome, stored)] = await store.upsert([live])
    assert outcome is UpsertOutcome.CREATED
    expected = replace(live, connected=False, usage=None, last_heartbeat_at=None)
    assert stored == expected
    assert await store.get("w-1") == expected


async def test_the_same_incarnation_updates_the_fields_and_keeps_status_and_registration_time(
    store: RegistryStore,
) -> None:
    await store.upsert([record(incarnation=3, status=WorkerStatus.BUSY)])
    later = T0 + timedelta(seconds=5)
    refreshed = record(incarnation=3, pool="other", registered_at=later, updated_at=later)
    [(outcome, stored)] = await store.upsert([refreshed])
    assert outcome is UpsertOutcome.UPDATED
    assert stored == replace(refreshed, status=WorkerStatus.BUSY, registered_at=T0)
    assert await store.get("w-1") == stored


async def test_a_higher_incarnation_replaces_the_record_and_starts_it_afresh(store: RegistryStore) -> None:
    await store.upsert([record(incarnation=3, status=WorkerStatus.DRAINING, drained=True)])
    [(outcome, stored)] = await store.upsert([record(incarnation=4)])
    assert outcome is UpsertOutcome.UPDATED
    assert (stored.incarnation, stored.status, stored.drained) == (4, WorkerStatus.AVAILABLE, False)
    assert await store.get("w-1") == stored


async def test_a_lower_incarnation_is_stale_and_changes_nothing(store: RegistryStore) -> None:
    current = record(incarnation=5)
    await store.upsert([current])
    [(outcome, stored)] = await store.upsert([record(incarnation=4, pool="old")])
    assert (outcome, stored) == (UpsertOutcome.STALE, current)
    assert await store.get("w-1") == current


async def test_an_unfenced_registration_keeps_a_fenced_record(store: RegistryStore) -> None:
    current = record(incarnation=2)
    await store.upsert([current])
    assert await store.upsert([record(incarnation=0, pool="cp")]) == [(UpsertOutcome.KEPT, current)]
    assert await store.get("w-1") == current


async def test_a_batch_merges_in_order_even_for_one_worker_twice(store: RegistryStore) -> None:
    first, second, stale = record("a", 1), record("a", 2), record("a", 1)
    outcomes = await store.upsert([first, record("b"), second, stale])
    assert [outcome for outcome, _ in outcomes] == [
        UpsertOutcome.CREATED,
        UpsertOutcome.CREATED,
        UpsertOutcome.UPDATED,
        UpsertOutcome.STALE,
    ]
    assert await store.get("a") == second
    assert await store.count() == 2


async def test_a_batch_of_a_thousand_is_written_whole(store: RegistryStore) -> None:
    outcomes = await store.upsert([record(f"w-{n:04d}") for n in range(1000)])
    assert {outcome for outcome, _ in outcomes} == {UpsertOutcome.CREATED}
    assert await store.count() == 1000
    assert await store.get("w-0999") == record("w-0999")


async def test_modify_writes_what_the_change_returns(store: RegistryStore) -> None:
    await store.upsert([record()])
    changed = await store.modify("w-1", lambda r: replace(r, status=WorkerStatus.LOST, usage=ResourceUsage()))
    assert changed == (record(), record(status=WorkerStatus.LOST))
    assert await store.get("w-1") == record(status=WorkerStatus.LOST)


async def test_modify_leaves_the_record_when_the_change_returns_none(store: RegistryStore) -> None:
    await store.upsert([record()])
    assert await store.modify("w-1", lambda r: None) == (record(), record())
    assert await store.get("w-1") == record()


async def test_modify_of_an_unknown_worker_is_none_and_creates_nothing(store: RegistryStore) -> None:
    assert await store.modify("ghost", lambda r: replace(r, pool="x")) is None
    assert await store.count() == 0


async def test_delete_removes_once(store: RegistryStore) -> None:
    await store.upsert([record()])
    assert await store.delete("w-1") is True
    assert await store.delete("w-1") is False
    assert await store.get("w-1") is None


async def test_delete_only_if_checks_the_stored_record(store: RegistryStore) -> None:
    await store.upsert([record(status=WorkerStatus.AVAILABLE)])
    assert await store.delete("w-1", only_if=lambda r: r.status is WorkerStatus.LOST) is False
    assert await store.get("w-1") == record()
    assert await store.delete("w-1", only_if=lambda r: r.status is WorkerStatus.AVAILABLE) is True
    assert await store.delete("w-1", only_if=lambda r: True) is False


async def test_list_pages_in_worker_id_order(store: RegistryStore) -> None:
    await store.upsert([record(f"w-{n}") for n in (3, 1, 4, 0, 2)])
    first = await store.list(WorkerFilter(), limit=2)
    assert [r.worker_id for r in first] == ["w-0", "w-1"]
    rest = await store.list(WorkerFilter(), after="w-1", limit=10)
    assert [r.worker_id for r in rest] == ["w-2", "w-3", "w-4"]
    assert await store.list(WorkerFilter(), after="w-4") == []


async def test_list_filters_by_status_type_and_labels(store: RegistryStore) -> None:
    await store.upsert(
        [
            record("a", status=WorkerStatus.AVAILABLE, labels={"zone": "eu", "k.io/x": "1"}),
            record("b", status=WorkerStatus.BUSY, labels={"zone": "eu"}),
            record("c", status=WorkerStatus.LOST, worker_type=WorkerType.PROCESS, labels={"zone": "us"}),
            record("d", status=WorkerStatus.AVAILABLE, worker_type=WorkerType.PROCESS, labels={}),
        ]
    )

    async def ids(**criteria: object) -> list[str]:
        return [r.worker_id for r in await store.list(WorkerFilter(**criteria))]  # type: ignore[arg-type]

    assert await ids(statuses=frozenset({WorkerStatus.AVAILABLE, WorkerStatus.LOST})) == ["a", "c", "d"]
    assert await ids(worker_type=WorkerType.PROCESS) == ["c", "d"]
    assert await ids(labels={"zone": "eu"}) == ["a", "b"]
    assert await ids(labels={"zone": "eu", "k.io/x": "1"}) == ["a"]
    assert await ids(labels={"zone": "eu", "k.io/x": "2"}) == []
    assert await ids(labels={"zone": "eu"}, statuses=frozenset({WorkerStatus.BUSY})) == ["b"]
    assert await ids(labels={"zone": "us"}, worker_type=WorkerType.DOCKER) == []


async def test_list_limit_counts_only_matching_records(store: RegistryStore) -> None:
    await store.upsert([record(f"w-{n}", labels={"even": str(n % 2 == 0)}) for n in range(10)])
    found = await store.list(WorkerFilter(labels={"even": "True"}), limit=3)
    assert [r.worker_id for r in found] == ["w-0", "w-2", "w-4"]


async def test_count(store: RegistryStore) -> None:
    assert await store.count() == 0
    await store.upsert([record("a"), record("b")])
    assert await store.count() == 2


async def test_count_by_status_counts_each_stored_status_and_follows_changes(store: RegistryStore) -> None:
    assert await store.count_by_status() == {}
    await store.upsert([record(f"w-{n}") for n in range(5)] + [record("d", status=WorkerStatus.DRAINING)])
    await store.modify("w-0", lambda r: replace(r, status=WorkerStatus.LOST))
    await store.modify("w-1", lambda r: replace(r, status=WorkerStatus.BUSY))
    await store.delete("w-2")

    counts = await store.count_by_status()

    assert counts == {
        WorkerStatus.AVAILABLE: 2,
        WorkerStatus.BUSY: 1,
        WorkerStatus.DRAINING: 1,
        WorkerStatus.LOST: 1,
    }
    assert all(isinstance(status, WorkerStatus) and type(n) is int for status, n in counts.items())


async def test_leases_are_those_of_the_leased_records_in_worker_id_order_and_follow_changes(
    store: RegistryStore,
) -> None:
    assert await store.leases() == []
    await store.upsert(
        [
            record("c", lease_ttl=15.0),
            record("a", lease_ttl=2.5),
            record("pushed"),  # no agent: no lease
            record("b", lease_ttl=15.0, status=WorkerStatus.DRAINING),
            record("gone", lease_ttl=15.0),
        ]
    )
    await store.modify("c", lambda r: replace(r, status=WorkerStatus.LOST))
    await store.delete("gone")

    leases = await store.leases()

    assert leases == [
        ("a", 2.5, WorkerStatus.AVAILABLE),
        ("b", 15.0, WorkerStatus.DRAINING),
        ("c", 15.0, WorkerStatus.LOST),
    ]
    assert all(type(ttl) is float and isinstance(status, WorkerStatus) for _, ttl, status in leases)


async def test_count_by_pool_counts_each_pools_statuses_and_follows_changes(store: RegistryStore) -> None:
    assert await store.count_by_pool() == {}
    await store.upsert(
        [record(f"b-{n}") for n in range(3)]
        + [record(f"f-{n}", pool="fixed") for n in range(2)]
        + [record("x", pool="x'y\"z ü", status=WorkerStatus.DRAINING)]
    )
    await store.modify("b-0", lambda r: replace(r, status=WorkerStatus.BUSY))
    await store.modify("f-1", lambda r: replace(r, pool="builders"))
    await store.delete("b-2")

    counts = await store.count_by_pool()

    assert counts == {
        "builders": {WorkerStatus.AVAILABLE: 2, WorkerStatus.BUSY: 1},
        "fixed": {WorkerStatus.AVAILABLE: 1},
        "x'y\"z ü": {WorkerStatus.DRAINING: 1},
    }
    assert all(type(n) is int for by_status in counts.values() for n in by_status.values())


async def test_any_fitting_says_whether_some_worker_could_ever_meet_requirements(
    store: RegistryStore,
) -> None:
    # record(): 4 cores, 8192 MB, 100,000 MB disk, 1 GPU, pool "builders", zone=eu-1 and a label of quotes.
    assert await store.any_fitting(Requirements()) is False  # nothing registered
    await store.upsert([record("pushed"), record("small", capabilities=WorkerCapabilities(1, 512, 0, 0))])
    await store.upsert([record("leased", pool="agents", lease_ttl=15.0, status=WorkerStatus.BUSY)])

    fits = store.any_fitting
    assert await fits(Requirements(cpu_cores=4, memory_mb=8192, disk_mb=100_000, gpu_count=1)) is True
    assert await fits(Requirements(cpu_cores=5)) is False
    assert await fits(Requirements(gpu_count=2)) is False
    assert await fits(Requirements(pool="builders", labels={"zone": "eu-1"})) is True
    assert await fits(Requirements(labels={"gpu.vendor/model": "x'y\"z ü"})) is True
    assert await fits(Requirements(labels={"zone": "eu-2"})) is False
    assert await fits(Requirements(labels={"zone": "%"})) is False
    assert await fits(Requirements(labels={"zone": "eu-1", "rack": "a"})) is False
    assert await fits(Requirements(pool="nowhere")) is False
    assert await fits(Requirements(pool="builders"), with_lease=True) is False  # no agent keeps those
    assert await fits(Requirements(pool="agents", cpu_cores=4), with_lease=True) is True  # BUSY counts too


async def test_a_reopened_store_has_every_record(opener: Opener) -> None:
    first = await opener()
    await first.upsert([record(f"w-{n:03d}", lease_ttl=15.0) for n in range(300)])
    await first.modify("w-007", lambda r: replace(r, status=WorkerStatus.LOST))
    if not isinstance(first, MemoryRegistryStore):
        await first.close()
    again = await opener()
    assert await again.count() == 300
    assert await again.get("w-007") == record("w-007", lease_ttl=15.0, status=WorkerStatus.LOST)


async def test_two_handles_racing_to_register_one_worker_keep_the_newest_incarnation(opener: Opener) -> None:
    one, two = await opener(), await opener()
    for round_ in range(20):
        worker_id = f"race-{round_}"
        low, high = record(worker_id, 2 * round_ + 1), record(worker_id, 2 * round_ + 2)
        results = await asyncio.gather(one.upsert([low]), two.upsert([high]))
        outcomes = {outcome for [(outcome, _)] in results}
        assert UpsertOutcome.CREATED in outcomes
        stored = await one.get(worker_id)
        assert stored is not None and stored.incarnation == 2 * round_ + 2
    assert await two.count() == 20


async def test_concurrent_batches_over_the_same_workers_neither_fail_nor_duplicate(opener: Opener) -> None:
    one, two = await opener(), await opener()
    ids = [f"w-{n:03d}" for n in range(200)]
    await asyncio.gather(
        one.upsert([record(i, 1) for i in ids]),
        two.upsert([record(i, 2) for i in reversed(ids)]),
        one.upsert([record(i, 3) for i in ids[50:150]]),
    )
    assert await two.count() == 200
    stored = await two.list(WorkerFilter(), limit=1000)
    assert [r.incarnation for r in stored] == [2] * 50 + [3] * 100 + [2] * 50


# -- what only durable stores do -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a durable store; a second call opens the same registry again (a restart, or a replica)."""
    opened: list[SqliteRegistryStore | PostgresRegistryStore] = []

    async def open_store() -> RegistryStore:
        store: SqliteRegistryStore | PostgresRegistryStore
        if request.param == "sqlite":
            store = await SqliteRegistryStore.open(tmp_path / "registry.db")
        else:
            store = await PostgresRegistryStore.open(request.getfixturevalue("postgres_dsn"), min_size=1)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


async def test_a_spent_token_is_refused_by_the_same_registry_after_a_restart(durable: Opener) -> None:
    first = await durable()
    assert isinstance(first, SpentTokens)
    later = datetime.now(UTC) + timedelta(minutes=10)
    assert await first.spend("jti-1", later, "w-1", 1) is True
    assert await first.spend("jti-1", later, "w-9", 1) is False
    assert await first.spend("jti-2", later, "w-2", 1) is True
    await first.close()
    second = await durable()  # the same file, or the same database, reopened
    assert isinstance(second, SpentTokens)
    assert await second.spend("jti-1", later, "w-9", 1) is False
    assert await second.spend("jti-2", later, "w-9", 1) is False
    assert await second.spend("jti-3", later, "w-3", 1) is True


async def test_a_spent_token_is_refused_by_a_replica_on_the_same_database(postgres_dsn: str) -> None:
    first = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    second = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    try:
        later = datetime.now(UTC) + timedelta(minutes=10)
        assert await first.spend("jti-1", later, "w-1", 1) is True
        assert await first.spend("jti-2", later, "w-2", 1) is True
        assert await second.spend("jti-1", later, "w-9", 1) is False
        assert await second.spend("jti-1", later, "w-1", 1) is True  # the same registration: a retry
        assert await second.spend("jti-3", later, "w-3", 1) is True
        assert await first.spend("jti-3", later, "w-9", 1) is False
    finally:
        await first.close()
        await second.close()


async def test_a_sqlite_file_open_in_one_store_is_refused_to_another_naming_the_holder(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.db"
    first = await SqliteRegistryStore.open(path)
    try:
        with pytest.raises(StoreError) as refused:
            await SqliteRegistryStore.open(path)
        assert (path.parent / "registry.db.lock").read_text() == f"{os.getpid()}\n"
    finally:
        await first.close()
    again = await SqliteRegistryStore.open(path)  # released on close
    await again.close()

    assert str(refused.value) == (
        f"{path} is in use by another scheduler (PID {os.getpid()}, holding {path}.lock): a SQLite registry "
        "serves one scheduler; stop that one, or give this one another --store (several replicas share a "
        "PostgreSQL store)"
    )


async def test_spending_a_token_again_for_the_same_registration_is_a_retry_before_and_after_a_restart(
    durable: Opener,
) -> None:
    """A write retried after an ambiguous commit (or a call retried after its answer was lost) spends the same
    token for the same registration (worker id and incarnation) again: that is no replay; another worker, or
    another incarnation of the same one, still cannot."""
    first = await durable()
    assert isinstance(first, SpentTokens)
    later = datetime.now(UTC) + timedelta(minutes=10)

    assert await first.spend("jti-1", later, "w-1", 1) is True
    assert await first.spend("jti-1", later, "w-1", 1) is True
    assert await first.spend("jti-1", later, "w-2", 1) is False
    await first.close()
    second = await durable()  # the same file, or the same database, reopened
    assert isinstance(second, SpentTokens)
    assert await second.spend("jti-1", later, "w-1", 1) is True
    assert await second.spend("jti-1", later, "w-2", 1) is False
    assert await second.spend("jti-1", later, "w-1", 2) is False  # a restarted worker is a new registration


async def test_spent_tokens_past_their_expiry_are_forgotten(durable: Opener) -> None:
    store = await durable()
    assert isinstance(store, SpentTokens)
    assert await store.spend("old", datetime.now(UTC) - timedelta(seconds=1), "w-1", 1) is True
    assert await store.spend("kept", datetime.now(UTC) + timedelta(minutes=10), "w-1", 1) is True
    # The next spend clears what expired: an expired token is refused as expired before its id is looked up.
    assert await store.spend("old", datetime.now(UTC) + timedelta(minutes=10), "w-2", 1) is True
    assert await store.spend("kept", datetime.now(UTC) + timedelta(minutes=10), "w-2", 1) is False


async def test_a_sqlite_file_of_schema_1_is_migrated_to_keep_spent_tokens(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "r.db") as db:
        for statement in SQLITE_MIGRATIONS[0]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
    store = await SqliteRegistryStore.open(tmp_path / "r.db")
    try:
        assert await store.spend("jti-1", datetime.now(UTC) + timedelta(minutes=1), "w-1", 1) is True
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (4,)


async def test_a_token_spent_before_the_spender_was_recorded_is_refused_to_every_worker(
    tmp_path: Path,
) -> None:
    """A row of schema 2 does not say who spent it: nobody may spend it again."""
    with sqlite3.connect(tmp_path / "r.db") as db:
        for statement in (*SQLITE_MIGRATIONS[0], *SQLITE_MIGRATIONS[1]):
            db.execute(statement)
        db.execute("INSERT INTO spent_tokens VALUES ('jti-1', ?)", (time.time() + 600,))
        db.execute("PRAGMA user_version = 2")
    store = await SqliteRegistryStore.open(tmp_path / "r.db")
    try:
        assert await store.spend("jti-1", datetime.now(UTC) + timedelta(minutes=10), "w-1", 1) is False
    finally:
        await store.close()


async def test_sqlite_records_its_schema_version(tmp_path: Path) -> None:
    store = await SqliteRegistryStore.open(tmp_path / "r.db")
    await store.close()
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_refuses_a_schema_from_a_newer_hodei(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "r.db") as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match=r"schema version 99, newer than this hodei's 4"):
        await SqliteRegistryStore.open(tmp_path / "r.db")


async def test_sqlite_makes_the_directory_of_its_file(tmp_path: Path) -> None:
    store = await SqliteRegistryStore.open(tmp_path / "state" / "hodei" / "r.db")
    await store.upsert([record()])
    await store.close()
    assert (tmp_path / "state" / "hodei" / "r.db").is_file()


async def test_a_closed_sqlite_store_says_so(tmp_path: Path) -> None:
    store = await SqliteRegistryStore.open(tmp_path / "r.db")
    await store.close()
    await store.close()  # idempotent
    # Its thread is gone: nothing is written after close, and a caller hears UNAVAILABLE, not a crash.
    with pytest.raises(StoreUnavailable, match=r"^UNAVAILABLE: the registry store .*r\.db is closed$"):
        await store.get("w-1")


async def test_postgres_migrates_once_and_refuses_a_newer_schema(postgres_dsn: str) -> None:
    first, second = await asyncio.gather(
        PostgresRegistryStore.open(postgres_dsn, min_size=1),
        PostgresRegistryStore.open(postgres_dsn, min_size=1),
    )
    await first.close()
    await second.close()
    db = await asyncpg.connect(postgres_dsn)
    try:
        assert await db.fetch("SELECT version FROM hodei_schema ORDER BY version") == [
            (1,),
            (2,),
            (3,),
            (4,),
            (5,),
            (6,),
        ]
        await db.execute("INSERT INTO hodei_schema (version) VALUES (8)")
    finally:
        await db.close()
    with pytest.raises(StoreError, match=r"schema version 8, newer than this hodei's 6"):
        await PostgresRegistryStore.open(postgres_dsn, min_size=1)


async def test_postgres_shares_when_each_leased_worker_was_last_heard(postgres_dsn: str) -> None:
    store = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    try:
        assert isinstance(store, SharedLeases)
        await store.upsert(
            [record("agent", 1, lease_ttl=15.0), record("pushed"), record("gone", 1, lease_ttl=9.0)]
        )
        await store.modify("gone", lambda r: replace(r, status=WorkerStatus.LOST))
        ages = {worker_id: (ttl, age) for worker_id, ttl, age in await store.lease_ages()}
        assert set(ages) == {"agent"}
        assert ages["agent"][0] == 15.0 and 0 <= ages["agent"][1] < 5
        # "gone" is stored LOST; "unknown" is not stored at all (deleted under its agent's stream, say).
        touched = await store.touch(["agent", "pushed", "gone", "unknown"])
        assert touched == TouchedLeases(lost=["gone"], gone=["unknown"])
    finally:
        await store.close()


async def test_postgres_a_stream_heard_and_closed_within_one_sync_is_not_shown_open(
    postgres_dsn: str,
) -> None:
    store = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    try:
        await store.upsert(
            [record("beat-then-left", 1, lease_ttl=15.0), record("elsewhere", 1, lease_ttl=15.0)]
        )
        await store.touch(["beat-then-left"], stream_at="a:1")
        await store.touch(["elsewhere"], stream_at="b:2")
        assert [(await store.get(w)).connected_via for w in ("beat-then-left", "elsewhere")] == ["a:1", "b:2"]
        # One sync of replica a: the agent heartbeated, then its stream closed. "elsewhere" went to b meanwhile.
        await store.touch(["beat-then-left"], stream_at="a:1", left=["beat-then-left", "elsewhere"])
        assert [(await store.get(w)).connected_via for w in ("beat-then-left", "elsewhere")] == ["", "b:2"]
        ages = {worker_id: age for worker_id, _, age in await store.lease_ages()}
        assert 0 <= ages["beat-then-left"] < 5  # it was heard all the same
    finally:
        await store.close()


async def test_a_sqlite_file_locked_by_another_writer_is_unavailable_not_broken(tmp_path: Path) -> None:
    store = SqliteRegistryStore(tmp_path / "r.db")
    store._busy_timeout_ms = 50
    await store._run(store._connect)
    try:
        other = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable) as raised:
            await store.upsert([record()])
        assert raised.value.code is ErrorCode.UNAVAILABLE and raised.value.retryable
        other.execute("ROLLBACK")
        other.close()
        assert await store.upsert([record()]) == [(UpsertOutcome.CREATED, record())]
    finally:
        await store.close()


async def test_a_postgres_that_does_not_answer_is_unavailable() -> None:
    port = free_port()  # a loopback port nobody listens on
    with pytest.raises(StoreUnavailable) as raised:
        await PostgresRegistryStore.open(f"postgresql://hodei:s3cret@127.0.0.1:{port}/registry")
    assert raised.value.message.startswith(
        f"the registry database postgresql://hodei@127.0.0.1:{port}/registry is unreachable: "
    )
    assert raised.value.retryable and "s3cret" not in str(raised.value)


async def test_sessions_killed_under_the_store_are_replaced_and_every_call_is_answered(
    postgres_dsn: str,
) -> None:
    store = await PostgresRegistryStore.open(postgres_dsn, min_size=3, max_size=3)
    db = await asyncpg.connect(postgres_dsn)
    try:
        await store.upsert([record()])
        for round_ in range(10):
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            expected = record(hostname=f"host-{round_ - 1}") if round_ else record()
            assert await store.get("w-1") == expected
            await store.modify("w-1", lambda r, n=round_: replace(r, hostname=f"host-{n}"))
        assert await store.get("w-1") == record(hostname="host-9")
    finally:
        await db.close()
        await store.close()


async def test_postgres_a_status_change_is_not_news_of_the_worker(postgres_dsn: str) -> None:
    store = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    db = await asyncpg.connect(postgres_dsn)
    try:
        await store.upsert([record("agent", 1, lease_ttl=15.0)])
        await db.execute("UPDATE hodei_workers SET last_seen = now() - interval '10 seconds'")
        await store.modify("agent", lambda r: replace(r, status=WorkerStatus.DRAINING))
        [(_, _, age)] = await store.lease_ages()
        assert age >= 10  # draining it did not extend its lease
        await store.upsert([record("agent", 2, lease_ttl=15.0)])
        [(_, _, age)] = await store.lease_ages()
        assert age < 5  # a registration is news: it did
    finally:
        await db.close()
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_concurrent_single_registrations_share_transactions_and_each_gets_its_own_exact_outcome(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        store: SqliteRegistryStore | PostgresRegistryStore = await SqliteRegistryStore.open(tmp_path / "r.db")
    else:
        store = await PostgresRegistryStore.open(request.getfixturevalue("postgres_dsn"))
    try:
        await store.upsert([record("fenced", incarnation=5)])
        before = store.registration_transactions
        calls = [[record(f"w-{n:03d}")] for n in range(300)]
        calls.append([record("fenced", incarnation=4)])  # older than the stored one: STALE, and only it
        calls.append([record("fenced", incarnation=6), record("w-000", incarnation=1)])
        outcomes = await asyncio.gather(*(store.upsert(call) for call in calls))
        for n in range(300):
            [(outcome, stored)] = outcomes[n]
            assert outcome is UpsertOutcome.CREATED
            assert stored.worker_id == f"w-{n:03d}"
        [(stale, kept)] = outcomes[300]
        assert (stale, kept.incarnation) == (UpsertOutcome.STALE, 5)
        [(newer, fenced), (again, w0)] = outcomes[301]
        assert (newer, fenced.incarnation) == (UpsertOutcome.UPDATED, 6)
        assert (again, w0.incarnation) == (UpsertOutcome.UPDATED, 1)
        assert store.registration_transactions - before < len(calls) / 4  # shared, not one each
        assert await store.count() == 301
        assert (await store.get("fenced")).incarnation == 6  # type: ignore[union-attr]
        assert (await store.get("w-000")).incarnation == 1  # type: ignore[union-attr]
    finally:
        await store.close()


# -- assignments, bound jobs and pool definitions ---------------------------------------------------------

JOB = Job(("sh", "-c", "echo 'hi' > \"out\""), {"A": "1", "LANG": "C.UTF-8", "Ü": "ü"}, 12.5)
BOUND_AT = datetime(2026, 11, 28, 3, 4, 6, 654321, tzinfo=UTC)
# Every character a client could send, and what looks like the store's own encoding.
HOSTILE_JOB = Job(
    (
        "\x00\x01\x07\x1b[31m\x1f\x7f\t\r\n",
        "x" * 65536,
        "ünïcødé 漢字 🎉 \u2028\u2029 \ud800",
        "'\"`\\ $(rm -rf /) ; DROP TABLE workers; --",
        '{"job": null, "command": ["x"], "environment": {}}',
        '\\u0000 \\n \\"',
        "",
    ),
    {"K": "v\x00\n'\"{}[]", "J": '{"timeout": 1}', "not a name=\x01": "é"},
    None,
)


def assignment(job_id: str = "job-1", worker_id: str = "w-1", **fields: object) -> Assignment:
    values: dict[str, object] = {
        "assignment_id": f"as-{job_id}",
        "incarnation": 1,
        "lease_ttl": 30.0,
        "job": JOB,
        "priority": 7,
        "bound_at": BOUND_AT,
    }
    values.update(fields)
    return Assignment(job_id=job_id, worker_id=worker_id, **values)  # type: ignore[arg-type]


def busy(worker_id: str = "w-1", job_id: str = "job-1", **fields: object) -> WorkerRecord:
    """Worker ``worker_id`` (incarnation 1 unless told) BUSY for ``job_id``, once used."""
    values: dict[str, object] = {
        "status": WorkerStatus.BUSY,
        "use_count": 1,
        "assignment": assignment(job_id, worker_id),
        "incarnation": 1,
    }
    values.update(fields)
    return record(worker_id, **values)


def bind(job_id: str, **fields: object) -> Callable[[WorkerRecord], WorkerRecord]:
    """The change that binds a worker to ``job_id`` (BUSY, one more use), as the scheduler's acquire does."""

    def change(stored: WorkerRecord) -> WorkerRecord:
        made = assignment(job_id, stored.worker_id, **fields)
        return replace(stored, status=WorkerStatus.BUSY, assignment=made, use_count=stored.use_count + 1)

    return change


def unbind(stored: WorkerRecord) -> WorkerRecord:
    return replace(stored, status=WorkerStatus.AVAILABLE, assignment=None)


def bound_jobs(store: RegistryStore) -> BoundJobs:
    assert isinstance(store, BoundJobs)
    return store


async def test_an_assignment_with_its_job_round_trips_field_for_field_through_upsert_modify_get_and_list(
    store: RegistryStore,
) -> None:
    created = busy(use_count=3)
    assert await store.upsert([created]) == [(UpsertOutcome.CREATED, created)]
    assert await store.get("w-1") == created
    assert await store.list(WorkerFilter()) == [created]
    stored = await store.get("w-1")
    assert stored is not None and stored.assignment is not None and stored.assignment.job is not None
    assert stored.assignment == assignment()
    assert (stored.assignment.job.command, dict(stored.assignment.job.environment)) == (
        ("sh", "-c", "echo 'hi' > \"out\""),
        {"A": "1", "LANG": "C.UTF-8", "Ü": "ü"},
    )
    assert (stored.assignment.job.timeout, stored.assignment.priority, stored.assignment.bound_at) == (
        12.5,
        7,
        BOUND_AT,
    )
    assert stored.use_count == 3

    # Rebound by modify: no job (the holder uses the worker itself), a bound_at given in another zone.
    other_zone = BOUND_AT.astimezone(timezone(timedelta(hours=-3, minutes=-30)))
    change = bind("job-2", job=None, lease_ttl=2.25, priority=-4, incarnation=9, bound_at=other_zone)
    before, after = await store.modify("w-1", change) or (None, None)
    expected = replace(
        created,
        assignment=assignment(
            "job-2", job=None, lease_ttl=2.25, priority=-4, incarnation=9, bound_at=BOUND_AT
        ),
        use_count=4,
    )
    assert (before, after) == (created, expected)
    assert await store.get("w-1") == expected
    assert await store.list(WorkerFilter(statuses=frozenset({WorkerStatus.BUSY}))) == [expected]
    stored = await store.get("w-1")
    assert stored is not None and stored.assignment is not None
    assert (stored.assignment.job, stored.assignment.bound_at) == (None, BOUND_AT)


async def test_a_job_without_a_timeout_or_environment_and_an_assignment_without_bound_at_round_trip(
    store: RegistryStore,
) -> None:
    bare = record(
        incarnation=1,
        assignment=assignment(job=Job(("true",)), bound_at=None, priority=0),
        use_count=0,
    )
    await store.upsert([bare])
    stored = await store.get("w-1")
    assert stored == bare
    assert stored is not None and stored.assignment is not None and stored.assignment.job is not None
    assert (stored.assignment.job.timeout, dict(stored.assignment.job.environment)) == (None, {})
    assert stored.assignment.bound_at is None


async def test_hostile_job_text_round_trips_exactly(store: RegistryStore) -> None:
    hostile = busy(assignment=assignment(job=HOSTILE_JOB))
    assert await store.upsert([hostile]) == [(UpsertOutcome.CREATED, hostile)]
    stored = await store.get("w-1")
    assert stored is not None and stored.assignment is not None and stored.assignment.job is not None
    assert stored.assignment.job.command == HOSTILE_JOB.command
    assert dict(stored.assignment.job.environment) == dict(HOSTILE_JOB.environment)
    await store.modify("w-1", unbind)
    assert await store.modify("w-1", bind("job-h", job=HOSTILE_JOB)) is not None
    found = await bound_jobs(store).find_job("job-h")
    assert found is not None and found.assignment is not None
    assert found.assignment.job == HOSTILE_JOB


async def test_use_count_round_trips_through_upsert_and_modify(store: RegistryStore) -> None:
    await store.upsert([record(use_count=41)])
    assert (await store.get("w-1")) == record(use_count=41)
    await store.modify("w-1", lambda r: replace(r, use_count=r.use_count + 1))
    assert (await store.get("w-1")) == record(use_count=42)
    assert [r.use_count for r in await store.list(WorkerFilter())] == [42]


async def test_a_refresh_keeps_the_job_and_the_uses_and_a_restart_drops_them(store: RegistryStore) -> None:
    await store.upsert([busy(use_count=5)])
    [(outcome, refreshed)] = await store.upsert([record(incarnation=1, pool="refreshed")])
    assert (outcome, refreshed) == (
        UpsertOutcome.UPDATED,
        record(
            incarnation=1, pool="refreshed", status=WorkerStatus.BUSY, assignment=assignment(), use_count=5
        ),
    )
    assert await store.get("w-1") == refreshed
    [(_, restarted)] = await store.upsert([record(incarnation=2)])
    assert restarted == record(incarnation=2)
    assert await store.get("w-1") == restarted
    assert await bound_jobs(store).find_job("job-1") is None


async def test_an_agent_back_with_a_new_incarnation_still_running_its_job_keeps_it_bound(
    store: RegistryStore,
) -> None:
    await store.upsert([busy(use_count=2)])
    back = record(incarnation=5, running_jobs=("as-job-1",))
    [(outcome, stored)] = await store.upsert([back])
    assert (outcome, stored.incarnation, stored.assignment, stored.use_count) == (
        UpsertOutcome.UPDATED,
        5,
        assignment(incarnation=5),
        2,
    )
    assert await store.get("w-1") == stored
    assert await bound_jobs(store).find_job("job-1") == stored


async def test_a_second_worker_bound_to_a_job_by_modify_is_refused_and_nothing_changes(
    store: RegistryStore,
) -> None:
    holder, other = busy("a", "job-1"), record("b", 1)
    await store.upsert([holder, other])

    with pytest.raises(JobAlreadyBound) as refused:
        await store.modify("b", bind("job-1"))

    assert refused.value.job_id == "job-1"
    assert str(refused.value) == "job job-1 is already bound to a worker"
    assert await store.get("a") == holder
    assert await store.get("b") == other
    assert await bound_jobs(store).find_job("job-1") == holder
    assert await bound_jobs(store).bound() == [holder]


async def test_a_registration_binding_a_job_another_worker_holds_refuses_its_whole_call(
    store: RegistryStore,
) -> None:
    holder = busy("a", "job-1")
    await store.upsert([holder])

    with pytest.raises(JobAlreadyBound) as refused:
        await store.upsert([record("new-1"), busy("b", "job-1"), record("new-2")])

    assert refused.value.job_id == "job-1"
    assert await store.count() == 1
    assert await store.get("a") == holder
    assert await bound_jobs(store).bound() == [holder]


async def test_a_batch_binding_two_workers_to_one_new_job_is_refused_whole(store: RegistryStore) -> None:
    with pytest.raises(JobAlreadyBound) as refused:
        await store.upsert([busy("a", "job-9"), busy("b", "job-9")])
    assert refused.value.job_id == "job-9"
    assert await store.count() == 0
    assert await bound_jobs(store).find_job("job-9") is None


async def test_a_registration_refused_for_its_job_fails_only_its_own_call(opener: Opener) -> None:
    """Registrations group committed with the refused one (SQLite, PostgreSQL) are written and answered."""
    store = await opener()
    await store.upsert([busy("holder", "job-1")])
    calls = [[record(f"w-{n:03d}")] for n in range(60)]
    calls.insert(30, [busy("thief", "job-1")])

    answers = await asyncio.gather(*(store.upsert(call) for call in calls), return_exceptions=True)

    refused = answers.pop(30)
    assert isinstance(refused, JobAlreadyBound) and refused.job_id == "job-1"
    assert [outcome for [(outcome, _)] in answers] == [UpsertOutcome.CREATED] * 60  # type: ignore[misc]
    assert await store.count() == 61
    assert await store.get("thief") is None
    assert [r.worker_id for r in await bound_jobs(store).bound()] == ["holder"]


@pytest.mark.parametrize(
    "asked",
    ["as-job-9", "", "%", "as-%", "as-job-_", "' OR 1=1 --", '"as-job-1"', "as-job-1\u0000", "x" * 10_000],
)
async def test_an_assignment_is_found_by_its_id_and_any_other_id_finds_nothing(
    store: RegistryStore, asked: str
) -> None:
    await store.upsert([busy("a", "job-1"), busy("b", "job-2"), record("c", 1)])
    found = bound_jobs(store)

    assert await found.find_assignment("as-job-2") == await store.get("b")
    assert await found.find_assignment(asked) is None  # unknown, wildcards, quotes, huge: nothing, no error
    await store.modify("a", unbind)
    assert await found.find_assignment("as-job-1") is None  # ended: no longer anybody's


async def test_unbinding_frees_the_job_for_another_worker_and_so_does_deleting(store: RegistryStore) -> None:
    await store.upsert([busy("a", "job-1"), record("b", 1)])
    await store.modify("a", unbind)
    assert await bound_jobs(store).find_job("job-1") is None

    changed = await store.modify("b", bind("job-1"))
    assert changed is not None and changed[1].assignment == assignment("job-1", "b")
    assert await bound_jobs(store).find_job("job-1") == changed[1]

    assert await store.delete("b") is True
    assert await bound_jobs(store).find_job("job-1") is None
    # A new worker registered bound to the job binds it: nobody holds it now.
    [(_, c)] = await store.upsert([busy("c", "job-1")])
    assert c.assignment == assignment("job-1", "c")
    assert await bound_jobs(store).find_job("job-1") == c
    assert await bound_jobs(store).bound() == [c]


async def test_a_job_may_move_between_two_workers_written_in_one_batch(store: RegistryStore) -> None:
    """What a write leaves stored is judged, not its order: the restarted holder lets the job go (it runs none of
    it) as a new worker written before it in the same batch takes it, and each job is bound once."""
    holder = busy("a", "job-1")
    await store.upsert([holder, busy("b", "job-2")])
    taker, restarted = busy("c", "job-1"), record("a", 2)
    assert await store.upsert([taker, restarted]) == [
        (UpsertOutcome.CREATED, taker),
        (UpsertOutcome.UPDATED, restarted),
    ]
    assert await bound_jobs(store).find_job("job-1") == taker
    assert await store.get("a") == restarted
    assert [r.worker_id for r in await bound_jobs(store).bound()] == ["b", "c"]


async def test_find_job_and_bound_list_the_bound_workers_in_worker_id_order(store: RegistryStore) -> None:
    jobs = bound_jobs(store)
    assert await jobs.find_job("job-1") is None
    assert await jobs.bound() == []
    workers = [busy("w-3", "job-x"), record("w-2", 1), busy("w-1", "job-y"), busy("w-0", "job-z")]
    await store.upsert(workers)
    assert await jobs.bound() == [workers[3], workers[2], workers[0]]
    assert await jobs.find_job("job-x") == workers[0]
    assert await jobs.find_job("job-y") == workers[2]
    assert await jobs.find_job("job") is None
    assert await jobs.find_job("") is None


async def test_pool_definitions_are_none_before_any_save_and_each_save_replaces_the_last(
    store: RegistryStore,
) -> None:
    assert isinstance(store, PoolDefinitions)
    assert await store.load_pools() is None
    await store.save_pools("pools.toml", '[pools.small]\nkind = "static"\nsize = 2\n')
    assert await store.load_pools() == ("pools.toml", '[pools.small]\nkind = "static"\nsize = 2\n')
    hostile = "# ünïcødé 漢字 🎉 '\"`\\ \x01\x1b\r\n" + "x" * 65536
    await store.save_pools("/etc/hodei/pöols 'v2'.toml", hostile)
    assert await store.load_pools() == ("/etc/hodei/pöols 'v2'.toml", hostile)
    await store.save_pools("", "")
    assert await store.load_pools() == ("", "")


async def test_a_restarted_registry_still_has_the_busy_worker_bound_to_its_job_and_the_pools(
    durable: Opener,
) -> None:
    first = await durable()
    worker = busy("w-1", "job-1", use_count=12, assignment=assignment(job=HOSTILE_JOB))
    await first.upsert([worker, record("w-2", 1, use_count=3)])
    assert isinstance(first, PoolDefinitions)
    await first.save_pools("pools.toml", "[pools.a]\n")
    await first.close()

    again = await durable()  # the same file, or the same database, reopened

    assert await again.get("w-1") == worker
    assert await bound_jobs(again).find_job("job-1") == worker
    assert await bound_jobs(again).bound() == [worker]
    assert await again.get("w-2") == record("w-2", 1, use_count=3)
    assert isinstance(again, PoolDefinitions)
    assert await again.load_pools() == ("pools.toml", "[pools.a]\n")
    with pytest.raises(JobAlreadyBound):
        await again.modify("w-2", bind("job-1"))


# Workers stored by the previous schema (no assignment, no use_count), one BUSY.
OLD_WORKERS = [record("w-1", 1, status=WorkerStatus.BUSY), record("w-2", 2, lease_ttl=15.0)]


async def found_unbound_then_bound_once(store: SqliteRegistryStore | PostgresRegistryStore) -> None:
    """The store migrated from the previous schema has :data:`OLD_WORKERS` unbound, used 0 times, no pools; and
    its unique index on the job holds."""
    assert await store.list(WorkerFilter()) == OLD_WORKERS
    assert [(r.assignment, r.use_count) for r in await store.list(WorkerFilter())] == [(None, 0), (None, 0)]
    assert await store.bound() == []
    assert await store.load_pools() is None
    await store.modify("w-1", bind("job-1"))
    with pytest.raises(JobAlreadyBound):
        await store.modify("w-2", bind("job-1"))
    assert [r.worker_id for r in await store.bound()] == ["w-1"]


async def test_a_sqlite_file_of_schema_3_holding_workers_is_migrated_to_unbound_workers_used_zero_times(
    tmp_path: Path,
) -> None:
    with sqlite3.connect(tmp_path / "r.db") as db:
        for statements in SQLITE_MIGRATIONS[:3]:
            for statement in statements:
                db.execute(statement)
        placeholders = ", ".join("?" for _ in COLUMNS[:16])
        for each in OLD_WORKERS:
            row = to_row(each, lambda moment: None if moment is None else moment.isoformat())[:16]
            db.execute(f"INSERT INTO workers ({', '.join(COLUMNS[:16])}) VALUES ({placeholders})", row)
        db.execute("PRAGMA user_version = 3")

    store = await SqliteRegistryStore.open(tmp_path / "r.db")
    try:
        await found_unbound_then_bound_once(store)
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (4,)


async def test_a_postgres_database_of_schema_4_holding_workers_is_migrated_to_unbound_workers_used_zero_times(
    postgres_dsn: str,
) -> None:
    db = await asyncpg.connect(postgres_dsn)
    try:
        await db.execute(
            "CREATE TABLE hodei_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for number, statements in enumerate(POSTGRES_MIGRATIONS[:4], start=1):
            for statement in statements:
                await db.execute(statement)
            await db.execute("INSERT INTO hodei_schema (version) VALUES ($1)", number)
        placeholders = ", ".join(f"${n}" for n in range(1, 17))
        for each in OLD_WORKERS:
            row = to_row(each, lambda moment: moment)[:16]
            await db.execute(
                f"INSERT INTO hodei_workers ({', '.join(COLUMNS[:16])}) VALUES ({placeholders})", *row
            )

        store = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
        try:
            await found_unbound_then_bound_once(store)
        finally:
            await store.close()
        assert await db.fetch("SELECT version FROM hodei_schema ORDER BY version") == [
            (n,) for n in range(1, 7)
        ]
    finally:
        await db.close()


async def test_the_postgres_row_type_has_the_columns_written_in_order_with_the_tables_types(
    postgres_dsn: str,
) -> None:
    """The statements write rows as one array of ``hodei_worker_row``: its attributes are COLUMNS, in order,
    each of its column's type in the table (JSON as text, cast in the statement)."""
    store = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    db = await asyncpg.connect(postgres_dsn)
    try:
        query = (
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute AS a "
            "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        )
        row_type = [tuple(r) for r in await db.fetch(query, "hodei_worker_row")]
        table = dict(tuple(r) for r in await db.fetch(query, "hodei_workers"))
        assert [name for name, _ in row_type] == list(COLUMNS)
        assert row_type == [
            (name, "text" if table[name] == "jsonb" or name == "assignment" else table[name])
            for name in COLUMNS
        ]
    finally:
        await db.close()
        await store.close()


async def test_postgres_pool_definitions_saved_by_one_replica_are_read_by_another(postgres_dsn: str) -> None:
    first = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    second = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    try:
        await first.save_pools("a.toml", "[pools.a]\n")
        assert await second.load_pools() == ("a.toml", "[pools.a]\n")
        await second.save_pools("b.toml", "[pools.b]\n")
        assert await first.load_pools() == ("b.toml", "[pools.b]\n")
    finally:
        await first.close()
        await second.close()


async def test_two_handles_racing_to_bind_two_workers_to_one_job_bind_exactly_one(opener: Opener) -> None:
    one, two = await opener(), await opener()
    rounds = 15
    await one.upsert([record(f"{side}-{n}", 1) for n in range(rounds) for side in "ab"])
    for n in range(rounds):
        answers = await asyncio.gather(
            one.modify(f"a-{n}", bind(f"job-{n}")),
            two.modify(f"b-{n}", bind(f"job-{n}")),
            return_exceptions=True,
        )
        refused = [a for a in answers if isinstance(a, BaseException)]
        assert (
            len(refused) == 1 and isinstance(refused[0], JobAlreadyBound) and refused[0].job_id == f"job-{n}"
        )
        [winner] = [a[1] for a in answers if isinstance(a, tuple)]
        assert await bound_jobs(two).find_job(f"job-{n}") == winner
    assert len(await bound_jobs(one).bound()) == rounds


async def test_postgres_a_job_bound_by_another_replica_after_the_write_looked_is_refused_by_the_index(
    postgres_dsn: str,
) -> None:
    """The write looked the job up before the other replica committed: the unique index refuses it, and that is
    JobAlreadyBound at once — not a race run again, not an unavailable store."""
    store = await PostgresRegistryStore.open(postgres_dsn, min_size=1)
    other = await asyncpg.connect(postgres_dsn)
    try:
        await store.upsert([record("a", 1), record("b", 1)])
        their = other.transaction()
        await their.start()
        await other.execute("UPDATE hodei_workers SET job_id = 'job-1' WHERE worker_id = 'a'")
        binding = asyncio.create_task(store.modify("b", bind("job-1")))

        async def waiting_on_their_lock() -> bool:
            # Inside a transaction PostgreSQL reads the activity once and then answers from that snapshot:
            # each look takes a fresh one.
            await other.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await other.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            return bool(waiting == 1)

        await wait_for(waiting_on_their_lock)
        await their.commit()

        with pytest.raises(JobAlreadyBound) as refused:
            await binding
        assert refused.value.job_id == "job-1"
        assert await store.get("b") == record("b", 1)
    finally:
        await other.close()
        await store.close()


async def test_a_closed_memory_store_forgets_its_bound_jobs_and_pools() -> None:
    store = MemoryRegistryStore()
    await store.upsert([busy()])
    await store.save_pools("pools.toml", "[pools.a]\n")
    await store.close()
    assert (await store.find_job("job-1"), await store.bound(), await store.load_pools()) == (None, [], None)
    await store.upsert([busy()])  # the job's index went with the records: binding it again is no conflict
    assert await store.find_job("job-1") == busy()
