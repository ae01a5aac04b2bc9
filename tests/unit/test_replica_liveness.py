"""Scheduler.tick with replicas sharing one store: what each replica heard is shared, only the leader sweeps.

The store is a memory store that also keeps, on the test's clock, when each leased worker was last heard of
(what PostgreSQL's ``last_seen`` column does); leadership is a switch the test flips. Nothing sleeps: each
test calls ``tick`` at chosen moments of a fake monotonic clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta

import pytest

from hodei.domain import ResourceUsage, UpsertOutcome, WorkerRecord, WorkerStatus
from hodei.errors import SchedulerError, SchedulerInternalError, SchedulerUnavailable
from hodei.lifecycle import CommandKind, WorkerCommand, WorkerEventKind
from hodei.ports import SharedLeases, TouchedLeases
from hodei.scheduler._core import Scheduler
from hodei.scheduler._registry import WorkerRegistry
from hodei.stores._memory import MemoryRegistryStore
from hodei.testing import FakeClock
from tests.scheduling import EPOCH, LIVENESS, EventLog, agent, status

# LIVENESS: a 3 s lease renewed every second, a silent worker LOST one heartbeat interval (1 s) after its
# lease ran out and removed 5 s after that; sweeps every second, no recovery window.

Call = tuple[object, ...]  # ("touch", [ids]), ("lease_ages",) or ("acquire",)


class SharedMemoryStore(MemoryRegistryStore):
    """A memory store that shares leases as PostgreSQL does, on the test's clock, and records what it is asked.

    As in PostgreSQL, every write of a leased record (a registration, a status change) and every ``touch`` sets
    the worker's ``last_seen`` to now. ``calls`` lists the ``touch`` and ``lease_ages`` calls in order.
    """

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock
        self.last_seen: dict[str, float] = {}
        self.calls: list[Call] = []
        self._touch_failure: SchedulerError | None = None
        self._leases_failure: SchedulerError | None = None
        self._after_touch: Callable[[], Awaitable[None]] | None = None

    # -- fault injection -------------------------------------------------------------------------------

    def fail_next_touch(self, error: SchedulerError) -> None:
        self._touch_failure = error

    def fail_next_leases(self, error: SchedulerError) -> None:
        self._leases_failure = error

    def after_next_touch(self, change: Callable[[], Awaitable[None]]) -> None:
        """Run ``change`` once the next touch has answered (what another replica did meanwhile)."""
        self._after_touch = change

    # -- RegistryStore, keeping last_seen --------------------------------------------------------------

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        outcomes = await super().upsert(records)
        for outcome, written in outcomes:
            if outcome in (UpsertOutcome.CREATED, UpsertOutcome.UPDATED) and written.lease_ttl is not None:
                self.last_seen[written.worker_id] = self._clock.now
        return outcomes

    async def modify(
        self, worker_id: str, change: Callable[[WorkerRecord], WorkerRecord | None]
    ) -> tuple[WorkerRecord, WorkerRecord] | None:
        changed = await super().modify(worker_id, change)
        if changed is not None and changed[1] is not changed[0] and changed[1].lease_ttl is not None:
            self.last_seen[worker_id] = self._clock.now
        return changed

    async def delete(self, worker_id: str, *, only_if: Callable[[WorkerRecord], bool] | None = None) -> bool:
        deleted = await super().delete(worker_id, only_if=only_if)
        if deleted:
            self.last_seen.pop(worker_id, None)
        return deleted

    async def leases(self) -> list[tuple[str, float, WorkerStatus]]:
        if self._leases_failure is not None:
            error, self._leases_failure = self._leases_failure, None
            raise error
        return await super().leases()

    # -- SharedLeases ----------------------------------------------------------------------------------

    async def touch(
        self, worker_ids: Sequence[str], *, stream_at: str = "", left: Sequence[str] = ()
    ) -> TouchedLeases:
        self.calls.append(("touch", list(worker_ids)))
        if self._touch_failure is not None:
            error, self._touch_failure = self._touch_failure, None
            raise error
        lost: list[str] = []
        gone: list[str] = []
        for worker_id in worker_ids:
            record = await self.get(worker_id)
            if record is None:
                gone.append(worker_id)
            if record is None or record.lease_ttl is None:
                continue
            self.last_seen[worker_id] = self._clock.now
            if record.status is WorkerStatus.LOST:
                lost.append(worker_id)
        if self._after_touch is not None:
            change, self._after_touch = self._after_touch, None
            await change()
        return TouchedLeases(lost=lost, gone=gone)

    async def lease_ages(self) -> list[tuple[str, float, float]]:
        self.calls.append(("lease_ages",))
        ages: list[tuple[str, float, float]] = []
        for worker_id, seen in sorted(self.last_seen.items()):
            record = await self.get(worker_id)
            if record is not None and record.lease_ttl is not None and record.status is not WorkerStatus.LOST:
                ages.append((worker_id, record.lease_ttl, self._clock.now - seen))
        return ages


class SwitchedLeadership:
    """A :class:`~hodei.ports.Leadership` whose answer the test sets; each ``acquire`` is written in ``calls``."""

    def __init__(self, *, leading: bool, calls: list[Call] | None = None) -> None:
        self.leading = leading
        self.calls: list[Call] = [] if calls is None else calls

    async def acquire(self) -> bool:
        self.calls.append(("acquire",))
        return self.leading

    async def release(self) -> None:
        self.leading = False


StartReplica = Callable[[SwitchedLeadership], Awaitable[Scheduler]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> SharedMemoryStore:
    return SharedMemoryStore(clock)


@pytest.fixture
def elsewhere(store: SharedMemoryStore) -> WorkerRegistry:
    """What other replicas write to the shared store (a leader marking workers LOST, the control plane)."""
    return WorkerRegistry(store)


@pytest.fixture
async def start_replica(store: SharedMemoryStore, clock: FakeClock) -> AsyncIterator[StartReplica]:
    started: list[Scheduler] = []

    async def start(leadership: SwitchedLeadership) -> Scheduler:
        replica = Scheduler(
            store, liveness=LIVENESS, leadership=leadership, clock=clock.wall, monotonic=clock.monotonic
        )
        await replica.start(sweep=False)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


async def tick_at(clock: FakeClock, moment: float, *replicas: Scheduler) -> None:
    clock.now = moment
    for replica in replicas:
        await replica.tick(moment)


def test_the_fake_store_shares_leases() -> None:
    assert isinstance(SharedMemoryStore(FakeClock()), SharedLeases)
    assert not isinstance(MemoryRegistryStore(), SharedLeases)


# --- a follower does not sweep --------------------------------------------------------------------------


async def test_a_follower_never_sweeps_and_finds_silent_workers_lost_within_a_lease_once_it_leads(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica
) -> None:
    leadership = SwitchedLeadership(leading=False)
    replica = await start_replica(leadership)
    events = EventLog(replica)
    _, quiet = await replica.hello(agent("long-silent"))  # heard at 0, touched at the first tick (1)
    replica.goodbye(quiet)
    _, session = await replica.hello(agent("fresh"))
    await events.take()

    seen: list[WorkerStatus | None] = []
    for second in range(1, 21):
        clock.now = float(second)
        await replica.heartbeat(session, ResourceUsage())
        await replica.tick(clock.now)
        seen.append(await status(replica, "long-silent"))

    assert seen == [WorkerStatus.AVAILABLE] * 20
    assert replica.leading is False
    assert ("lease_ages",) not in store.calls
    assert await events.take() == []

    leadership.leading = True  # "fresh" falls silent now: last heard at 20, its lease runs to 23
    at_takeover: dict[str, WorkerStatus | None] = {}
    for second in range(21, 25):
        await tick_at(clock, float(second), replica)
        at_takeover[f"fresh@{second}"] = await status(replica, "fresh")
    at_takeover["long-silent"] = await status(replica, "long-silent")

    assert at_takeover == {
        "fresh@21": WorkerStatus.AVAILABLE,
        "fresh@22": WorkerStatus.AVAILABLE,
        "fresh@23": WorkerStatus.AVAILABLE,
        "fresh@24": WorkerStatus.LOST,  # 20 + lease + one heartbeat interval
        "long-silent": WorkerStatus.LOST,
    }
    assert replica.leading is True
    assert replica.monitor.stall_compensations == 0  # the follower's unswept time is not a stall
    taken = await events.take()
    assert [(event.kind, event.worker_id, event.time) for event in taken] == [
        (WorkerEventKind.LOST, "long-silent", EPOCH + timedelta(seconds=21)),  # silent 20 s: at the takeover
        (WorkerEventKind.LOST, "fresh", EPOCH + timedelta(seconds=24)),
    ]


# --- the leader learns what other replicas heard ----------------------------------------------------------


async def test_the_leader_keeps_a_worker_heard_only_by_another_replica_and_finds_it_lost_when_it_falls_silent(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica
) -> None:
    leader = await start_replica(SwitchedLeadership(leading=True))
    follower = await start_replica(SwitchedLeadership(leading=False))
    events = EventLog(leader)
    _, session = await follower.hello(agent("roamer"))
    assert "roamer" not in leader.monitor.leases

    for second in range(1, 11):
        clock.now = float(second)
        await follower.heartbeat(session, ResourceUsage())
        await tick_at(clock, clock.now, follower, leader)
        assert await status(leader, "roamer") is WorkerStatus.AVAILABLE

    assert leader.sessions == {}  # it never heard the roamer itself
    assert leader.monitor.leases.expires_at("roamer") == 13.0  # last touched by the follower at 10
    assert store.calls.count(("touch", ["roamer"])) == 10
    assert store.calls.count(("lease_ages",)) == 10

    seen: dict[float, WorkerStatus | None] = {}
    for second in range(11, 15):  # the agent fell silent after its heartbeat at 10
        await tick_at(clock, float(second), follower, leader)
        seen[float(second)] = await status(leader, "roamer")

    assert seen == {
        11.0: WorkerStatus.AVAILABLE,
        12.0: WorkerStatus.AVAILABLE,
        13.0: WorkerStatus.AVAILABLE,  # its lease ran out: suspect
        14.0: WorkerStatus.LOST,  # and silent one heartbeat interval more
    }
    assert store.calls.count(("touch", ["roamer"])) == 10
    assert await events.kinds() == [(WorkerEventKind.LOST, "roamer")]


async def test_an_older_last_heard_in_the_store_does_not_shorten_a_lease_the_leader_extended(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica
) -> None:
    leader = await start_replica(SwitchedLeadership(leading=True))
    await leader.hello(agent("agent-1"))  # silent from 0
    await tick_at(clock, 1.0, leader)  # touched at 1: the store says heard at 1, lease to 4
    assert leader.monitor.leases.expires_at("agent-1") == 4.0

    await tick_at(clock, 4.0, leader)  # the leader stalled 2 s: every lease is extended by as much
    assert leader.monitor.stall_compensations == 1
    assert leader.monitor.leases.expires_at("agent-1") == 6.0

    seen = {}
    for second in (5.0, 6.0, 7.0):
        await tick_at(clock, second, leader)
        seen[second] = await status(leader, "agent-1")

    # The store still says "heard at 1, lease to 4"; the leader keeps its later expiry.
    assert seen == {5.0: WorkerStatus.AVAILABLE, 6.0: WorkerStatus.AVAILABLE, 7.0: WorkerStatus.LOST}


# --- sharing what this replica heard --------------------------------------------------------------------


async def test_heard_workers_are_touched_once_per_tick_in_order_and_not_again_until_heard_again(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica
) -> None:
    replica = await start_replica(SwitchedLeadership(leading=False, calls=store.calls))

    await tick_at(clock, 1.0, replica)
    assert store.calls == [("acquire",)]  # nobody heard: no touch

    sessions = {}
    for worker_id in ("c", "a", "b"):
        _, sessions[worker_id] = await replica.hello(agent(worker_id))
    await tick_at(clock, 2.0, replica)
    await tick_at(clock, 3.0, replica)

    assert store.calls == [("acquire",), ("touch", ["a", "b", "c"]), ("acquire",), ("acquire",)]
    assert store.last_seen == {"a": 2.0, "b": 2.0, "c": 2.0}

    clock.now = 3.5
    await replica.heartbeat(sessions["c"], ResourceUsage())
    await replica.report_status(sessions["b"], WorkerStatus.BUSY, drained=False, reason="job-1")
    await replica.heartbeat(sessions["c"], ResourceUsage())
    store.calls.clear()
    await tick_at(clock, 4.0, replica)

    assert store.calls == [("touch", ["b", "c"]), ("acquire",)]
    assert store.last_seen == {"a": 2.0, "b": 4.0, "c": 4.0}


async def test_the_leader_touches_what_it_heard_before_it_reads_the_lease_ages(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica
) -> None:
    replica = await start_replica(SwitchedLeadership(leading=True, calls=store.calls))
    await replica.hello(agent("agent-1"))

    await tick_at(clock, 1.0, replica)

    assert store.calls == [("touch", ["agent-1"]), ("acquire",), ("lease_ages",)]


async def test_a_touch_that_cannot_reach_the_store_keeps_the_heard_workers_for_the_next_tick(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica
) -> None:
    replica = await start_replica(SwitchedLeadership(leading=True, calls=store.calls))
    await replica.hello(agent("a"))
    unreachable = SchedulerUnavailable("the registry database is unreachable")
    store.fail_next_touch(unreachable)

    clock.now = 1.0
    with pytest.raises(SchedulerUnavailable) as raised:
        await replica.tick(1.0)

    assert raised.value is unreachable
    assert store.calls == [("touch", ["a"])]  # the round stopped there: no election, no sweep
    assert store.last_seen == {"a": 0.0}

    await replica.hello(agent("b"))
    store.calls.clear()
    await tick_at(clock, 2.0, replica)
    await tick_at(clock, 3.0, replica)

    assert store.calls == [
        ("touch", ["a", "b"]),
        ("acquire",),
        ("lease_ages",),
        ("acquire",),
        ("lease_ages",),
    ]
    assert store.last_seen == {"a": 2.0, "b": 2.0}


async def test_a_touch_failing_with_any_error_keeps_the_heard_workers_for_the_next_tick(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica
) -> None:
    replica = await start_replica(SwitchedLeadership(leading=True, calls=store.calls))
    await replica.hello(agent("a"))
    store.fail_next_touch(SchedulerInternalError("the driver failed in a way nobody foresaw"))

    clock.now = 1.0
    with pytest.raises(SchedulerInternalError):
        await replica.tick(1.0)
    store.calls.clear()
    await tick_at(clock, 2.0, replica)

    assert store.calls == [("touch", ["a"]), ("acquire",), ("lease_ages",)]
    assert store.last_seen == {"a": 2.0}


async def test_workers_found_lost_come_back_where_this_replica_holds_their_session(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica, elsewhere: WorkerRegistry
) -> None:
    replica = await start_replica(SwitchedLeadership(leading=False))
    events = EventLog(replica)
    _, idle = await replica.hello(agent("idle"))
    _, busy = await replica.hello(agent("busy"), running_jobs=["job-1"])
    _, gone = await replica.hello(agent("gone"))
    await replica.hello(agent("unheard"))
    await tick_at(clock, 1.0, replica)  # all four touched
    clock.now = 1.5
    await replica.heartbeat(idle, ResourceUsage(running_jobs=0))
    await replica.heartbeat(busy, ResourceUsage(running_jobs=1))
    await replica.heartbeat(gone, ResourceUsage())
    replica.goodbye(gone)  # heard, but its stream ended before the tick
    for worker_id in ("idle", "busy", "gone", "unheard"):
        # The leader's news came too late: it found them silent.
        await elsewhere.transition(worker_id, WorkerStatus.LOST, reason="no heartbeat for 3 s")
    await events.take()
    store.calls.clear()

    await tick_at(clock, 2.0, replica)

    assert store.calls == [("touch", ["busy", "gone", "idle"])]
    assert {
        worker_id: await status(replica, worker_id) for worker_id in ("idle", "busy", "gone", "unheard")
    } == {
        "idle": WorkerStatus.AVAILABLE,
        "busy": WorkerStatus.BUSY,
        "gone": WorkerStatus.LOST,
        "unheard": WorkerStatus.LOST,  # not heard since: this replica has no news of it
    }
    assert [(event.kind, event.worker_id, event.reason) for event in await events.take()] == [
        (WorkerEventKind.BUSY, "busy", "heartbeats resumed"),
        (WorkerEventKind.AVAILABLE, "idle", "heartbeats resumed"),
    ]


# --- leadership -----------------------------------------------------------------------------------------


async def test_each_change_of_leadership_is_told_once_and_ticks_without_a_change_tell_nothing(
    clock: FakeClock, start_replica: StartReplica
) -> None:
    leadership = SwitchedLeadership(leading=False)
    replica = await start_replica(leadership)
    told: list[bool] = []
    replica.rounds.on_leadership = told.append

    leading: list[bool] = []
    for second, answer in enumerate([False, True, True, False, False, True], start=1):
        leadership.leading = answer
        await tick_at(clock, float(second), replica)
        leading.append(replica.leading)

    assert leading == [False, True, True, False, False, True]
    assert told == [True, False, True]


async def test_a_scheduler_alone_with_its_store_leads_from_the_first_tick_and_sweeps_its_own_leases(
    clock: FakeClock,
) -> None:
    # A plain memory store has neither touch nor lease_ages: a call to either would fail this test.
    scheduler = Scheduler(
        MemoryRegistryStore(), liveness=LIVENESS, clock=clock.wall, monotonic=clock.monotonic
    )
    await scheduler.start(sweep=False)
    told: list[bool] = []
    scheduler.rounds.on_leadership = told.append
    try:
        await scheduler.hello(agent("agent-1"))  # lease to 3, LOST at 4
        seen = {}
        for second in (1.0, 2.0, 3.0, 4.0):
            await tick_at(clock, second, scheduler)
            seen[second] = await status(scheduler, "agent-1")

        assert told == [True]
        assert scheduler.leading is True
        assert seen == {
            1.0: WorkerStatus.AVAILABLE,
            2.0: WorkerStatus.AVAILABLE,
            3.0: WorkerStatus.AVAILABLE,
            4.0: WorkerStatus.LOST,
        }
    finally:
        await scheduler.stop()


# --- taking over ----------------------------------------------------------------------------------------


# The takeover at 10, plus the 5 s grace.
LOST_THEN_REMOVED_AT_15 = {
    10.0: WorkerStatus.LOST,
    11.0: WorkerStatus.LOST,
    12.0: WorkerStatus.LOST,
    13.0: WorkerStatus.LOST,
    14.0: WorkerStatus.LOST,
    15.0: None,
}


async def statuses_after_taking_over_at_10(
    clock: FakeClock, replica: Scheduler, leadership: SwitchedLeadership, worker_id: str
) -> dict[float, WorkerStatus | None]:
    """The replica takes the lead at 10 and ticks each second to 15: the worker's status after each tick."""
    leadership.leading = True
    seen = {}
    for second in range(10, 16):
        await tick_at(clock, float(second), replica)
        seen[float(second)] = await status(replica, worker_id)
    return seen


