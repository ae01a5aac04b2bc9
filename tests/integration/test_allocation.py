"""Workers acquired for jobs, on a real scheduler over gRPC: binding, the queue, leases, results, restarts.

Agents are real Connect streams (hodei.transport ConnectStream) answering as an agent would; workers without an
agent are registered through the public client. Every outcome is read back from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    ErrorCode,
    Job,
    JobOutcome,
    JobResult,
    NoWorkerFits,
    SchedulerError,
    SchedulerPortClient,
    SchedulerTimeout,
    WorkerNotIdle,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
)
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.pools import Requirements, ScaleEvent
from hodei.stores import MemoryRegistryStore, SqliteRegistryStore
from hodei.testing import EmbeddedScheduler
from hodei.transport._stream import ConnectStream
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(60)

FAST = LivenessConfig(
    heartbeat_interval=0.1, lease_ttl=0.6, lost_grace=30.0, recovery_window=0.0, sweep_interval=0.05
)


def worker(
    worker_id: str, cpu: int = 2, memory: int = 1024, *, pool: str = "default", **labels: str
) -> DynamicWorker:
    config = DynamicWorkerConfig(cpu_cores=cpu, memory_mb=memory, pool=pool, labels=labels)
    return DynamicWorker(worker_id, WorkerType.PROCESS, config, incarnation=1)


class Agents:
    """Real Connect streams, one per worker, heartbeating until closed."""

    def __init__(self, scheduler: EmbeddedScheduler) -> None:
        self._scheduler = scheduler
        self.streams: dict[str, ConnectStream] = {}
        self._beats: list[asyncio.Task[None]] = []

    async def connect(self, *workers: DynamicWorker) -> None:
        for w in workers:
            stream = ConnectStream(self._scheduler.channel())
            await stream.open(w, timeout=10)
            self.streams[w.worker_id] = stream
            self._beats.append(asyncio.create_task(self._beat(stream)))

    async def _beat(self, stream: ConnectStream) -> None:
        from hodei import ResourceUsage

        sequence = 0
        with contextlib.suppress(Exception):
            while True:
                sequence += 1
                await stream.heartbeat(sequence, ResourceUsage())
                await asyncio.sleep(0.1)

    def silence(self, worker_id: str) -> None:
        """The agent dies: its stream is cut and it never speaks again."""
        self.streams.pop(worker_id).cancel()

    async def close(self) -> None:
        for task in self._beats:
            task.cancel()
        await asyncio.gather(*self._beats, return_exceptions=True)
        for stream in self.streams.values():
            stream.cancel()


@pytest_asyncio.fixture
async def scheduler() -> AsyncIterator[EmbeddedScheduler]:
    async with EmbeddedScheduler(liveness=FAST) as embedded:
        yield embedded


@pytest_asyncio.fixture
async def client(scheduler: EmbeddedScheduler) -> AsyncIterator[SchedulerPortClient]:
    async with scheduler.client() as port:
        yield port


@pytest_asyncio.fixture
async def agents(scheduler: EmbeddedScheduler) -> AsyncIterator[Agents]:
    connected = Agents(scheduler)
    yield connected
    await connected.close()


async def test_an_acquire_binds_the_smallest_free_worker_that_fits_and_a_release_frees_it(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    # No agents: a holder that uses the worker itself may take a worker without one.
    for w in (worker("big", cpu=16), worker("small", cpu=2), worker("medium", cpu=4)):
        await client.register_worker(w)

    acquired = await client.acquire_worker("job-1", Requirements(cpu_cores=3))

    assert acquired.created is True
    assert acquired.record.worker_id == "medium"
    assert acquired.record.status is WorkerStatus.BUSY
    assert acquired.assignment.job_id == "job-1"
    stored = await scheduler.get_worker("medium")
    assert stored is not None
    assert (stored.status, stored.assignment, stored.use_count) == (WorkerStatus.BUSY, acquired.assignment, 1)

    released = await client.release_worker(acquired.assignment.assignment_id, reason="done")
    assert released.result == JobResult(JobOutcome.SUCCEEDED, reason="done")
    assert released.record is not None and released.record.status is WorkerStatus.AVAILABLE
    stored = await scheduler.get_worker("medium")
    assert stored is not None
    assert (stored.status, stored.assignment, stored.use_count) == (WorkerStatus.AVAILABLE, None, 1)
    # Released again: the same end, nothing changes.
    again = await client.release_worker(acquired.assignment.assignment_id, outcome=JobOutcome.FAILED)
    assert again.result == released.result


async def test_a_retried_acquire_answers_the_same_assignment_and_never_binds_a_second_worker(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    for index in range(3):
        await client.register_worker(worker(f"w-{index}"))

    first, *retries = await asyncio.gather(
        *(client.acquire_worker("job-once", Requirements()) for _ in range(5))
    )

    assert {r.assignment for r in retries} == {first.assignment}
    assert sum(r.created for r in (first, *retries)) == 1
    busy = [w for w in (await client.list_workers()).workers if w.status is WorkerStatus.BUSY]
    assert [w.worker_id for w in busy] == [first.record.worker_id]


async def test_an_acquire_waits_until_a_worker_fits_and_times_out_with_nothing_bound(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_worker(worker("only"))
    held = await client.acquire_worker("holder", Requirements())

    with pytest.raises(SchedulerTimeout) as timed_out:
        await client.acquire_worker("too-late", Requirements(), wait=0.3)
    assert timed_out.value.code is ErrorCode.DEADLINE_EXCEEDED
    assert await client.get_demand() == []

    waiting = asyncio.create_task(client.acquire_worker("next", Requirements(), wait=10))

    async def one_waits() -> bool:
        return [d.waiting for d in await client.get_demand()] == [1]

    await wait_for(one_waits)
    await client.release_worker(held.assignment.assignment_id)
    acquired = await waiting
    assert acquired.record.worker_id == "only" and acquired.assignment.job_id == "next"
    assert await client.get_demand() == []


async def test_waiters_are_served_by_priority_then_arrival_and_a_large_one_is_not_starved(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_worker(worker("large", cpu=8))
    blocker = await client.acquire_worker("blocker", Requirements(cpu_cores=8))
    order: list[str] = []

    async def acquire(job_id: str, requirements: Requirements, priority: int = 0) -> None:
        acquired = await client.acquire_worker(job_id, requirements, priority=priority, wait=20)
        order.append(job_id)
        await client.release_worker(acquired.assignment.assignment_id)

    tasks = [asyncio.create_task(acquire("big-first", Requirements(cpu_cores=8)))]

    async def waiting(count: int) -> bool:
        return sum(d.waiting for d in await client.get_demand()) == count

    await wait_for(lambda: waiting(1))
    tasks += [asyncio.create_task(acquire(f"small-{i}", Requirements(cpu_cores=1))) for i in range(3)]
    await wait_for(lambda: waiting(4))
    tasks.append(asyncio.create_task(acquire("urgent", Requirements(cpu_cores=1), priority=5)))
    await wait_for(lambda: waiting(5))

    await client.release_worker(blocker.assignment.assignment_id)
    await asyncio.wait_for(asyncio.gather(*tasks), 20)

    assert order == ["urgent", "big-first", "small-0", "small-1", "small-2"]


async def test_requirements_no_pool_and_no_worker_can_meet_are_refused_at_once(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_worker(worker("w", cpu=4, os="linux"))

    for requirements in (Requirements(cpu_cores=64), Requirements(labels={"os": "windows"})):
        with pytest.raises(NoWorkerFits) as refused:
            await client.acquire_worker("impossible", requirements, wait=30)
        assert refused.value.code is ErrorCode.FAILED_PRECONDITION
        assert "no pool's template and no registered worker fits" in refused.value.message
    # A job needs an agent to run it: the worker registered without one cannot.
    with pytest.raises(NoWorkerFits) as refused:
        await client.acquire_worker("needs-agent", Requirements(), job=Job(("true",)), wait=30)
    assert refused.value.code is ErrorCode.FAILED_PRECONDITION
    assert "with an agent to run the job" in refused.value.message
    assert await client.get_demand() == []


async def test_invalid_acquires_name_the_field_and_bind_nothing(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_worker(worker("w"))
    cases = {
        "": "job_id",
        "ok-1": "requirements.cpu_cores",
        "ok-2": "job.command",
        "ok-3": "job.environment['1BAD']",
    }
    requests = {
        "": {},
        "ok-1": {"requirements": Requirements(cpu_cores=-1)},
        "ok-2": {"job": Job(())},
        "ok-3": {"job": Job(("true",), {"1BAD": "x"})},
    }
    for job_id, field in cases.items():
        options = requests[job_id]
        with pytest.raises(SchedulerError) as refused:
            await client.acquire_worker(
                job_id,
                options.get("requirements", Requirements()),
                job=options.get("job"),  # type: ignore[arg-type]
            )
        assert refused.value.code is ErrorCode.INVALID_ARGUMENT
        assert [v.field for v in refused.value.violations] == [field]
    stored = await scheduler.get_worker("w")
    assert stored is not None and (stored.status, stored.assignment) == (WorkerStatus.AVAILABLE, None)


async def test_a_job_goes_down_the_agents_stream_and_its_result_ends_the_assignment(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, agents: Agents
) -> None:
    await agents.connect(worker("agent-1"))
    commands = agents.streams["agent-1"].commands()
    job = Job(("sh", "-c", "exit 7"), {"STAGE": "test"}, timeout=30.0)

    acquired = await client.acquire_worker("job-7", Requirements(), job=job)

    command = await asyncio.wait_for(anext(commands), 10)
    assert command == WorkerCommand(CommandKind.RUN_JOB, assignment=acquired.assignment)
    assert acquired.assignment.job == job
    result = JobResult(JobOutcome.FAILED, exit_code=7, output_tail="boom\n", reason="exit code 7")
    await agents.streams["agent-1"].job_finished(acquired.assignment.assignment_id, result)

    view = await client.renew_assignment(acquired.assignment.assignment_id, wait=10)
    assert view.result == result
    stored = await scheduler.get_worker("agent-1")
    assert stored is not None and (stored.status, stored.assignment) == (WorkerStatus.AVAILABLE, None)


async def test_a_holder_that_stops_renewing_loses_its_assignment_and_a_renewing_one_keeps_it(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, agents: Agents
) -> None:
    await agents.connect(worker("kept"), worker("dropped"))
    kept = await client.acquire_worker("renewed", Requirements(), lease_ttl=1.0)
    dropped = await client.acquire_worker("abandoned", Requirements(), lease_ttl=1.0)
    assert {kept.record.worker_id, dropped.record.worker_id} == {"kept", "dropped"}

    async def abandoned() -> bool:
        await client.renew_assignment(kept.assignment.assignment_id)
        stored = await scheduler.get_worker(dropped.record.worker_id)
        return stored is not None and stored.status is WorkerStatus.AVAILABLE

    await wait_for(abandoned, timeout=10)
    view = await client.renew_assignment(dropped.assignment.assignment_id)
    assert view.result is not None and view.result.outcome is JobOutcome.ABANDONED
    still = await client.renew_assignment(kept.assignment.assignment_id)
    assert still.result is None
    stored = await scheduler.get_worker(kept.record.worker_id)
    assert stored is not None and stored.assignment == kept.assignment


async def test_a_busy_worker_that_goes_lost_fails_its_assignment_and_its_holder_is_told(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, agents: Agents
) -> None:
    await agents.connect(worker("doomed"))
    acquired = await client.acquire_worker("on-doomed", Requirements(), job=Job(("sleep", "60")))
    waiting = asyncio.create_task(client.renew_assignment(acquired.assignment.assignment_id, wait=20))

    agents.silence("doomed")

    view = await asyncio.wait_for(waiting, 20)
    assert view.result is not None and view.result.outcome is JobOutcome.WORKER_LOST
    stored = await scheduler.get_worker("doomed")
    assert stored is not None and (stored.status, stored.assignment) == (WorkerStatus.LOST, None)


async def test_two_hundred_acquires_on_a_hundred_workers_bind_each_worker_once(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_workers([worker(f"w-{i:03}") for i in range(100)])

    outcomes = await asyncio.gather(
        *(client.acquire_worker(f"job-{i:03}", Requirements(), wait=1.0) for i in range(200)),
        return_exceptions=True,
    )

    bound = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(bound) == 100 and all(isinstance(e, SchedulerTimeout) for e in refused)
    assert len({b.record.worker_id for b in bound}) == 100
    records = (await client.list_workers(page_size=1000)).workers
    assert {r.status for r in records} == {WorkerStatus.BUSY}
    assert {r.assignment.job_id for r in records if r.assignment} == {b.assignment.job_id for b in bound}


async def test_a_restarted_scheduler_finds_busy_workers_still_bound_to_their_jobs(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = await SqliteRegistryStore.open(path)
    try:
        async with EmbeddedScheduler(store=store, liveness=FAST) as first, first.client() as client:
            await client.register_worker(worker("durable"))
            acquired = await client.acquire_worker("survivor", Requirements(), lease_ttl=30)
    finally:
        await store.close()

    store = await SqliteRegistryStore.open(path)
    try:
        async with EmbeddedScheduler(store=store, liveness=FAST) as second, second.client() as client:
            view = await client.renew_assignment(acquired.assignment.assignment_id)
            assert view.result is None and view.assignment == acquired.assignment
            again = await client.acquire_worker("survivor", Requirements())
            assert (again.created, again.assignment) == (False, acquired.assignment)
            released = await client.release_worker(acquired.assignment.assignment_id)
            assert released.record is not None and released.record.status is WorkerStatus.AVAILABLE
    finally:
        await store.close()


async def test_an_unknown_assignment_is_not_found(client: SchedulerPortClient) -> None:
    with pytest.raises(SchedulerError) as missing:
        await client.renew_assignment("no-such-assignment")
    assert missing.value.code is ErrorCode.NOT_FOUND
    assert [v.field for v in missing.value.violations] == ["assignment_id"]


async def test_watchers_see_the_waiting_demand_and_the_assignments(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_worker(worker("w", cpu=4, os="linux"))
    held = await client.acquire_worker("first", Requirements(cpu_cores=2))
    watch = client.watch_workers()
    seen: list[tuple[WorkerEventKind, str, tuple[tuple[str, int], ...]]] = []

    async def watching() -> None:
        async for event in watch:
            seen.append((event.kind, event.reason, tuple((d.shape, d.waiting) for d in event.demand)))

    reader = asyncio.create_task(watching())
    await wait_for(lambda: _true(scheduler.scheduler.events.watchers == 1))
    waiting = asyncio.create_task(
        client.acquire_worker("second", Requirements(cpu_cores=2, labels={"os": "linux"}), wait=10)
    )
    await wait_for(lambda: _true(any(kind is WorkerEventKind.DEMAND for kind, _, _ in seen)))
    await client.release_worker(held.assignment.assignment_id)
    await waiting
    await wait_for(lambda: _true(len([k for k, _, _ in seen if k is WorkerEventKind.DEMAND]) == 2))
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader

    assert [
        entry
        for entry in seen
        if entry[0] in {WorkerEventKind.DEMAND, WorkerEventKind.ASSIGNED, WorkerEventKind.RELEASED}
    ] == [
        (WorkerEventKind.DEMAND, "1 waiting", (("cpu=2 os=linux", 1),)),
        (WorkerEventKind.RELEASED, "succeeded", ()),
        (WorkerEventKind.ASSIGNED, "second", ()),
        (WorkerEventKind.DEMAND, "0 waiting", ()),
    ]


async def test_a_watch_of_demand_only_hears_only_demand_and_registrations_build_no_event(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    """The pool autoscaler's watch: the scheduler sends it DEMAND events and builds none for registrations."""
    events = scheduler.scheduler.events
    seen: list[WorkerEvent] = []

    async def watching() -> None:
        async for event in client.watch_workers(kinds={WorkerEventKind.DEMAND}):
            seen.append(event)

    reader = asyncio.create_task(watching())
    await wait_for(lambda: _true(events.watchers == 1))
    assert (events.wants(WorkerEventKind.DEMAND), events.wants(WorkerEventKind.REGISTERED)) == (True, False)
    sequence = events.sequence
    await client.register_worker(worker("w"))
    assert events.sequence == sequence  # no REGISTERED event was made for a watcher that does not want it
    held = await client.acquire_worker("first", Requirements())
    waiting = asyncio.create_task(client.acquire_worker("second", Requirements(), wait=10))
    await wait_for(lambda: _true(len(seen) == 2))  # the first bound at once, then the second waits
    await client.release_worker(held.assignment.assignment_id)
    await waiting
    await wait_for(lambda: _true(len(seen) == 3))
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader

    assert [(e.kind, e.reason) for e in seen] == [
        (WorkerEventKind.DEMAND, "0 waiting"),
        (WorkerEventKind.DEMAND, "1 waiting"),
        (WorkerEventKind.DEMAND, "0 waiting"),
    ]


