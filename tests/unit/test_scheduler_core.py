"""Scheduler: agents' sessions, heartbeats, status reports and commands, wired to the registry and the monitor.

No background sweeper runs: time is a fake clock, and the liveness monitor is swept explicitly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest

from hodei.domain import ResourceUsage, WorkerStatus
from hodei.errors import (
    ErrorCode,
    InvalidWorkerData,
    StaleIncarnation,
    StoreUnavailable,
    WorkerNotFound,
)
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.ports import UnregistrationStatus
from hodei.scheduler._core import Scheduler
from hodei.stores._memory import MemoryRegistryStore
from hodei.testing import FakeClock, FaultyStore
from tests.helpers import make_worker, wait_for
from tests.scheduling import EPOCH, LIVENESS, EventLog, agent, pending, status, sweep_through

# After a restart: 10 s for the agents to come back; lost workers are removed 10 s after the restart.
RESTARTED = LivenessConfig(
    heartbeat_interval=1.0, lease_ttl=3.0, lost_grace=10.0, recovery_window=10.0, sweep_interval=1.0
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def scheduler(clock: FakeClock) -> AsyncIterator[Scheduler]:
    started = Scheduler(MemoryRegistryStore(), liveness=LIVENESS, clock=clock.wall, monotonic=clock.monotonic)
    await started.start(sweep=False)
    yield started
    await started.stop()


@pytest.fixture
def events(scheduler: Scheduler) -> EventLog:
    return EventLog(scheduler)


# --- hello ----------------------------------------------------------------------------------------------


async def test_hello_from_an_unknown_worker_registers_it_available_with_a_lease(
    scheduler: Scheduler, events: EventLog
) -> None:
    receipt, session = await scheduler.hello(agent("agent-1", incarnation=3))

    assert receipt.created is True
    assert receipt.record.worker_id == "agent-1"
    assert receipt.record.status is WorkerStatus.AVAILABLE
    assert receipt.record.incarnation == 3
    assert receipt.record.lease_ttl == 3.0
    assert receipt.record.connected is True
    assert session.worker_id == "agent-1"
    assert session.incarnation == 3
    assert session.closed is False
    assert scheduler.sessions["agent-1"] is session
    assert scheduler.monitor.leases.expires_at("agent-1") == 3.0
    taken = await events.take()
    assert [(event.kind, event.worker_id) for event in taken] == [
        (WorkerEventKind.REGISTERED, "agent-1"),
        (WorkerEventKind.CONNECTED, "agent-1"),
    ]
    assert taken[1].reason == "incarnation 3"


async def test_a_connected_worker_is_viewed_as_connected(scheduler: Scheduler) -> None:
    await scheduler.hello(agent("agent-1"))

    viewed = await scheduler.get("agent-1")
    listed = (await scheduler.list()).workers

    assert viewed is not None
    assert viewed.connected is True
    assert [record.connected for record in listed] == [True]
    stored = await scheduler.registry.get("agent-1")
    assert stored is not None
    assert stored.connected is False  # the live facts are not stored


async def test_hello_with_running_jobs_registers_the_worker_busy(
    scheduler: Scheduler, events: EventLog
) -> None:
    receipt, _ = await scheduler.hello(agent("agent-1"), running_jobs=["job-1", "job-2"])

    assert receipt.created is True
    assert receipt.record.status is WorkerStatus.BUSY
    assert await status(scheduler, "agent-1") is WorkerStatus.BUSY


async def test_hello_for_a_worker_the_control_plane_registered_attaches_to_it(
    scheduler: Scheduler, events: EventLog
) -> None:
    await scheduler.register(make_worker("w-1"))  # incarnation 0, no lease
    await events.take()

    receipt, _ = await scheduler.hello(agent("w-1", incarnation=7))

    assert receipt.created is False
    assert receipt.record.incarnation == 7
    assert receipt.record.lease_ttl == 3.0
    assert receipt.record.status is WorkerStatus.AVAILABLE
    assert await scheduler.registry.count() == 1
    [record] = (await scheduler.list()).workers
    assert record.worker_id == "w-1"
    assert record.incarnation == 7
    assert record.connected is True
    assert await events.kinds() == [(WorkerEventKind.UPDATED, "w-1"), (WorkerEventKind.CONNECTED, "w-1")]


async def test_a_second_hello_for_the_same_worker_closes_the_first_session(scheduler: Scheduler) -> None:
    _, first = await scheduler.hello(agent("agent-1", incarnation=1))

    _, second = await scheduler.hello(agent("agent-1", incarnation=2))

    assert first.closed is True
    assert pending(first) == [None]
    assert second.closed is False
    assert pending(second) == []
    assert scheduler.sessions["agent-1"] is second


async def test_heartbeats_on_a_replaced_session_are_ignored(scheduler: Scheduler, clock: FakeClock) -> None:
    _, first = await scheduler.hello(agent("agent-1", incarnation=1))
    _, _second = await scheduler.hello(agent("agent-1", incarnation=2))

    clock.now = 2.0
    await scheduler.heartbeat(first, ResourceUsage(cpu_percent=50.0, memory_used_mb=100, running_jobs=1))

    assert scheduler.monitor.leases.expires_at("agent-1") == 3.0
    viewed = await scheduler.get("agent-1")
    assert viewed is not None
    assert viewed.usage is None
    assert viewed.last_heartbeat_at is None
    assert first.usage is None


async def test_a_status_report_on_a_replaced_session_is_ignored(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, first = await scheduler.hello(agent("agent-1", incarnation=1))
    await scheduler.hello(agent("agent-1", incarnation=2))
    await events.take()

    await scheduler.report_status(first, WorkerStatus.BUSY, drained=False, reason="old news")

    assert await status(scheduler, "agent-1") is WorkerStatus.AVAILABLE
    assert await events.take() == []


async def test_hello_with_an_older_incarnation_is_refused_and_keeps_the_current_session(
    scheduler: Scheduler,
) -> None:
    _, current = await scheduler.hello(agent("agent-1", incarnation=5))

    with pytest.raises(StaleIncarnation):
        await scheduler.hello(agent("agent-1", incarnation=4))

    assert scheduler.sessions["agent-1"] is current
    assert current.closed is False
    record = await scheduler.registry.get("agent-1")
    assert record is not None
    assert record.incarnation == 5


# --- heartbeat ------------------------------------------------------------------------------------------


async def test_a_heartbeat_renews_the_lease(scheduler: Scheduler, clock: FakeClock) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    assert scheduler.monitor.leases.expires_at("agent-1") == 3.0

    clock.now = 2.0
    await scheduler.heartbeat(session, ResourceUsage())

    assert scheduler.monitor.leases.expires_at("agent-1") == 5.0


async def test_a_heartbeat_records_usage_and_time_in_the_view(scheduler: Scheduler, clock: FakeClock) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    usage = ResourceUsage(cpu_percent=37.5, memory_used_mb=2048, running_jobs=0)

    clock.now = 2.0
    await scheduler.heartbeat(session, usage)

    viewed = await scheduler.get("agent-1")
    assert viewed is not None
    assert viewed.usage == usage
    assert viewed.last_heartbeat_at == EPOCH + timedelta(seconds=2)
    assert viewed.connected is True


async def test_a_worker_that_keeps_heartbeating_is_never_lost(scheduler: Scheduler, clock: FakeClock) -> None:
    _, session = await scheduler.hello(agent("agent-1"))

    for second in range(1, 20):
        clock.now = float(second)
        await scheduler.heartbeat(session, ResourceUsage())
        await scheduler.monitor.sweep(clock.now)

    assert await status(scheduler, "agent-1") is WorkerStatus.AVAILABLE


async def test_a_heartbeat_from_a_lost_worker_makes_it_available_again(
    scheduler: Scheduler, clock: FakeClock, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await sweep_through(scheduler, clock, 4.0)
    assert await status(scheduler, "agent-1") is WorkerStatus.LOST
    await events.take()

    await scheduler.heartbeat(session, ResourceUsage(running_jobs=0))

    assert await status(scheduler, "agent-1") is WorkerStatus.AVAILABLE
    assert not scheduler.monitor.is_lost("agent-1")
    assert scheduler.monitor.leases.expires_at("agent-1") == 7.0
    [event] = await events.take()
    assert (event.kind, event.worker_id, event.reason) == (
        WorkerEventKind.AVAILABLE,
        "agent-1",
        "heartbeats resumed",
    )


async def test_a_heartbeat_with_running_jobs_from_a_lost_worker_makes_it_busy(
    scheduler: Scheduler, clock: FakeClock, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await sweep_through(scheduler, clock, 4.0)
    await events.take()

    await scheduler.heartbeat(session, ResourceUsage(running_jobs=2))

    assert await status(scheduler, "agent-1") is WorkerStatus.BUSY
    assert await events.kinds() == [(WorkerEventKind.BUSY, "agent-1")]


async def test_a_lost_worker_whose_heartbeats_resumed_is_not_removed_when_the_grace_ends(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await sweep_through(scheduler, clock, 4.0)  # LOST at 4

    for second in range(5, 15):
        clock.now = float(second)
        await scheduler.heartbeat(session, ResourceUsage())
        await scheduler.monitor.sweep(clock.now)

    assert await status(scheduler, "agent-1") is WorkerStatus.AVAILABLE
    assert pending(session) == []


# --- status reports -------------------------------------------------------------------------------------


async def test_reported_statuses_update_the_record_and_publish_events(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await events.take()

    await scheduler.report_status(session, WorkerStatus.BUSY, drained=False, reason="job-1 started")
    assert await status(scheduler, "agent-1") is WorkerStatus.BUSY
    await scheduler.report_status(session, WorkerStatus.AVAILABLE, drained=False, reason="job-1 done")
    assert await status(scheduler, "agent-1") is WorkerStatus.AVAILABLE

    taken = await events.take()
    assert [(event.kind, event.reason) for event in taken] == [
        (WorkerEventKind.BUSY, "job-1 started"),
        (WorkerEventKind.AVAILABLE, "job-1 done"),
    ]
    assert taken[0].record is not None
    assert taken[0].record.status is WorkerStatus.BUSY


async def test_a_draining_worker_that_reports_drained_is_drained_with_a_drained_event(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await scheduler.report_status(session, WorkerStatus.DRAINING, drained=False, reason="finishing")
    await events.take()

    await scheduler.report_status(session, WorkerStatus.DRAINING, drained=True, reason="all done")

    record = await scheduler.get("agent-1")
    assert record is not None
    assert record.status is WorkerStatus.DRAINING
    assert record.drained is True
    [event] = await events.take()
    assert (event.kind, event.reason) == (WorkerEventKind.DRAINED, "all done")


async def test_an_available_worker_that_reports_drained_publishes_draining_then_drained(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await events.take()

    await scheduler.report_status(session, WorkerStatus.DRAINING, drained=True, reason="idle")

    record = await scheduler.get("agent-1")
    assert record is not None
    assert (record.status, record.drained) == (WorkerStatus.DRAINING, True)
    assert await events.kinds() == [
        (WorkerEventKind.DRAINING, "agent-1"),
        (WorkerEventKind.DRAINED, "agent-1"),
    ]


@pytest.mark.parametrize("reported", [WorkerStatus.LOST, WorkerStatus.REGISTERED])
async def test_an_agent_reporting_a_status_only_the_scheduler_decides_is_refused(
    scheduler: Scheduler, events: EventLog, reported: WorkerStatus
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await events.take()

    with pytest.raises(InvalidWorkerData) as raised:
        await scheduler.report_status(session, reported, drained=False, reason="")

    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert raised.value.worker_id == "agent-1"
    assert [violation.field for violation in raised.value.violations] == ["status_change.status"]
    assert reported.value in raised.value.message
    assert await status(scheduler, "agent-1") is WorkerStatus.AVAILABLE
    assert await events.take() == []


# --- goodbye --------------------------------------------------------------------------------------------


async def test_goodbye_ends_the_session_and_publishes_disconnected(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await events.take()

    scheduler.goodbye(session)

    assert "agent-1" not in scheduler.sessions
    assert session.closed is True
    assert pending(session) == [None]
    [event] = await events.take()
    assert (event.kind, event.worker_id, event.record) == (WorkerEventKind.DISCONNECTED, "agent-1", None)
    viewed = await scheduler.get("agent-1")
    assert viewed is not None
    assert viewed.connected is False
    assert viewed.status is WorkerStatus.AVAILABLE


async def test_after_goodbye_the_lease_runs_on_until_the_worker_is_lost(
    scheduler: Scheduler, clock: FakeClock, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    clock.now = 1.0
    await scheduler.heartbeat(session, ResourceUsage())  # lease until 4
    scheduler.goodbye(session)

    assert scheduler.monitor.leases.expires_at("agent-1") == 4.0
    await sweep_through(scheduler, clock, 4.0)
    assert await status(scheduler, "agent-1") is WorkerStatus.AVAILABLE

    await sweep_through(scheduler, clock, 5.0)
    assert await status(scheduler, "agent-1") is WorkerStatus.LOST


async def test_goodbye_of_a_replaced_session_leaves_the_current_one_connected(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, first = await scheduler.hello(agent("agent-1", incarnation=1))
    _, second = await scheduler.hello(agent("agent-1", incarnation=2))
    await events.take()

    scheduler.goodbye(first)

    assert scheduler.sessions["agent-1"] is second
    assert await events.take() == []


# --- drain ----------------------------------------------------------------------------------------------


async def test_drain_marks_a_connected_worker_draining_and_pushes_the_deadline(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await events.take()

    outcome = await scheduler.drain("agent-1", deadline=30.0, reason="decommission")

    assert outcome.delivered is True
    assert outcome.record.status is WorkerStatus.DRAINING
    assert outcome.record.drained is False
    assert outcome.record.connected is True
    assert pending(session) == [WorkerCommand(CommandKind.DRAIN, "decommission", 30.0)]
    assert await status(scheduler, "agent-1") is WorkerStatus.DRAINING
    [event] = await events.take()
    assert (event.kind, event.reason) == (WorkerEventKind.DRAINING, "decommission")


async def test_drain_without_a_reason_says_drain_requested(scheduler: Scheduler, events: EventLog) -> None:
    await scheduler.hello(agent("agent-1"))
    await events.take()

    await scheduler.drain("agent-1")

    [event] = await events.take()
    assert (event.kind, event.reason) == (WorkerEventKind.DRAINING, "drain requested")


async def test_drain_of_a_worker_without_a_session_is_not_delivered(scheduler: Scheduler) -> None:
    await scheduler.register(make_worker("pushed"))

    outcome = await scheduler.drain("pushed", deadline=30.0)

    assert outcome.delivered is False
    assert outcome.record.status is WorkerStatus.DRAINING
    assert outcome.record.connected is False
    assert await status(scheduler, "pushed") is WorkerStatus.DRAINING


async def test_drain_of_an_unknown_worker_raises_worker_not_found(scheduler: Scheduler) -> None:
    with pytest.raises(WorkerNotFound) as raised:
        await scheduler.drain("nobody")

    assert raised.value.worker_id == "nobody"


async def test_draining_again_a_worker_that_reported_drained_keeps_it_drained(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await scheduler.drain("agent-1", deadline=30.0)
    await scheduler.report_status(session, WorkerStatus.DRAINING, drained=True, reason="idle")
    pending(session)

    outcome = await scheduler.drain("agent-1", deadline=30.0)  # a retry, or a second decommission

    assert outcome.record.drained is True
    record = await scheduler.registry.get("agent-1")
    assert record is not None
    assert (record.status, record.drained) == (WorkerStatus.DRAINING, True)


# --- shutdown -------------------------------------------------------------------------------------------


async def test_shutdown_pushes_a_shutdown_command_to_a_connected_worker(scheduler: Scheduler) -> None:
    _, session = await scheduler.hello(agent("agent-1"))

    delivered = await scheduler.shutdown("agent-1", reason="scale down")

    assert delivered is True
    assert pending(session) == [WorkerCommand(CommandKind.SHUTDOWN, "scale down")]


async def test_shutdown_of_a_worker_without_a_session_is_not_delivered(scheduler: Scheduler) -> None:
    await scheduler.register(make_worker("pushed"))

    assert await scheduler.shutdown("pushed") is False


async def test_shutdown_of_an_unknown_worker_raises_worker_not_found(scheduler: Scheduler) -> None:
    with pytest.raises(WorkerNotFound) as raised:
        await scheduler.shutdown("nobody")

    assert raised.value.worker_id == "nobody"


# --- unregister -----------------------------------------------------------------------------------------


async def test_unregistering_a_connected_worker_shuts_its_agent_down_and_drops_its_lease(
    scheduler: Scheduler, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await events.take()

    result = await scheduler.unregister("agent-1")

    assert result is UnregistrationStatus.SUCCESS
    assert pending(session) == [WorkerCommand(CommandKind.SHUTDOWN, "unregistered"), None]
    assert session.closed is True
    assert "agent-1" not in scheduler.sessions
    assert "agent-1" not in scheduler.monitor.leases
    assert await scheduler.get("agent-1") is None
    assert await events.kinds() == [(WorkerEventKind.UNREGISTERED, "agent-1")]


async def test_an_unregistered_worker_is_never_made_lost(
    scheduler: Scheduler, clock: FakeClock, events: EventLog
) -> None:
    await scheduler.hello(agent("agent-1"))
    await scheduler.unregister("agent-1")
    await events.take()

    await sweep_through(scheduler, clock, 20.0)

    assert await events.take() == []


async def test_unregistering_an_unknown_worker_says_it_was_not_registered(scheduler: Scheduler) -> None:
    assert await scheduler.unregister("nobody") is UnregistrationStatus.NOT_REGISTERED


# --- a worker expired while its session is open ---------------------------------------------------------


async def test_a_worker_expired_while_its_session_is_open_is_told_to_register_again(
    scheduler: Scheduler, clock: FakeClock, events: EventLog
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    await sweep_through(scheduler, clock, 8.0)  # LOST at 4, within the 5 s grace
    assert await status(scheduler, "agent-1") is WorkerStatus.LOST
    assert pending(session) == []
    await events.take()

    await sweep_through(scheduler, clock, 9.0)

    assert await scheduler.get("agent-1") is None
    assert await events.kinds() == [(WorkerEventKind.EXPIRED, "agent-1")]
    assert pending(session) == [WorkerCommand(CommandKind.REREGISTER, "the scheduler forgot this worker")]


async def test_a_worker_expired_after_its_agent_said_goodbye_gets_no_command(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    _, session = await scheduler.hello(agent("agent-1"))
    scheduler.goodbye(session)
    pending(session)

    await sweep_through(scheduler, clock, 9.0)

    assert await scheduler.get("agent-1") is None
    assert pending(session) == []


# --- start and stop -------------------------------------------------------------------------------------


async def restarted(store: MemoryRegistryStore, clock: FakeClock) -> Scheduler:
    scheduler = Scheduler(store, liveness=RESTARTED, clock=clock.wall, monotonic=clock.monotonic)
    await scheduler.start(sweep=False)
    return scheduler


async def test_start_restores_the_leases_of_stored_leased_workers() -> None:
    store = MemoryRegistryStore()
    before = Scheduler(store, liveness=RESTARTED)
    await before.registry.register(make_worker("leased-1"), lease_ttl=3.0)
    await before.registry.register(make_worker("leased-2"), lease_ttl=4.0)
    await before.registry.register(make_worker("pushed"))
    clock = FakeClock(100.0)

    scheduler = await restarted(store, clock)
    try:
        assert scheduler.monitor.leases.expires_at("leased-1") == 103.0
        assert scheduler.monitor.leases.expires_at("leased-2") == 104.0
        assert "pushed" not in scheduler.monitor.leases
        assert len(scheduler.monitor.leases) == 2
    finally:
        await scheduler.stop()


async def test_after_a_restart_nobody_expires_in_the_recovery_window_and_the_silent_do_after_it() -> None:
    store = MemoryRegistryStore()
    before = Scheduler(store, liveness=RESTARTED)
    for worker_id in ("back", "silent"):
        await before.registry.register(agent(worker_id), lease_ttl=3.0)
    await before.registry.register(make_worker("pushed"))
    clock = FakeClock(100.0)
    scheduler = await restarted(store, clock)
    events = EventLog(scheduler)
    try:
        await sweep_through(scheduler, clock, 104.0)
        _, session = await scheduler.hello(agent("back"))  # its agent found the restarted scheduler
        for second in range(105, 110):
            clock.now = float(second)
            await scheduler.heartbeat(session, ResourceUsage())
            await scheduler.monitor.sweep(clock.now)

        for worker_id in ("back", "silent", "pushed"):
            assert await status(scheduler, worker_id) is WorkerStatus.AVAILABLE
        assert WorkerEventKind.LOST not in [event.kind for event in await events.take()]

        clock.now = 110.0
        await scheduler.heartbeat(session, ResourceUsage())
        await scheduler.monitor.sweep(110.0)

        assert await status(scheduler, "back") is WorkerStatus.AVAILABLE
        assert await status(scheduler, "silent") is WorkerStatus.LOST
        assert await status(scheduler, "pushed") is WorkerStatus.AVAILABLE
        assert await events.kinds() == [(WorkerEventKind.LOST, "silent")]
    finally:
        await scheduler.stop()


async def test_a_stored_lost_worker_is_removed_a_grace_after_the_restart() -> None:
    store = MemoryRegistryStore()
    before = Scheduler(store, liveness=RESTARTED)
    await before.registry.register(agent("gone"), lease_ttl=3.0)
    await before.registry.transition("gone", WorkerStatus.LOST, reason="no heartbeat")
    clock = FakeClock(100.0)
    scheduler = await restarted(store, clock)
    events = EventLog(scheduler)
    try:
        assert scheduler.monitor.is_lost("gone")
        assert "gone" not in scheduler.monitor.leases

        await sweep_through(scheduler, clock, 109.0)
        assert await status(scheduler, "gone") is WorkerStatus.LOST
        assert await events.take() == []

        await sweep_through(scheduler, clock, 110.0)
        assert await scheduler.get("gone") is None
        [event] = await events.take()
        assert (event.kind, event.worker_id, event.reason) == (
            WorkerEventKind.EXPIRED,
            "gone",
            "lost for more than 10 s",
        )
    finally:
        await scheduler.stop()


async def test_stop_ends_every_session_and_every_watcher(scheduler: Scheduler) -> None:
    _, first = await scheduler.hello(agent("agent-1"))
    _, second = await scheduler.hello(agent("agent-2"))
    watcher = scheduler.events.watch()

    await scheduler.stop()

    assert pending(first) == [None]
    assert pending(second) == [None]
    assert scheduler.sessions == {}

    async def read() -> list[WorkerEvent]:
        return [event async for event in watcher]

    assert await asyncio.wait_for(read(), 1) == []


async def test_draining_a_lost_worker_leaves_it_lost_and_undelivered(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    _, session = await scheduler.hello(agent())
    scheduler.goodbye(session)
    await sweep_through(scheduler, clock, 4.0)  # LOST at 4

    outcome = await scheduler.drain("agent-1")
    await sweep_through(scheduler, clock, 9.0)  # the grace ends at 9

    assert (outcome.delivered, outcome.record.status) == (False, WorkerStatus.LOST)
    assert await scheduler.get("agent-1") is None  # it expired as LOST workers do


async def test_a_status_report_renews_the_lease_like_a_heartbeat(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    _, session = await scheduler.hello(agent())
    await sweep_through(scheduler, clock, 2.0)

    await scheduler.report_status(session, WorkerStatus.BUSY, drained=False, reason="a job")
    await sweep_through(scheduler, clock, 5.0)  # without the renewal it would be LOST at 4

    assert await status(scheduler, "agent-1") is WorkerStatus.BUSY
    assert scheduler.monitor.leases.expires_at("agent-1") == 2.0 + LIVENESS.lease_ttl


async def test_a_liveness_tick_failing_with_any_error_is_counted_and_the_sweeper_goes_on() -> None:
    fast = LivenessConfig(
        heartbeat_interval=0.02, lease_ttl=0.05, lost_grace=60.0, recovery_window=0.0, sweep_interval=0.01
    )
    store = FaultyStore(MemoryRegistryStore())
    scheduler = Scheduler(store, liveness=fast)
    told: list[bool] = []
    scheduler.rounds.on_unhealthy = lambda: told.append(True)
    await scheduler.start()
    try:
        store.fail_write(2, lambda: RuntimeError("the driver failed in a way nobody foresaw"))  # LOST, once
        _, session = await scheduler.hello(agent("a1"))  # write 1
        scheduler.goodbye(session)

        await wait_for(lambda: _is_status(scheduler, "a1", WorkerStatus.LOST), timeout=5)

        assert store.writes == ["upsert", "modify", "modify"]  # the failed LOST, then the one that took
        assert scheduler.healthy
        assert told == []
        assert sample(scheduler, "hodei_liveness_sweep_failures_total", error="other") == 1
        assert sample(scheduler, "hodei_liveness_sweep_failures_total", error="unavailable") == 0
    finally:
        await scheduler.stop()


class FailingCounts(MemoryRegistryStore):
    """The memory store, whose count of workers by status (the read every liveness tick ends with) raises
    ``error()`` once ``failing`` is set; ``refused`` counts those refusals."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        super().__init__()
        self.error = error
        self.failing = False
        self.refused = 0

    async def count_by_status(self) -> dict[WorkerStatus, int]:
        if self.failing:
            self.refused += 1
            raise self.error()
        return await super().count_by_status()