async def test_workers_stored_lost_at_a_takeover_are_removed_a_grace_after_it(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica, elsewhere: WorkerRegistry
) -> None:
    leadership = SwitchedLeadership(leading=False)
    replica = await start_replica(leadership)
    events = EventLog(replica)
    await elsewhere.register(agent("gone"), lease_ttl=3.0)
    await tick_at(clock, 1.0, replica)
    clock.now = 2.0
    await elsewhere.transition("gone", WorkerStatus.LOST, reason="no heartbeat for 3 s")  # the old leader
    for second in range(2, 10):
        await tick_at(clock, float(second), replica)

    assert (
        await statuses_after_taking_over_at_10(clock, replica, leadership, "gone") == LOST_THEN_REMOVED_AT_15
    )
    [event] = await events.take()
    assert (event.kind, event.worker_id, event.reason) == (
        WorkerEventKind.EXPIRED,
        "gone",
        "lost for more than 5 s",
    )


# --- races and corners of taking over and bringing back ---------------------------------------------------


async def test_a_worker_lost_when_the_replica_started_and_lost_again_before_its_takeover_gets_a_full_grace(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica, elsewhere: WorkerRegistry
) -> None:
    await elsewhere.register(agent("roamer"), lease_ttl=3.0)
    await elsewhere.transition("roamer", WorkerStatus.LOST, reason="no heartbeat for 3 s")
    leadership = SwitchedLeadership(leading=False)
    replica = await start_replica(leadership)  # at 0 the store says roamer is LOST
    clock.now = 3.0
    await elsewhere.transition("roamer", WorkerStatus.AVAILABLE, reason="heartbeats resumed")  # on another
    clock.now = 9.0
    await elsewhere.transition("roamer", WorkerStatus.LOST, reason="no heartbeat for 3 s")  # the old leader
    for second in range(1, 10):
        await tick_at(clock, float(second), replica)

    assert (
        await statuses_after_taking_over_at_10(clock, replica, leadership, "roamer")
        == LOST_THEN_REMOVED_AT_15
    )


