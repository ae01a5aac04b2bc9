"""Two Scheduler replicas on one real PostgreSQL registry: a takeover starts from the store's truth.

Each replica has its own store connection pool and its own PostgresLeadership, as two processes would; their
ticks are driven by the test on a fake monotonic clock. The lease ages come from PostgreSQL's clock, on which
only milliseconds pass: a worker heard through the database looks freshly heard at every tick, so how soon a
silent one is LOST after a takeover is measured by tests/integration/test_replicas.py, with real processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from hodei.domain import ResourceUsage, WorkerStatus
from hodei.lifecycle import LivenessConfig, WorkerEventKind
from hodei.scheduler._core import Scheduler
from hodei.stores import PostgresLeadership, PostgresRegistryStore
from hodei.stores._postgres_leadership import LEADER_LOCK
from hodei.testing import FakeClock
from tests.helpers import wait_for
from tests.scheduling import EventLog, agent, status

pytestmark = pytest.mark.timeout(60)

LIVENESS = LivenessConfig(
    heartbeat_interval=1.0, lease_ttl=3.0, lost_grace=60.0, recovery_window=0.0, sweep_interval=1.0
)
STALE = [f"moved-{index:02d}" for index in range(12)]

StartReplica = Callable[[], Awaitable[Scheduler]]


def leased(replica: Scheduler) -> list[str]:
    """Which of the test's workers hold a lease in the replica's own table."""
    return [worker_id for worker_id in (*STALE, "steady", "victim") if worker_id in replica.monitor.leases]


@pytest.fixture
async def start_replica(postgres_dsn: str) -> AsyncIterator[tuple[FakeClock, StartReplica]]:
    clock = FakeClock()
    started: list[tuple[Scheduler, PostgresRegistryStore]] = []

    async def start() -> Scheduler:
        store = await PostgresRegistryStore.open(postgres_dsn)
        replica = Scheduler(
            store,
            liveness=LIVENESS,
            leadership=PostgresLeadership(postgres_dsn),
            clock=clock.wall,
            monotonic=clock.monotonic,
        )
        await replica.start(sweep=False)
        started.append((replica, store))
        return replica

    yield clock, start
    for replica, store in started:
        await replica.stop()
        await store.close()


async def test_a_new_leader_forgets_the_leases_it_renewed_as_a_follower_and_sees_no_mass_silence(
    start_replica: tuple[FakeClock, StartReplica],
) -> None:
    clock, start = start_replica
    a, b = await start(), await start()
    await a.tick(0.0)
    await b.tick(0.0)
    assert (a.leading, b.leading) == (True, False)

    # Twelve agents said hello to the follower B at 0 and left it (unregistered through A by the control
    # plane, their streams closed): B still holds the leases it renewed for them, which ran out at 3.
    for worker_id in STALE:
        _, session = await b.hello(agent(worker_id))
        await a.unregister(worker_id, reason="scaled down")
        b.goodbye(session)
    _, steady = await b.hello(agent("steady"))
    _, victim = await a.hello(agent("victim"))
    events = EventLog(b)

    for moment in (50.0, 99.0):  # a long while later: both agents still heard, through their replicas
        clock.now = moment
        await b.heartbeat(steady, ResourceUsage())
        await a.heartbeat(victim, ResourceUsage())
        await a.tick(moment)
        await b.tick(moment)
    assert leased(b) == [*STALE, "steady"]

    await a.stop()  # A dies
    clock.now = 100.0
    await b.heartbeat(steady, ResourceUsage())
    await b.tick(100.0)

    assert b.leading
    assert leased(b) == ["steady", "victim"]
    assert not b.monitor.slowed
    assert WorkerEventKind.EXPIRY_SLOWED not in [kind for kind, _ in await events.kinds()]

    await b.tick(101.0)
    assert leased(b) == ["steady", "victim"]
    assert await status(b, "steady") is WorkerStatus.AVAILABLE
    assert await status(b, "victim") is WorkerStatus.AVAILABLE


# --- the leader lock itself ------------------------------------------------------------------------------


async def test_a_leader_that_stops_hands_the_lock_over_at_once(postgres_dsn: str) -> None:
    # The stopping leader lets go of the lock before its session ends, so the next replica to ask leads at its
    # very next round, every time (ending the session alone releases it only once the database has seen it end).
    for _ in range(20):
        first, second = PostgresLeadership(postgres_dsn), PostgresLeadership(postgres_dsn)
        assert await first.acquire()
        assert not await second.acquire()

        await first.release()

        assert (first.leading, await second.acquire()) == (False, True)
        await second.release()


async def test_a_leader_whose_session_was_ended_stops_without_error_and_the_lock_is_free(
    postgres_dsn: str,
) -> None:
    first, second = PostgresLeadership(postgres_dsn), PostgresLeadership(postgres_dsn)
    assert await first.acquire()
    admin = await asyncpg.connect(postgres_dsn)
    try:
        # The database ends the leader's session under it (an administrator, a failover, a network cut).
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = $1 AND objid = $2",
            LEADER_LOCK >> 32,
            LEADER_LOCK & 0xFFFFFFFF,
        )
        assert ended == 1

        await first.release()  # the unlock fails on the dead session; stopping goes on

        assert first.leading is False
        await wait_for(second.acquire, timeout=10.0)
    finally:
        await second.release()
        await admin.close()
