"""Real stores failing under a running scheduler: every RPC answers UNAVAILABLE, the sweeper keeps sweeping.

SQLite: a registry file damaged under the scheduler (then repaired), and one whose write lock another process
holds. PostgreSQL: a database made read-only (as after a failover to a replica) and a role out of connections.
Each RPC is called with the raw stub, so that the status code is the server's own (no client retries).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import grpc
import pytest

from hodei.domain import UpsertOutcome, WorkerCapabilities, WorkerRecord, WorkerStatus, WorkerType
from hodei.errors import ErrorCode, StoreRefusedData
from hodei.lifecycle import LivenessConfig
from hodei.ports import RegistryStore
from hodei.stores import PostgresRegistryStore
from hodei.stores._sqlite import SqliteRegistryStore
from hodei.testing import EmbeddedScheduler
from hodei.transport._codec import pb, pb_grpc
from tests.helpers import make_worker, wait_for
from tests.scheduling import agent, mass_silence_tells_the_truth_and_paces_removals

pytestmark = pytest.mark.timeout(120)

FAST = LivenessConfig(
    heartbeat_interval=0.1, lease_ttl=0.3, lost_grace=60.0, recovery_window=0.0, sweep_interval=0.05
)


@dataclass
class Calls:
    """The scheduler's RPCs that reach the store, each answering its status code (OK when it succeeded)."""

    stub: pb_grpc.SchedulerServiceStub

    async def code(self, call: Awaitable[object]) -> grpc.StatusCode:
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    async def every_code(self) -> dict[str, grpc.StatusCode]:
        request = pb.RegisterWorkerRequest(
            worker_id="pushed-2",
            capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=64),
            metadata=pb.WorkerMetadata(worker_type="docker"),
            incarnation=1,
        )
        return {
            "GetWorker": await self.code(
                self.stub.GetWorker(pb.GetWorkerRequest(worker_id="pushed"), timeout=10)
            ),
            "ListWorkers": await self.code(self.stub.ListWorkers(pb.ListWorkersRequest(), timeout=10)),
            "RegisterWorker": await self.code(self.stub.RegisterWorker(request, timeout=10)),
            "RegisterWorkers": await self.code(
                self.stub.RegisterWorkers(pb.RegisterWorkersRequest(workers=[request]), timeout=10)
            ),
            "UnregisterWorker": await self.code(
                self.stub.UnregisterWorker(pb.UnregisterWorkerRequest(worker_id="pushed"), timeout=10)
            ),
            "DrainWorker": await self.code(
                self.stub.DrainWorker(pb.DrainWorkerRequest(worker_id="pushed"), timeout=10)
            ),
            "ShutdownWorker": await self.code(
                self.stub.ShutdownWorker(pb.ShutdownWorkerRequest(worker_id="pushed"), timeout=10)
            ),
        }


def failures(scheduler: EmbeddedScheduler) -> float:
    value = scheduler.metrics.registry.get_sample_value(
        "hodei_liveness_sweep_failures_total", {"error": "unavailable"}
    )
    assert value is not None
    return value


async def _true(condition: Callable[[], bool]) -> bool:
    return condition()


async def lost(scheduler: EmbeddedScheduler, worker_id: str) -> bool:
    record = await scheduler.get_worker(worker_id)
    return record is not None and record.status is WorkerStatus.LOST


@pytest.fixture
async def running() -> AsyncIterator[Callable[[RegistryStore], Awaitable[tuple[EmbeddedScheduler, Calls]]]]:
    """A scheduler on the given store, sweeping fast, with a pushed worker and an agent that said hello and left
    (its lease runs out 0.3 s later): the sweep that finds it silent writes to the store."""
    started: list[EmbeddedScheduler] = []

    async def start(store: RegistryStore) -> tuple[EmbeddedScheduler, Calls]:
        scheduler = await EmbeddedScheduler(store=store, liveness=FAST).start()
        started.append(scheduler)
        await scheduler.add_worker(make_worker("pushed"))
        _, session = await scheduler.scheduler.hello(agent("leaving"))
        scheduler.scheduler.goodbye(session)
        return scheduler, Calls(pb_grpc.SchedulerServiceStub(scheduler.channel()))

    yield start
    for scheduler in started:
        await scheduler.stop()