async def test_a_takeover_whose_restore_cannot_reach_the_store_is_completed_at_the_next_tick(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica, elsewhere: WorkerRegistry
) -> None:
    leadership = SwitchedLeadership(leading=False)
    replica = await start_replica(leadership)
    told: list[bool] = []
    replica.rounds.on_leadership = told.append
    await elsewhere.register(agent("gone"), lease_ttl=3.0)
    clock.now = 1.0
    await elsewhere.transition("gone", WorkerStatus.LOST, reason="no heartbeat for 3 s")  # the old leader

    leadership.leading = True
    store.fail_next_leases(SchedulerUnavailable("the registry database is unreachable"))
    clock.now = 2.0
    with pytest.raises(SchedulerUnavailable):
        await replica.tick(2.0)
    for second in range(3, 9):  # the takeover completes at 3: "gone" is removed a grace later, at 8
        await tick_at(clock, float(second), replica)

    assert told == [True]
    assert await status(replica, "gone") is None


async def test_a_worker_removed_between_the_touch_and_its_return_does_not_stop_the_tick(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica, elsewhere: WorkerRegistry
) -> None:
    replica = await start_replica(SwitchedLeadership(leading=False))
    await replica.hello(agent("x"))
    await replica.hello(agent("y"))
    for worker_id in ("x", "y"):
        await elsewhere.transition(worker_id, WorkerStatus.LOST, reason="no heartbeat for 3 s")

    async def unregister_x() -> None:
        await elsewhere.unregister("x")  # the control plane, through another replica

    store.after_next_touch(unregister_x)
    await tick_at(clock, 1.0, replica)

    assert await status(replica, "x") is None
    assert await status(replica, "y") is WorkerStatus.AVAILABLE