async def test_a_liveness_sweeper_ended_by_what_is_not_an_exception_makes_the_scheduler_unhealthy(
    clock: FakeClock,
) -> None:
    class Fatal(BaseException):
        pass

    fast = dataclasses.replace(LIVENESS, sweep_interval=0.01)
    store = FailingCounts(Fatal)
    scheduler = Scheduler(store, liveness=fast, monotonic=clock.monotonic)
    told: list[bool] = []
    scheduler.rounds.on_unhealthy = lambda: told.append(True)
    await scheduler.start()
    store.failing = True  # the next tick ends with what is not an Exception
    await wait_for(lambda: _is(not scheduler.healthy), timeout=1, interval=0)
    await scheduler.stop()  # the failure was reported once; stopping does not raise it again

    assert told == [True]


async def test_a_sweep_that_cannot_reach_the_store_is_skipped_and_the_sweeper_goes_on(
    clock: FakeClock,
) -> None:
    fast = dataclasses.replace(LIVENESS, sweep_interval=0.01)
    store = FailingCounts(lambda: StoreUnavailable("the registry database is unreachable"))
    scheduler = Scheduler(store, liveness=fast, monotonic=clock.monotonic)
    await scheduler.start()
    store.failing = True
    await wait_for(lambda: _is(store.refused >= 3), timeout=2)
    assert scheduler.healthy
    await scheduler.stop()
    assert sample(scheduler, "hodei_liveness_sweep_failures_total", error="unavailable") == store.refused


async def _is(value: bool) -> bool:
    return value


async def _is_status(scheduler: Scheduler, worker_id: str, expected: WorkerStatus) -> bool:
    return await status(scheduler, worker_id) is expected


def sample(scheduler: Scheduler, name: str, **labels: str) -> float | None:
    return scheduler.metrics.registry.get_sample_value(name, labels)
