"""EventHub: numbered lifecycle events, fanned out in order to every watcher, with bounded queues."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from hodei.domain import WorkerCapabilities, WorkerRecord, WorkerStatus, WorkerType
from hodei.errors import ErrorCode, SchedulerOverloaded
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.scheduler._events import EventHub, Watcher, WatcherFellBehind

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
HUB_TIME = EPOCH + timedelta(days=1)
RECORD_TIME = EPOCH + timedelta(hours=3)


def fixed_clock() -> datetime:
    return HUB_TIME


def record(worker_id: str = "worker-1", *, updated_at: datetime | None = RECORD_TIME) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        worker_type=WorkerType.DOCKER,
        capabilities=WorkerCapabilities(cpu_cores=2, memory_mb=4096),
        status=WorkerStatus.AVAILABLE,
        updated_at=updated_at,
    )


async def collect(watcher: Watcher) -> list[WorkerEvent]:
    """Every event the watcher yields until its iteration ends (failing the test after 1 s)."""

    async def read() -> list[WorkerEvent]:
        return [event async for event in watcher]

    return await asyncio.wait_for(read(), 1)


async def next_event(iterator: object) -> WorkerEvent:
    return await asyncio.wait_for(anext(iterator), 1)  # type: ignore[call-overload]


def publish_workers(hub: EventHub, *worker_ids: str) -> list[WorkerEvent]:
    return [hub.publish(WorkerEventKind.REGISTERED, worker_id) for worker_id in worker_ids]


# --- numbering ------------------------------------------------------------------------------------------


def test_sequences_start_at_one_and_increase_by_one() -> None:
    hub = EventHub(clock=fixed_clock)

    events = publish_workers(hub, "a", "b", "c", "d")

    assert [event.sequence for event in events] == [1, 2, 3, 4]
    assert hub.sequence == 4


def test_a_published_event_carries_what_was_published() -> None:
    hub = EventHub(clock=fixed_clock)
    worker = record("worker-7")

    event = hub.publish(WorkerEventKind.BUSY, "worker-7", worker, "a job started")

    assert event == WorkerEvent(1, WorkerEventKind.BUSY, "worker-7", worker, "a job started", RECORD_TIME)


def test_a_pool_wide_event_has_no_worker_and_no_record() -> None:
    hub = EventHub(clock=fixed_clock)

    event = hub.publish(WorkerEventKind.EXPIRY_SLOWED, reason="too many at once")

    assert event == WorkerEvent(1, WorkerEventKind.EXPIRY_SLOWED, "", None, "too many at once", HUB_TIME)


# --- event time -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "about", "dated"),
    [
        (WorkerEventKind.UPDATED, record(updated_at=RECORD_TIME), RECORD_TIME),
        (WorkerEventKind.UPDATED, record(updated_at=None), HUB_TIME),
        (WorkerEventKind.DISCONNECTED, None, HUB_TIME),
    ],
    ids=["a-record-with-an-update-time", "a-record-without-an-update-time", "no-record"],
)
def test_an_event_is_dated_by_its_records_update_time_else_by_the_clock(
    kind: WorkerEventKind, about: WorkerRecord | None, dated: datetime
) -> None:
    hub = EventHub(clock=fixed_clock)

    event = hub.publish(kind, "worker-1", about)

    assert event.time == dated


# --- snapshots ------------------------------------------------------------------------------------------


def test_a_snapshot_event_carries_the_last_published_sequence() -> None:
    hub = EventHub(clock=fixed_clock)
    publish_workers(hub, "a", "b", "c")
    worker = record("worker-9")

    snapshot = hub.snapshot_event(worker)

    assert snapshot == WorkerEvent(3, WorkerEventKind.SNAPSHOT, "worker-9", worker, "", HUB_TIME)
    assert hub.sequence == 3


def test_a_snapshot_event_before_any_event_carries_sequence_zero() -> None:
    hub = EventHub(clock=fixed_clock)

    snapshot = hub.snapshot_event(record())

    assert snapshot.sequence == 0
    assert snapshot.kind is WorkerEventKind.SNAPSHOT


async def test_a_snapshot_event_is_not_delivered_to_watchers() -> None:
    hub = EventHub(clock=fixed_clock)
    watcher = hub.watch()

    hub.snapshot_event(record())
    published = hub.publish(WorkerEventKind.AVAILABLE, "worker-1")
    watcher.close()

    assert await collect(watcher) == [published]


# --- fan-out --------------------------------------------------------------------------------------------


async def test_every_watcher_gets_every_event_in_order() -> None:
    hub = EventHub(clock=fixed_clock)
    first, second = hub.watch(), hub.watch()

    published = publish_workers(hub, "a", "b", "c", "d", "e")
    hub.close()

    assert await collect(first) == published
    assert await collect(second) == published


async def test_a_watcher_of_some_kinds_gets_only_those_and_the_hub_wants_only_what_someone_watches() -> None:
    hub = EventHub(clock=fixed_clock)
    assert not hub.wants(WorkerEventKind.REGISTERED)
    demand_only = hub.watch({WorkerEventKind.DEMAND})
    nothing = hub.watch(set())  # asked for kinds, none of them known: hears nothing

    assert (hub.wants(WorkerEventKind.DEMAND), hub.wants(WorkerEventKind.REGISTERED)) == (True, False)
    registered = hub.publish(WorkerEventKind.REGISTERED, "a", record("a"))
    demand = hub.publish(WorkerEventKind.DEMAND, reason="1 waiting")
    everything = hub.watch()
    assert hub.wants(WorkerEventKind.REGISTERED)
    later = hub.publish(WorkerEventKind.REGISTERED, "b", record("b"))
    hub.close()

    assert registered.sequence == 1  # still numbered: the sequence is the hub's, whoever hears it
    assert await collect(demand_only) == [demand]
    assert await collect(nothing) == []
    assert await collect(everything) == [later]


async def test_a_watcher_created_later_gets_only_later_events() -> None:
    hub = EventHub(clock=fixed_clock)
    early = hub.watch()
    before = publish_workers(hub, "a", "b")

    late = hub.watch()
    after = publish_workers(hub, "c", "d")
    hub.close()

    assert await collect(early) == before + after
    assert await collect(late) == after
    assert [event.sequence for event in after] == [3, 4]


async def test_a_waiting_watcher_wakes_for_an_event_published_later() -> None:
    hub = EventHub(clock=fixed_clock)
    watcher = hub.watch()
    iterator = aiter(watcher)
    waiting = asyncio.ensure_future(next_event(iterator))
    await asyncio.sleep(0)  # one turn of the loop (no waiting on time): the reader blocks on the empty queue
    assert not waiting.done()

    published = hub.publish(WorkerEventKind.CONNECTED, "worker-1")

    assert await waiting == published
    hub.close()


async def test_the_hub_counts_its_watchers() -> None:
    hub = EventHub(clock=fixed_clock)
    first, _second = hub.watch(), hub.watch()
    assert hub.watchers == 2

    first.close()

    assert hub.watchers == 1
    hub.close()
    assert hub.watchers == 0


# --- closing --------------------------------------------------------------------------------------------


async def test_closing_a_watcher_ends_its_iteration_after_the_events_it_already_had() -> None:
    hub = EventHub(clock=fixed_clock)
    watcher = hub.watch()
    had = publish_workers(hub, "a", "b")

    watcher.close()
    publish_workers(hub, "c")

    assert await collect(watcher) == had


async def test_a_closed_watcher_iterated_again_ends_at_once() -> None:
    hub = EventHub(clock=fixed_clock)
    watcher = hub.watch()
    had = publish_workers(hub, "a")
    watcher.close()
    assert await collect(watcher) == had

    assert await collect(watcher) == []


async def test_closing_a_watcher_leaves_the_other_watchers_receiving() -> None:
    hub = EventHub(clock=fixed_clock)
    closed, open_ = hub.watch(), hub.watch()
    before = publish_workers(hub, "a")

    closed.close()
    after = publish_workers(hub, "b")
    hub.close()

    assert await collect(closed) == before
    assert await collect(open_) == before + after


async def test_closing_a_watcher_while_its_reader_waits_ends_the_iteration() -> None:
    hub = EventHub(clock=fixed_clock)
    watcher = hub.watch()
    reading = asyncio.ensure_future(collect(watcher))
    await asyncio.sleep(0)  # one turn of the loop (no waiting on time): the reader blocks on the empty queue
    assert not reading.done()

    watcher.close()

    assert await reading == []


async def test_closing_a_watcher_whose_queue_is_exactly_full_ends_its_iteration_after_those_events() -> None:
    hub = EventHub(clock=fixed_clock, watcher_queue=3)
    watcher = hub.watch()
    had = publish_workers(hub, "a", "b", "c")

    watcher.close()

    assert await collect(watcher) == had


async def test_closing_the_hub_ends_every_watcher_after_the_events_it_had() -> None:
    hub = EventHub(clock=fixed_clock)
    watchers = [hub.watch(), hub.watch(), hub.watch()]
    published = publish_workers(hub, "a", "b")

    hub.close()

    for watcher in watchers:
        assert await collect(watcher) == published
    assert hub.watchers == 0


async def test_closing_the_hub_ends_a_watcher_whose_queue_is_exactly_full_after_those_events() -> None:
    hub = EventHub(clock=fixed_clock, watcher_queue=3)
    watcher = hub.watch()
    had = publish_workers(hub, "a", "b", "c")

    hub.close()

    assert await collect(watcher) == had


async def test_events_published_after_the_hub_closed_reach_no_watcher() -> None:
    hub = EventHub(clock=fixed_clock)
    watcher = hub.watch()
    hub.close()

    event = hub.publish(WorkerEventKind.REGISTERED, "late")

    assert event.sequence == 1
    assert await collect(watcher) == []


# --- falling behind -------------------------------------------------------------------------------------


async def test_a_watcher_that_falls_behind_gets_the_events_it_had_then_watcher_fell_behind() -> None:
    hub = EventHub(clock=fixed_clock, watcher_queue=3)
    slow = hub.watch()
    had = publish_workers(hub, "a", "b", "c")

    publish_workers(hub, "d")  # the fourth does not fit

    received: list[WorkerEvent] = []
    iterator = aiter(slow)
    for _ in had:
        received.append(await next_event(iterator))
    assert received == had
    with pytest.raises(WatcherFellBehind) as raised:
        await next_event(iterator)
    assert isinstance(raised.value, SchedulerOverloaded)
    assert raised.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert raised.value.retryable is True


async def test_a_watcher_that_fell_behind_is_cut_off_from_later_events() -> None:
    hub = EventHub(clock=fixed_clock, watcher_queue=3)
    slow = hub.watch()
    publish_workers(hub, "a", "b", "c", "d")

    assert slow.fell_behind is True
    assert hub.watchers == 0
    publish_workers(hub, "e", "f")

    received: list[WorkerEvent] = []
    with pytest.raises(WatcherFellBehind):
        async with asyncio.timeout(1):
            async for event in slow:
                received.append(event)
    assert [event.worker_id for event in received] == ["a", "b", "c"]


async def test_other_watchers_keep_receiving_when_one_falls_behind() -> None:
    hub = EventHub(clock=fixed_clock, watcher_queue=3)
    slow = hub.watch()
    fast = hub.watch()
    fast_iterator = aiter(fast)
    received: list[WorkerEvent] = []

    published: list[WorkerEvent] = []
    for worker_id in ("a", "b", "c", "d", "e", "f"):
        published.append(hub.publish(WorkerEventKind.REGISTERED, worker_id))
        received.append(await next_event(fast_iterator))  # the fast watcher keeps up

    assert received == published
    assert slow.fell_behind is True
    assert fast.fell_behind is False
    assert hub.watchers == 1
    with pytest.raises(WatcherFellBehind):
        await collect(slow)
    hub.close()
    assert await collect(fast) == []


async def test_closing_a_watcher_that_fell_behind_still_reports_that_it_fell_behind() -> None:
    hub = EventHub(clock=fixed_clock, watcher_queue=3)
    slow = hub.watch()
    publish_workers(hub, "a", "b", "c", "d")

    slow.close()

    received: list[WorkerEvent] = []
    with pytest.raises(WatcherFellBehind):
        async with asyncio.timeout(1):
            async for event in slow:
                received.append(event)
    assert [event.worker_id for event in received] == ["a", "b", "c"]