async def test_a_watch_of_no_kind_at_all_is_a_value_error_not_a_watch_of_every_kind(
    client: SchedulerPortClient,
) -> None:
    with pytest.raises(ValueError, match="at least one kind"):
        async for _ in client.watch_workers(kinds=set()):
            pass


async def _true(value: bool) -> bool:
    return value


POOLS = """\
[pools.builders]
kind = "dynamic"
provider = "process"
max = 4

[pools.builders.template]
cpu_cores = 8
memory_mb = 8192
labels = { os = "linux" }

[pools.tiny]
kind = "static"
provider = "process"
size = 2
template = { cpu_cores = 1, memory_mb = 512 }
"""


async def test_pools_applied_are_listed_with_their_workers_and_waiting_and_make_requirements_possible(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    # Nothing registered fits 8 cores: refused at once, until a pool's template fits.
    with pytest.raises(NoWorkerFits) as refused:
        await client.acquire_worker("early", Requirements(cpu_cores=8), wait=5)
    assert refused.value.code is ErrorCode.FAILED_PRECONDITION

    applied = await client.apply_pools("pools.toml", POOLS, timeout=10)
    assert [(p.spec.name, p.spec.max, p.size, p.waiting) for p in applied] == [
        ("builders", 4, 0, 0),
        ("tiny", 2, 0, 0),
    ]
    await client.register_worker(worker("tiny-1", cpu=1, memory=512, pool="tiny"))
    await client.acquire_worker("on-tiny", Requirements(pool="tiny"))
    waiting = asyncio.create_task(client.acquire_worker("needs-builder", Requirements(cpu_cores=8), wait=20))

    async def listed() -> bool:
        pools = {p.spec.name: p for p in await client.list_pools(timeout=10)}
        return pools["builders"].waiting == 1 and pools["tiny"].workers == {WorkerStatus.BUSY: 1}

    await wait_for(listed)
    [demand] = await client.get_demand(timeout=10)
    assert (demand.shape, demand.waiting, demand.pools) == ("cpu=8", 1, ("builders",))

    await client.register_worker(worker("builder-1", cpu=8, memory=8192, pool="builders", os="linux"))
    acquired = await asyncio.wait_for(waiting, 20)
    assert acquired.record.worker_id == "builder-1"


async def test_an_invalid_pools_file_is_refused_naming_its_line_and_field_and_the_pools_stay(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.apply_pools("pools.toml", POOLS)
    broken = POOLS.replace("max = 4", "max = -1")

    with pytest.raises(SchedulerError) as refused:
        await client.apply_pools("new.toml", broken)

    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.violations] == ["new.toml:4: pools.builders.max"]
    assert [p.spec.name for p in await client.list_pools()] == ["builders", "tiny"]


async def test_releasing_the_assignment_of_a_worker_that_is_gone_answers_its_end_without_a_worker(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_worker(worker("vanishing"))
    acquired = await client.acquire_worker("orphaned", Requirements(), timeout=10, lease_ttl=30)
    await client.unregister_worker("vanishing")

    view = await client.release_worker(acquired.assignment.assignment_id, timeout=10)

    assert view.record is None
    assert view.result is not None and view.result.outcome is JobOutcome.WORKER_LOST
    again = await client.renew_assignment(acquired.assignment.assignment_id, timeout=10)
    assert again.result == view.result


async def test_a_holder_that_lets_go_of_a_running_job_stops_it_and_the_worker_is_busy_until_the_agent_says_so(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, agents: Agents
) -> None:
    await agents.connect(worker("runner"))
    commands = agents.streams["runner"].commands()
    acquired = await client.acquire_worker("let-go", Requirements(), job=Job(("sleep", "600")))
    assert (await asyncio.wait_for(anext(commands), 10)).kind is CommandKind.RUN_JOB

    released = await client.release_worker(acquired.assignment.assignment_id, reason="no longer needed")

    assert released.result == JobResult(JobOutcome.SUCCEEDED, reason="no longer needed")
    cancel = await asyncio.wait_for(anext(commands), 10)
    assert cancel == WorkerCommand(
        CommandKind.CANCEL_JOB, "no longer needed", assignment_id=acquired.assignment.assignment_id
    )
    stored = await scheduler.get_worker("runner")
    assert stored is not None and (stored.status, stored.assignment) == (WorkerStatus.BUSY, None)
    with pytest.raises(SchedulerTimeout):  # not offered while its agent still stops the job
        await client.acquire_worker("next", Requirements(), wait=0.3)

    await agents.streams["runner"].job_finished(
        acquired.assignment.assignment_id, JobResult(JobOutcome.CANCELLED, reason="cancelled")
    )

    async def available() -> bool:
        record = await scheduler.get_worker("runner")
        return record is not None and record.status is WorkerStatus.AVAILABLE

    await wait_for(available)
    again = await client.acquire_worker("next-after", Requirements(), wait=5)
    assert again.record.worker_id == "runner"
    # The holder's answer stays what it was told.
    assert (await client.renew_assignment(acquired.assignment.assignment_id)).result == released.result


async def test_a_scale_event_is_kept_for_its_pool_shown_to_watchers_and_a_bad_one_refused(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.apply_pools("pools.toml", POOLS)
    watch = client.watch_workers()
    seen: list[str] = []

    async def watching() -> None:
        async for event in watch:
            if event.kind is WorkerEventKind.POOL_SCALED:
                seen.append(event.reason)

    reader = asyncio.create_task(watching())
    await wait_for(lambda: _true(scheduler.scheduler.events.watchers == 1))
    for count in range(1, 13):
        await client.report_scale_event(ScaleEvent("tiny", "up", "size", 2, count))

    with pytest.raises(SchedulerError) as unknown:
        await client.report_scale_event(ScaleEvent("nowhere", "up", "size", 1, 1))
    assert unknown.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(SchedulerError) as invalid:
        await client.report_scale_event(ScaleEvent("tiny", "sideways", "Bad Reason\x1b", 1, -1 + 2**32 // 2))
    assert invalid.value.code is ErrorCode.INVALID_ARGUMENT
    assert [v.field for v in invalid.value.violations] == ["event.direction", "event.reason", "event.count"]

    [builders, tiny] = await client.list_pools()
    assert builders.recent == ()
    assert [e.count for e in tiny.recent] == list(range(3, 13))  # the last ten, oldest first
    await wait_for(lambda: _true(len(seen) == 12))
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    assert seen[0] == "pool tiny up 1 (size), desired 2"


async def test_a_drain_only_if_available_refuses_a_busy_worker_and_changes_nothing(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_worker(worker("busy"))
    await client.register_worker(worker("idle"))
    acquired = await client.acquire_worker("holds-busy", Requirements(), timeout=10)
    busy = acquired.record.worker_id
    idle = ({"busy", "idle"} - {busy}).pop()
    with pytest.raises(WorkerNotIdle) as refused:
        await client.drain_worker(busy, reason="retire", only_if_available=True)
    assert refused.value.code is ErrorCode.FAILED_PRECONDITION
    assert [v.field for v in refused.value.violations] == ["status"]
    assert "bound to job 'holds-busy'" in refused.value.message
    stored = await scheduler.get_worker(busy)
    assert stored is not None and (stored.status, stored.assignment) == (
        WorkerStatus.BUSY,
        acquired.assignment,
    )

    drained = await client.drain_worker(idle, reason="retire", only_if_available=True)
    assert drained.record.status is WorkerStatus.DRAINING
    # The conditional drain and an acquire never both win: the drained worker is not offered.
    with pytest.raises(SchedulerTimeout):
        await client.acquire_worker("too-late", Requirements(), wait=0.2)


class HeldWrites(MemoryRegistryStore):
    """Writes at once, but answers a ``modify_many`` whose results ``holds`` picks only when told (``hold``):
    a commit whose answer is still on its way. ``holding`` is set while one waits."""

    def __init__(self, holds: Callable[[list[Any]], bool]) -> None:
        super().__init__()
        self.holds = holds
        self.hold = asyncio.Event()
        self.holding = asyncio.Event()

    async def modify_many(self, changes):  # type: ignore[no-untyped-def]
        results = await super().modify_many(changes)
        if self.holds(results):
            self.holding.set()
            await self.hold.wait()
        return results


def _released(results: list[Any]) -> bool:
    return any(r is not None and r[0].assignment is not None and r[1].assignment is None for r in results)


async def test_a_holder_asking_while_its_assignments_end_is_being_written_is_told_that_end() -> None:
    class SlowToAnswer(HeldWrites):
        """A release's write answered only when told; ``read_meanwhile``: a worker was read meanwhile."""

        def __init__(self) -> None:
            super().__init__(_released)
            self.read_meanwhile = asyncio.Event()

        async def get(self, worker_id: str):  # type: ignore[no-untyped-def]
            if self.holding.is_set() and not self.hold.is_set():
                self.read_meanwhile.set()
            return await super().get(worker_id)

    store = SlowToAnswer()
    async with EmbeddedScheduler(store=store, liveness=FAST) as scheduler, scheduler.client() as client:
        await client.register_worker(worker("w"))
        acquired = await client.acquire_worker("racing", Requirements())
        releasing = asyncio.create_task(
            client.release_worker(acquired.assignment.assignment_id, reason="done")
        )
        await asyncio.wait_for(
            store.holding.wait(), 10
        )  # the worker is free in the store; the end not yet told

        asking = asyncio.create_task(client.renew_assignment(acquired.assignment.assignment_id, timeout=10))
        await asyncio.wait_for(store.read_meanwhile.wait(), 10)  # the renew read the worker, bound to nothing
        store.hold.set()
        view, released = await asyncio.gather(asking, releasing)

    assert view.result == released.result == JobResult(JobOutcome.SUCCEEDED, reason="done")


async def test_a_retry_of_an_acquire_that_still_waits_shares_its_wait_and_is_told_it_did_not_bind(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    await client.register_worker(worker("only"))
    held = await client.acquire_worker("holder", Requirements())
    first = asyncio.create_task(client.acquire_worker("patient", Requirements(), wait=10))

    async def waiting(count: int) -> bool:
        return [d.waiting for d in await client.get_demand()] == [count]

    await wait_for(lambda: waiting(1))
    first_gives_up = scheduler.scheduler.allocator._waiting["patient"].until
    retry = asyncio.create_task(client.acquire_worker("patient", Requirements(), wait=10))

    async def joined() -> (
        bool
    ):  # the retry waits with the first: their one wait lasts as long as the later asks
        return scheduler.scheduler.allocator._waiting["patient"].until > first_gives_up

    await wait_for(joined)
    assert [d.waiting for d in await client.get_demand()] == [1]  # one wait for both
    await client.release_worker(held.assignment.assignment_id)

    bound, again = await asyncio.gather(first, retry)
    assert (bound.created, again.created) == (True, False)
    assert bound.assignment == again.assignment and bound.record.worker_id == "only"


async def test_whatever_tail_an_agent_reports_is_kept_bounded_and_without_control_characters(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, agents: Agents
) -> None:
    await agents.connect(worker("loud"))
    acquired = await client.acquire_worker("loud-job", Requirements(), job=Job(("true",)))
    hostile = "\x1b[2J" + "é" * 10_000 + "\x00end\n"

    await agents.streams["loud"].job_finished(
        acquired.assignment.assignment_id, JobResult(JobOutcome.SUCCEEDED, 0, hostile)
    )

    view = await client.renew_assignment(acquired.assignment.assignment_id, wait=10)
    assert view.result is not None
    assert view.result.output_tail == "é" * 2044 + "\ufffdend\n"  # its last 4,096 bytes, NUL replaced


async def test_made_up_assignment_ids_from_an_agent_or_a_holder_never_read_every_bound_worker() -> None:
    class CountsScans(MemoryRegistryStore):
        scans = lookups = 0

        async def bound(self) -> list[WorkerRecord]:
            self.scans += 1
            return await super().bound()

        async def find_assignment(self, assignment_id: str) -> WorkerRecord | None:
            self.lookups += 1
            return await super().find_assignment(assignment_id)

    store = CountsScans()
    async with EmbeddedScheduler(store=store, liveness=FAST) as scheduler, scheduler.client() as client:
        agents = Agents(scheduler)
        try:
            await agents.connect(worker("agent-1"))
            acquired = await client.acquire_worker("real", Requirements())
            stream = agents.streams["agent-1"]
            scans, lookups = store.scans, store.lookups
            for index in range(50):  # ids no scheduler ever handed out: the agent's own worker is read
                await stream.job_finished(f"made-up-{index}", JobResult(JobOutcome.SUCCEEDED))
            await stream.job_finished(
                acquired.assignment.assignment_id, JobResult(JobOutcome.FAILED, exit_code=3)
            )
            view = await client.renew_assignment(acquired.assignment.assignment_id, wait=10)
            assert store.lookups == lookups
            hostile = ("made-up", "%", "' OR 1=1 --", "x" * 128)
            for made_up in hostile:  # a holder's: not found, the store asked for that one id only
                with pytest.raises(SchedulerError) as renewing:
                    await client.renew_assignment(made_up)
                with pytest.raises(SchedulerError) as releasing:
                    await client.release_worker(made_up)
                assert renewing.value.code is releasing.value.code is ErrorCode.NOT_FOUND
        finally:
            await agents.close()

    assert view.result == JobResult(JobOutcome.FAILED, exit_code=3)  # the reports before it changed nothing
    assert store.scans == scans
    assert store.lookups == lookups + 2 * len(hostile)


async def test_a_waiter_whose_bind_is_being_written_is_no_longer_demand() -> None:
    """Between the store's write of a bind and the end of its round, the job is BUSY in the registry: it is not
    also counted waiting (an autoscaler reading both would provision a machine for it)."""
    armed = False
    store = HeldWrites(lambda results: armed and any(r is not None and r[1].assignment for r in results))
    async with EmbeddedScheduler(store=store, liveness=FAST) as scheduler, scheduler.client() as client:
        await client.register_worker(worker("w"))
        held = await client.acquire_worker("holder", Requirements())
        acquiring = asyncio.create_task(client.acquire_worker("patient", Requirements(), wait=30))

        async def waits() -> bool:
            return [d.waiting for d in await client.get_demand()] == [1]

        await wait_for(waits, timeout=10)
        armed = True
        await client.release_worker(held.assignment.assignment_id)  # w is free: the patient's round binds it
        await asyncio.wait_for(store.holding.wait(), 10)  # bound in the store; the round not yet over

        assert await client.get_demand() == []
        stored = await scheduler.get_worker("w")
        assert stored is not None and stored.status is WorkerStatus.BUSY
        store.hold.set()
        acquired = await asyncio.wait_for(acquiring, 10)

    assert (acquired.record.worker_id, acquired.assignment.job_id) == ("w", "patient")