EVERY_CALL_UNAVAILABLE = dict.fromkeys(
    [
        "GetWorker",
        "ListWorkers",
        "RegisterWorker",
        "RegisterWorkers",
        "UnregisterWorker",
        "DrainWorker",
        "ShutdownWorker",
    ],
    grpc.StatusCode.UNAVAILABLE,
)


# --- SQLite ----------------------------------------------------------------------------------------------


async def test_a_damaged_sqlite_registry_answers_unavailable_to_every_call_and_the_sweeper_outlives_it(
    tmp_path: Path, running: Callable[[RegistryStore], Awaitable[tuple[EmbeddedScheduler, Calls]]]
) -> None:
    path = tmp_path / "registry.db"
    scheduler, calls = await running(await SqliteRegistryStore.open(path))
    with sqlite3.connect(path) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    healthy = path.read_bytes()
    path.write_bytes(b"\0" * 100 + healthy[100:])  # the header: "file is not a database" (a DatabaseError)
    before = failures(scheduler)

    assert await calls.every_code() == EVERY_CALL_UNAVAILABLE
    # A damaged file stays damaged for the connection that saw it (repairing it takes a restart), but the
    # sweeper keeps trying, tick after tick, and the scheduler stays healthy.
    await wait_for(lambda: _true(lambda: failures(scheduler) >= before + 3), timeout=10)
    assert scheduler.scheduler.healthy


async def test_a_write_locked_sqlite_registry_answers_unavailable_and_the_sweeper_writes_once_it_is_free(
    tmp_path: Path, running: Callable[[RegistryStore], Awaitable[tuple[EmbeddedScheduler, Calls]]]
) -> None:
    path = tmp_path / "registry.db"
    scheduler, calls = await running(await SqliteRegistryStore.open(path, busy_timeout=0.1))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        before = failures(scheduler)
        code = await calls.code(
            calls.stub.UnregisterWorker(pb.UnregisterWorkerRequest(worker_id="pushed"), timeout=10)
        )
        assert code is grpc.StatusCode.UNAVAILABLE
        # The agent's lease ran out: each sweep tries to write it LOST, and fails.
        await wait_for(lambda: _true(lambda: failures(scheduler) >= before + 3), timeout=10)
        assert scheduler.scheduler.healthy
        assert not await lost(scheduler, "leaving")
    finally:
        other.execute("ROLLBACK")
        other.close()
    await wait_for(lambda: lost(scheduler, "leaving"), timeout=10)
    assert await scheduler.get_worker("pushed") is not None


async def test_a_mass_silence_of_1000_leased_workers_on_sqlite_makes_none_available_and_paces_only_removals(
    tmp_path: Path,
) -> None:
    store = await SqliteRegistryStore.open(tmp_path / "registry.db")
    try:
        await mass_silence_tells_the_truth_and_paces_removals(store)
    finally:
        await store.close()


# --- PostgreSQL ------------------------------------------------------------------------------------------


async def admin(dsn: str) -> asyncpg.Connection:
    """A superuser's connection to the cluster's maintenance database (not the registry's)."""
    parts = urllib.parse.urlsplit(dsn)
    return await asyncpg.connect(urllib.parse.urlunsplit(parts._replace(path="/postgres")))


def database_of(dsn: str) -> str:
    return urllib.parse.urlsplit(dsn).path.lstrip("/")


async def cut_sessions(db: asyncpg.Connection, database: str) -> None:
    """End every session on the registry's database: the pool reconnects, under the new settings."""
    await db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )


