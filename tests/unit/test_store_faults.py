"""The scheduler under store faults: the store commits, then memory follows; and a mass silence tells the truth.

Each store here is a :class:`~hodei.testing.FaultyStore` over the memory store, whose Nth write fails or stalls;
time is a fake clock and the liveness monitor is swept explicitly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hodei.domain import Assignment, ResourceUsage, WorkerCapabilities, WorkerRecord, WorkerStatus, WorkerType
from hodei.errors import SchedulerUnavailable
from hodei.lifecycle import CommandKind, WorkerCommand
from hodei.ports import BoundJobs, PoolDefinitions
from hodei.scheduler._core import AgentSession, Scheduler
from hodei.stores._memory import MemoryRegistryStore
from hodei.testing import FakeClock, FaultyStore
from tests.helpers import wait_for
from tests.scheduling import (
    LIVENESS,
    agent,
    mass_silence_tells_the_truth_and_paces_removals,
    pending,
    status,
    sweep_through,
)

# LIVENESS: a 3 s lease renewed every second; a silent worker is LOST at its lease's end plus one heartbeat
# interval (4 s after its last heartbeat) and removed 5 s after that. Sweeps every second.


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FaultyStore:
    return FaultyStore(MemoryRegistryStore())


@pytest.fixture
async def scheduler(store: FaultyStore, clock: FakeClock) -> AsyncIterator[Scheduler]:
    started = Scheduler(store, liveness=LIVENESS, clock=clock.wall, monotonic=clock.monotonic)
    await started.start(sweep=False)
    yield started
    await started.stop()


async def lost_agent(scheduler: Scheduler, clock: FakeClock) -> AgentSession:
    """An agent (write 1: its hello) silent until the sweep at 4 s made it LOST (write 2)."""
    _, session = await scheduler.hello(agent("a1"))
    await sweep_through(scheduler, clock, 4.0)
    assert await status(scheduler, "a1") is WorkerStatus.LOST
    return session


def async_true(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


# --- FaultyStore itself -------------------------------------------------------------------------------------


async def test_a_faulty_store_fails_exactly_its_nth_write_before_it_reaches_the_store_and_passes_reads() -> (
    None
):
    store = FaultyStore(MemoryRegistryStore(), fail_on=2, error=lambda: RuntimeError("boom"))
    scheduler = Scheduler(store, liveness=LIVENESS)
    await scheduler.register(agent("a1"))  # write 1

    with pytest.raises(RuntimeError, match=r"^boom$"):
        await scheduler.register(agent("a2"))  # write 2: not written
    await scheduler.register(agent("a3"))  # write 3

    assert store.writes == ["upsert", "upsert", "upsert"]
    assert [record.worker_id for record in (await scheduler.list()).workers] == ["a1", "a3"]
    assert await store.count() == 2
    assert await store.count_by_status() == {WorkerStatus.AVAILABLE: 2}


async def test_a_stalled_write_commits_after_release_even_when_its_caller_was_cancelled() -> None:
    store = FaultyStore(MemoryRegistryStore(), stall_on=1)
    scheduler = Scheduler(store, liveness=LIVENESS)
    call = asyncio.create_task(scheduler.register(agent("a1")))
    await store.stalled()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await store.get("a1") is None

    store.release()
    await store.settled()

    record = await store.get("a1")
    assert record is not None and record.status is WorkerStatus.AVAILABLE


async def test_a_faulty_store_passes_bound_jobs_and_pool_reads_through_and_numbers_pool_saves_as_writes() -> (
    None
):
    inner = MemoryRegistryStore()
    store = FaultyStore(inner, fail_on=3)
    assert isinstance(store, BoundJobs) and isinstance(store, PoolDefinitions)
    bound = WorkerRecord(
        worker_id="w-1",
        worker_type=WorkerType.PROCESS,
        capabilities=WorkerCapabilities(1, 256, 1024, 0),
        status=WorkerStatus.BUSY,
        incarnation=1,
        assignment=Assignment(assignment_id="as-1", job_id="job-1", worker_id="w-1", incarnation=1),
        use_count=1,
    )
    await store.upsert([bound])  # write 1
    await store.save_pools("pools.toml", "[pools.a]\n")  # write 2

    with pytest.raises(SchedulerUnavailable, match=r"failed on purpose"):
        await store.save_pools("pools.toml", "[pools.b]\n")  # write 3: not written

    assert store.writes == ["upsert", "save_pools", "save_pools"]
    assert await store.load_pools() == await inner.load_pools() == ("pools.toml", "[pools.a]\n")
    assert await store.find_job("job-1") == bound
    assert await store.find_job("job-2") is None
    assert await store.bound() == [bound]


# --- the hello -------------------------------------------------------------------------------------------


async def test_a_hello_cancelled_while_its_write_stalls_leaves_a_worker_found_lost_once_the_write_commits(
    scheduler: Scheduler, store: FaultyStore, clock: FakeClock
) -> None:
    store.stall_write(1)
    hello = asyncio.create_task(scheduler.hello(agent("a1")))
    await store.stalled()
    hello.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hello
    clock.now = 0.5
    store.release()
    await store.settled()
    await wait_for(async_true(lambda: "a1" in scheduler.monitor.leases))  # followed once the write committed

    # The registration committed after its agent went away: AVAILABLE in the store, no session, but a lease.
    assert await status(scheduler, "a1") is WorkerStatus.AVAILABLE
    assert "a1" not in scheduler.sessions
    assert scheduler.monitor.leases.expires_at("a1") == 3.5

    await sweep_through(scheduler, clock, 4.5)

    assert await status(scheduler, "a1") is WorkerStatus.LOST


async def test_a_hello_whose_write_fails_leaves_no_session_and_no_lease(
    scheduler: Scheduler, store: FaultyStore
) -> None:
    store.fail_write(1)

    with pytest.raises(SchedulerUnavailable):
        await scheduler.hello(agent("a1"))

    assert await scheduler.get("a1") is None
    assert scheduler.sessions == {}
    assert "a1" not in scheduler.monitor.leases


# --- heartbeats and status reports of a LOST worker ------------------------------------------------------


async def test_a_heartbeat_whose_return_to_available_the_store_refused_is_tried_again_at_the_next_heartbeat(
    scheduler: Scheduler, store: FaultyStore, clock: FakeClock
) -> None:
    session = await lost_agent(scheduler, clock)
    store.fail_write(3)

    with pytest.raises(SchedulerUnavailable):
        await scheduler.heartbeat(session, ResourceUsage())

    assert await status(scheduler, "a1") is WorkerStatus.LOST
    assert scheduler.monitor.is_lost("a1")

    await scheduler.heartbeat(session, ResourceUsage())

    assert await status(scheduler, "a1") is WorkerStatus.AVAILABLE
    assert not scheduler.monitor.is_lost("a1")


async def test_a_status_report_the_store_refused_leaves_a_lost_worker_lost_until_its_next_heartbeat(
    scheduler: Scheduler, store: FaultyStore, clock: FakeClock
) -> None:
    session = await lost_agent(scheduler, clock)
    store.fail_write(3)

    with pytest.raises(SchedulerUnavailable):
        await scheduler.report_status(session, WorkerStatus.BUSY, drained=False, reason="job started")

    assert await status(scheduler, "a1") is WorkerStatus.LOST
    assert scheduler.monitor.is_lost("a1")

    await scheduler.heartbeat(session, ResourceUsage(running_jobs=["job-1"]))

    assert await status(scheduler, "a1") is WorkerStatus.BUSY


# --- unregistration --------------------------------------------------------------------------------------


async def test_an_unregistration_cancelled_while_its_delete_stalls_ends_the_session_once_the_delete_commits(
    scheduler: Scheduler, store: FaultyStore
) -> None:
    _, session = await scheduler.hello(agent("a1"))  # write 1
    store.stall_write(2)
    call = asyncio.create_task(scheduler.unregister("a1", reason="scaled down"))
    await store.stalled()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert scheduler.sessions == {"a1": session}

    store.release()
    await store.settled()
    await wait_for(async_true(lambda: not scheduler.sessions))  # followed once the delete committed

    assert await scheduler.get("a1") is None
    assert scheduler.sessions == {}
    assert "a1" not in scheduler.monitor.leases
    assert pending(session) == [WorkerCommand(CommandKind.SHUTDOWN, "unregistered"), None]


async def test_an_unregistration_the_store_refused_keeps_the_session_and_the_lease(
    scheduler: Scheduler, store: FaultyStore
) -> None:
    _, session = await scheduler.hello(agent("a1"))
    store.fail_write(2)

    with pytest.raises(SchedulerUnavailable):
        await scheduler.unregister("a1")

    assert await status(scheduler, "a1") is WorkerStatus.AVAILABLE
    assert scheduler.sessions == {"a1": session}
    assert scheduler.monitor.leases.expires_at("a1") == 3.0
    assert pending(session) == []


# --- a drain ---------------------------------------------------------------------------------------------


async def test_a_drain_cancelled_while_its_write_stalls_reaches_the_agent_once_the_write_commits(
    scheduler: Scheduler, store: FaultyStore
) -> None:
    _, session = await scheduler.hello(agent("a1"))  # write 1
    store.stall_write(2)
    call = asyncio.create_task(scheduler.drain("a1", deadline=30.0, reason="scale down"))
    await store.stalled()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert pending(session) == []

    store.release()
    await store.settled()
    await wait_for(async_true(lambda: not session.commands.empty()))  # followed once the write committed

    assert await status(scheduler, "a1") is WorkerStatus.DRAINING
    assert pending(session) == [WorkerCommand(CommandKind.DRAIN, "scale down", 30.0)]
    assert session.draining


async def test_a_mass_silence_of_1000_leased_workers_makes_none_available_and_paces_only_removals() -> None:
    await mass_silence_tells_the_truth_and_paces_removals(MemoryRegistryStore())


async def test_a_worker_whose_stream_closed_is_shown_disconnected_and_is_lost_at_its_lease_end(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    _, session = await scheduler.hello(agent("a1"))
    clock.now = 1.0
    await scheduler.heartbeat(session, ResourceUsage())
    scheduler.goodbye(session)

    record = await scheduler.get("a1")
    assert record is not None
    assert record.connected is False
    assert record.status is WorkerStatus.AVAILABLE  # within its lease: its agent may come back
    page = await scheduler.list()
    assert [(r.worker_id, r.connected) for r in page.workers] == [("a1", False)]

    await sweep_through(scheduler, clock, 4.0)
    assert await status(scheduler, "a1") is WorkerStatus.AVAILABLE  # the lease ran out at 4: suspect
    await sweep_through(scheduler, clock, 5.0)
    assert await status(scheduler, "a1") is WorkerStatus.LOST