async def test_a_draining_worker_found_lost_by_the_leader_stays_draining_when_this_replica_brings_it_back(
    store: SharedMemoryStore, clock: FakeClock, start_replica: StartReplica, elsewhere: WorkerRegistry
) -> None:
    replica = await start_replica(SwitchedLeadership(leading=False))
    _, session = await replica.hello(agent("retiring"))
    await replica.drain("retiring", deadline=30.0, reason="decommission")
    clock.now = 0.5
    await replica.heartbeat(session, ResourceUsage(running_jobs=0))
    await elsewhere.transition("retiring", WorkerStatus.LOST, reason="no heartbeat for 3 s")

    await tick_at(clock, 1.0, replica)

    assert await status(replica, "retiring") is WorkerStatus.DRAINING


async def test_a_scheduler_alone_with_its_store_keeps_no_list_of_whom_it_heard(clock: FakeClock) -> None:
    scheduler = Scheduler(
        MemoryRegistryStore(), liveness=LIVENESS, clock=clock.wall, monotonic=clock.monotonic
    )
    await scheduler.start(sweep=False)
    try:
        for number in range(3):
            await scheduler.hello(agent(f"ephemeral-{number}"))
            await scheduler.unregister(f"ephemeral-{number}")
        await tick_at(clock, 1.0, scheduler)

        assert scheduler.monitor._heard == set()
    finally:
        await scheduler.stop()


# --- a worker deleted under its agent's open stream ------------------------------------------------------


async def test_an_agent_whose_worker_another_replica_deleted_is_told_to_register_again_at_the_next_sync(
    store: SharedMemoryStore, clock: FakeClock, elsewhere: WorkerRegistry, start_replica: StartReplica
) -> None:
    replica = await start_replica(SwitchedLeadership(leading=False))
    _, session = await replica.hello(agent("deleted"))
    _, other = await replica.hello(agent("kept"))
    await tick_at(clock, 1.0, replica)  # both heard and touched: nothing to say
    assert session.commands.empty() and other.commands.empty()

    await elsewhere.unregister("deleted")  # by a replica (or an operator) that could not tell this one
    clock.now = 1.5
    await replica.heartbeat(session, ResourceUsage())
    await replica.heartbeat(other, ResourceUsage())
    await tick_at(clock, 2.0, replica)

    assert session.commands.get_nowait() == WorkerCommand(
        CommandKind.REREGISTER, "the scheduler forgot this worker"
    )
    assert other.commands.empty()
    assert ("touch", ["deleted", "kept"]) in store.calls