async def test_a_postgres_registry_made_read_only_by_a_failover_answers_unavailable_and_the_sweeper_outlives_it(
    postgres_dsn: str, running: Callable[[RegistryStore], Awaitable[tuple[EmbeddedScheduler, Calls]]]
) -> None:
    scheduler, calls = await running(await PostgresRegistryStore.open(postgres_dsn))
    database = database_of(postgres_dsn)
    db = await admin(postgres_dsn)
    try:
        await db.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        await cut_sessions(db, database)
        before = failures(scheduler)

        codes = await calls.every_code()
        # What only reads still works; every write is refused as the store's trouble, UNAVAILABLE.
        assert codes == EVERY_CALL_UNAVAILABLE | {
            "GetWorker": grpc.StatusCode.OK,
            "ListWorkers": grpc.StatusCode.OK,
            "ShutdownWorker": grpc.StatusCode.OK,
        }
        await wait_for(lambda: _true(lambda: failures(scheduler) >= before + 3), timeout=10)
        assert scheduler.scheduler.healthy
        assert not await lost(scheduler, "leaving")  # the sweep could not write it

        await db.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await cut_sessions(db, database)
        await wait_for(lambda: lost(scheduler, "leaving"), timeout=10)
        assert scheduler.scheduler.healthy
    finally:
        await db.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await db.close()


async def test_a_postgres_registry_out_of_connections_answers_unavailable_and_the_sweeper_outlives_it(
    postgres_dsn: str, running: Callable[[RegistryStore], Awaitable[tuple[EmbeddedScheduler, Calls]]]
) -> None:
    database = database_of(postgres_dsn)
    role = f"{database}_app"
    db = await admin(postgres_dsn)
    store: PostgresRegistryStore | None = None
    try:
        await db.execute(f'CREATE ROLE "{role}" LOGIN')
        await db.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
        parts = urllib.parse.urlsplit(postgres_dsn)
        as_role = urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        store = await PostgresRegistryStore.open(as_role)
        scheduler, calls = await running(store)
        await db.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
        await cut_sessions(db, database)  # "too many connections for role": TooManyConnectionsError
        before = failures(scheduler)

        assert await calls.every_code() == EVERY_CALL_UNAVAILABLE
        await wait_for(lambda: _true(lambda: failures(scheduler) >= before + 3), timeout=10)
        assert scheduler.scheduler.healthy

        await db.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        await wait_for(lambda: lost(scheduler, "leaving"), timeout=10)
        assert scheduler.scheduler.healthy
        await scheduler.stop()
    finally:
        if store is not None:
            await store.close()
        await cut_sessions(db, database)
        registry = await asyncpg.connect(postgres_dsn)  # as the superuser, in the registry's database
        try:
            await registry.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
        finally:
            await registry.close()
        await db.execute(f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
        await db.execute(f'DROP ROLE IF EXISTS "{role}"')
        await db.close()


# --- data a store cannot hold ----------------------------------------------------------------------------


def unholdable(worker_id: str, **fields: object) -> WorkerRecord:
    return replace(
        WorkerRecord(
            worker_id=worker_id,
            worker_type=WorkerType.DOCKER,
            capabilities=WorkerCapabilities(1, 64, 0, 0),
            incarnation=1,
        ),
        **fields,  # type: ignore[arg-type]
    )


UNHOLDABLE = {
    "incarnation beyond 64 bits": {"incarnation": 2**63},
    "NUL in a label value": {"labels": {"zone": "eu\0west"}},
}


@pytest.mark.parametrize("fields", UNHOLDABLE.values(), ids=UNHOLDABLE.keys())
@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_data_a_sql_store_cannot_hold_is_refused_as_invalid_and_the_store_goes_on(
    engine: str, fields: dict[str, object], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store: RegistryStore
    if engine == "sqlite":
        store = await SqliteRegistryStore.open(tmp_path / "registry.db")
    else:
        store = await PostgresRegistryStore.open(request.getfixturevalue("postgres_dsn"))
    try:
        bad = unholdable("bad", **fields)
        try:
            await store.upsert([bad])
        except StoreRefusedData as error:
            assert error.code is ErrorCode.INVALID_ARGUMENT
            assert not error.retryable
        else:  # SQLite keeps a NUL in text as it is: then it must give it back as it was
            assert (engine, fields) == ("sqlite", UNHOLDABLE["NUL in a label value"])
            assert await store.get("bad") == bad
        good = unholdable("good")
        assert await store.upsert([good]) == [(UpsertOutcome.CREATED, good)]
    finally:
        await store.close()
