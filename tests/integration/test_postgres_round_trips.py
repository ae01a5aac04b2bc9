"""What one group of registrations asks of PostgreSQL: new workers in one statement (one round trip, one commit);
a group that meets workers it already holds merged under row locks in one transaction (one commit either way); a
released connection is not reset; a replica frozen inside a transaction does not hold its rows for ever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from hodei.domain import Assignment, UpsertOutcome, WorkerRecord, WorkerStatus
from hodei.ports import WorkerFilter
from hodei.stores import PostgresRegistryStore
from hodei.stores import _postgres as postgres_store
from hodei.stores._postgres_statistics import _OUTGROWN
from tests.helpers import MOMENT, stored_worker, wait_for


def worker(worker_id: str, incarnation: int = 1) -> WorkerRecord:
    return stored_worker(worker_id, incarnation, lease_ttl=30.0)


@dataclass
class Logged:
    store: PostgresRegistryStore
    queries: list[str] = field(default_factory=list)

    def heard(self, logged: Any) -> None:
        if not logged.query.startswith(
            ("ANALYZE", _OUTGROWN)
        ):  # the store's statistics check, not the group's
            self.queries.append(" ".join(logged.query.split()[:3]))

    def said(self) -> list[str]:
        said, self.queries = self.queries, []
        return said


@pytest.fixture
async def logged(postgres_dsn: str) -> AsyncIterator[Logged]:
    """A store with one pooled connection, whose every statement is logged (its first three words)."""
    store = await PostgresRegistryStore.open(postgres_dsn, min_size=1, max_size=1)
    found = Logged(store)
    async with store._pool.acquire() as db:
        db.add_query_logger(found.heard)
    await store.upsert([worker("warm")])
    found.said()
    yield found
    await store.close()


async def test_a_group_of_new_workers_is_one_statement_and_its_connection_is_not_reset(
    logged: Logged,
) -> None:
    records = [worker(f"w-{n:02d}") for n in reversed(range(50))]
    assert await logged.store.upsert(records) == [(UpsertOutcome.CREATED, r) for r in records]
    assert logged.said() == ["INSERT INTO hodei_workers"]  # no BEGIN, no COMMIT: it commits alone
    assert await logged.store.count() == 51


async def test_a_group_that_meets_a_stored_worker_writes_nothing_first_and_is_merged_under_row_locks(
    logged: Logged,
) -> None:
    await logged.store.upsert([worker("known", 3)])
    await logged.store.upsert([worker("known-older", 2)])
    logged.said()
    records = [worker("new-1"), worker("known", 4), worker("new-2"), worker("known-older", 1)]

    outcomes = await logged.store.upsert(records)

    assert [(outcome, r.worker_id, r.incarnation) for outcome, r in outcomes] == [
        (UpsertOutcome.CREATED, "new-1", 1),
        (UpsertOutcome.UPDATED, "known", 4),
        (UpsertOutcome.CREATED, "new-2", 1),
        (UpsertOutcome.STALE, "known-older", 2),
    ]
    assert logged.said() == [
        "INSERT INTO hodei_workers",  # refused whole: two of them are stored
        "BEGIN;",
        "SELECT worker_id, worker_type,",  # ... FOR UPDATE, in worker id order
        "INSERT INTO hodei_workers",
        "UPDATE hodei_workers AS",
        "COMMIT;",
    ]
    stored = {r.worker_id: r.incarnation for r in await logged.store.list(WorkerFilter())}
    assert stored == {"known": 4, "known-older": 2, "new-1": 1, "new-2": 1, "warm": 1}


async def test_after_a_group_met_stored_workers_the_next_go_to_the_lock_until_one_finds_none_stored(
    logged: Logged,
) -> None:
    await logged.store.upsert([worker("known")])
    await logged.store.upsert([worker("known"), worker("a")])  # re-registers one: merged under locks
    logged.said()
    assert await logged.store.upsert([worker("b"), worker("c")]) == [
        (UpsertOutcome.CREATED, worker("b")),
        (UpsertOutcome.CREATED, worker("c")),
    ]
    assert logged.said() == [
        "BEGIN;",
        "SELECT worker_id, worker_type,",
        "INSERT INTO hodei_workers",
        "COMMIT;",
    ]
    assert await logged.store.upsert([worker("d")]) == [(UpsertOutcome.CREATED, worker("d"))]
    assert logged.said() == ["INSERT INTO hodei_workers"]  # the last found none stored: one statement again


@pytest.mark.parametrize("shape", ["twice in one group", "bound to a job"])
async def test_a_group_that_names_a_worker_twice_or_binds_a_job_goes_straight_to_the_locked_transaction(
    logged: Logged, shape: str
) -> None:
    if shape == "twice in one group":
        records = [worker("a", 1), worker("a", 2)]
    else:
        bound = Assignment(
            assignment_id="as-1",
            job_id="job-1",
            worker_id="a",
            incarnation=1,
            lease_ttl=30.0,
            bound_at=MOMENT,
        )
        records = [replace(worker("a"), status=WorkerStatus.BUSY, assignment=bound)]

    outcomes = await logged.store.upsert(records)

    assert outcomes[0][0] is UpsertOutcome.CREATED
    said = logged.said()
    assert said[:2] == ["BEGIN;", "SELECT worker_id, worker_type,"] and said[-1] == "COMMIT;"
    assert said.count("INSERT INTO hodei_workers") == 1


async def test_two_replicas_inserting_the_same_new_workers_at_once_create_each_exactly_once(
    postgres_dsn: str,
) -> None:
    one = await PostgresRegistryStore.open(postgres_dsn, min_size=1, max_size=1)
    two = await PostgresRegistryStore.open(postgres_dsn, min_size=1, max_size=1)
    try:
        for round_ in range(10):
            ids = [f"r{round_}-{n:02d}" for n in range(40)]
            first, second = await asyncio.gather(
                one.upsert([worker(i) for i in ids[:30]]),
                two.upsert([worker(i) for i in reversed(ids[10:])]),  # 20 of them in both, in the other order
            )
            created = [r.worker_id for o, r in [*first, *second] if o is UpsertOutcome.CREATED]
            assert sorted(created) == ids  # each once, by whichever replica's statement came first
            assert {o for o, _ in [*first, *second]} <= {UpsertOutcome.CREATED, UpsertOutcome.UPDATED}
        assert await one.count() == 400
    finally:
        await one.close()
        await two.close()


async def test_the_stores_sessions_end_a_transaction_left_idle_after_a_minute(postgres_dsn: str) -> None:
    store = await PostgresRegistryStore.open(postgres_dsn, min_size=1, max_size=1)
    try:
        async with store._pool.acquire() as db:
            assert await db.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
    finally:
        await store.close()


async def test_a_replica_frozen_inside_a_transaction_lets_go_of_its_rows_after_the_idle_timeout(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_store, "IDLE_IN_TRANSACTION", 0.5)
    frozen = await PostgresRegistryStore.open(postgres_dsn, min_size=1, max_size=2)
    other = await PostgresRegistryStore.open(postgres_dsn, min_size=1, max_size=1)
    try:
        await other.upsert([worker("w", 1)])
        db = await frozen._pool.acquire()
        pid = db.get_server_pid()
        # A group stopped between its row locks and its write: the transaction stays open, idle.
        await db.execute("BEGIN")
        await db.execute("SELECT worker_id FROM hodei_workers WHERE worker_id = 'w' FOR UPDATE")
        # The other replica's registration of that worker waits for the lock until PostgreSQL ends the frozen
        # session, then goes on.
        [(outcome, stored)] = await asyncio.wait_for(other.upsert([worker("w", 2)]), 30)
        assert (outcome, stored.incarnation) == (UpsertOutcome.UPDATED, 2)

        async def ended() -> bool:
            return not await other._read("SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid)

        await wait_for(ended, timeout=10)
    finally:
        frozen._pool.terminate()  # its one session was ended under it
        await frozen.close()
        await other.close()
