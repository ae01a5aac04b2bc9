"""Agents in-process against a real scheduler over gRPC: the Connect stream, liveness, commands, watch."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from hodei import DynamicWorker, ErrorCode, SchedulerPortClient, WorkerStatus
from hodei.agent import AgentConfig, AgentRefused, WorkerAgent
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerEvent, WorkerEventKind
from hodei.scheduler._events import Watcher
from hodei.testing import EmbeddedScheduler
from hodei.transport._codec import pb, pb_grpc
from tests.helpers import make_worker, wait_for

FAST = LivenessConfig(
    heartbeat_interval=0.05, lease_ttl=0.4, lost_grace=0.6, recovery_window=0.0, sweep_interval=0.05
)


def agent_for(scheduler: EmbeddedScheduler, worker_id: str, **options: object) -> WorkerAgent:
    config = AgentConfig(
        schedulers=(scheduler.target,), worker_id=worker_id, cpu_cores=2, memory_mb=1024, **options
    )  # type: ignore[arg-type]
    return WorkerAgent(config)


class Running:
    """Agents running as tasks, stopped (and awaited) at the end of a test."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, agent: WorkerAgent) -> asyncio.Task[None]:
        task = asyncio.create_task(agent.run())
        self.tasks[agent.config.worker_id] = task
        return task

    async def connected(self, agent: WorkerAgent) -> asyncio.Task[None]:
        """Start the agent and wait (at most 5 s) until its stream is up."""
        task = self.start(agent)
        await asyncio.wait_for(agent.connected.wait(), 5)
        return task

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    agents = Running()
    yield agents
    await agents.stop()


@pytest_asyncio.fixture
async def scheduler() -> AsyncIterator[EmbeddedScheduler]:
    async with EmbeddedScheduler(liveness=FAST) as embedded:
        yield embedded


async def events_until(watcher: Watcher, kind: WorkerEventKind, worker_id: str | None) -> list[WorkerEvent]:
    """Events up to the first ``kind`` for ``worker_id`` (any worker if None), failing after 5 s."""
    seen: list[WorkerEvent] = []
    async with asyncio.timeout(5):
        async for event in watcher:
            seen.append(event)
            if event.kind is kind and worker_id in (None, event.worker_id):
                return seen
    raise AssertionError(f"no {kind} for {worker_id}: {seen}")


async def test_an_agent_registers_itself_and_heartbeats_keep_it_available_past_many_ttls(
    scheduler: EmbeddedScheduler, running: Running
) -> None:
    watcher = scheduler.scheduler.events.watch()
    agent = agent_for(scheduler, "agent-1", labels={"zone": "a"})
    await running.connected(agent)
    # 20 heartbeats at 50 ms span 1 s: two and a half lease TTLs.
    await wait_for(lambda: _true(agent.heartbeats_sent >= 20), timeout=5)

    record = await scheduler.get_worker("agent-1")
    assert record is not None
    assert (record.status, record.connected, record.lease_ttl) == (WorkerStatus.AVAILABLE, True, 0.4)
    assert (
        record.labels == {"zone": "a"} and record.usage is not None and record.last_heartbeat_at is not None
    )
    watcher.close()
    kinds = [e.kind async for e in watcher]
    assert WorkerEventKind.LOST not in kinds
    assert kinds[:2] == [WorkerEventKind.REGISTERED, WorkerEventKind.CONNECTED]


async def _true(value: bool) -> bool:
    return value


async def test_an_agent_that_goes_silent_is_lost_within_its_ttl_then_removed_after_the_grace(
    scheduler: EmbeddedScheduler, running: Running
) -> None:
    agent = agent_for(scheduler, "agent-1")
    task = await running.connected(agent)
    watcher = scheduler.scheduler.events.watch()
    loop = asyncio.get_running_loop()

    task.cancel()  # the agent stops without a word: its stream is cut, its heartbeats stop
    silent_at = loop.time()
    lost = await events_until(watcher, WorkerEventKind.LOST, "agent-1")
    lost_after = loop.time() - silent_at
    await events_until(watcher, WorkerEventKind.EXPIRED, "agent-1")
    removed_after = loop.time() - silent_at

    assert [e.kind for e in lost] == [WorkerEventKind.DISCONNECTED, WorkerEventKind.LOST]
    assert lost_after <= FAST.lease_ttl + FAST.heartbeat_interval + 2 * FAST.sweep_interval + 0.2
    assert removed_after >= FAST.lost_grace
    assert await scheduler.get_worker("agent-1") is None


async def test_an_agent_back_within_the_grace_is_available_again_with_one_registration(
    scheduler: EmbeddedScheduler, running: Running
) -> None:
    first = agent_for(scheduler, "agent-1")
    task = await running.connected(first)
    watcher = scheduler.scheduler.events.watch()
    task.cancel()
    await events_until(watcher, WorkerEventKind.LOST, "agent-1")

    second = agent_for(scheduler, "agent-1")
    await running.connected(second)

    record = await scheduler.get_worker("agent-1")
    assert record is not None and record.status is WorkerStatus.AVAILABLE and record.connected
    assert record.incarnation == second.incarnation
    assert [r.worker_id for r in await scheduler.workers()] == ["agent-1"]
    watcher.close()
    kinds = [e.kind async for e in watcher]
    assert WorkerEventKind.REGISTERED not in kinds  # re-registration updated the one record
    assert kinds[-2:] == [WorkerEventKind.UPDATED, WorkerEventKind.CONNECTED]


async def test_drain_and_shutdown_commands_reach_the_agent(
    scheduler: EmbeddedScheduler, running: Running
) -> None:
    agent = agent_for(scheduler, "agent-1")
    task = await running.connected(agent)

    async with SchedulerPortClient(scheduler.target) as client:
        drain = await client.drain_worker("agent-1", deadline=2.0, reason="maintenance")
        await wait_for(lambda: _drained(client, "agent-1"))
        delivered = await client.shutdown_worker("agent-1", reason="bye")
        await asyncio.wait_for(task, 5)

        assert drain.delivered and drain.record.status is WorkerStatus.DRAINING
        assert delivered is True
        assert [(c.kind, c.reason) for c in agent.commands] == [
            (CommandKind.DRAIN, "maintenance"),
            (CommandKind.SHUTDOWN, "bye"),
            # the agent unregistered itself on the way out; the scheduler confirms with its own shutdown
            (CommandKind.SHUTDOWN, "unregistered"),
        ]
        assert agent.commands[0].deadline == 2.0
        assert agent.unregistered
        assert await client.get_worker("agent-1") is None


async def _drained(client: SchedulerPortClient, worker_id: str) -> bool:
    record = await client.get_worker(worker_id)
    return record is not None and record.drained


async def test_an_agent_asked_to_shut_down_drains_unregisters_and_returns(
    scheduler: EmbeddedScheduler, running: Running
) -> None:
    agent = agent_for(scheduler, "agent-1")
    task = await running.connected(agent)
    watcher = scheduler.scheduler.events.watch()

    agent.request_shutdown("SIGTERM")
    await asyncio.wait_for(task, 5)

    assert agent.unregistered and agent.draining
    assert await scheduler.get_worker("agent-1") is None
    kinds = [e.kind for e in await events_until(watcher, WorkerEventKind.UNREGISTERED, "agent-1")]
    assert kinds == [WorkerEventKind.DRAINING, WorkerEventKind.DRAINED, WorkerEventKind.UNREGISTERED]


async def test_unregistering_a_connected_worker_tells_its_agent_to_exit(
    scheduler: EmbeddedScheduler, running: Running
) -> None:
    agent = agent_for(scheduler, "agent-1")
    task = await running.connected(agent)

    async with SchedulerPortClient(scheduler.target) as client:
        await client.unregister_worker("agent-1")
    await asyncio.wait_for(task, 5)

    assert [c.kind for c in agent.commands] == [CommandKind.SHUTDOWN]
    assert await scheduler.get_worker("agent-1") is None


async def test_an_invalid_worker_makes_the_agent_stop_with_a_clear_refusal(
    scheduler: EmbeddedScheduler,
) -> None:
    agent = agent_for(scheduler, "bad id!")

    with pytest.raises(AgentRefused) as refused:
        await asyncio.wait_for(agent.run(), 5)

    assert refused.value.cause.code is ErrorCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.cause.violations] == ["worker_id"]
    assert "bad id!" in str(refused.value)


async def test_an_agent_reconnects_to_a_restarted_scheduler_with_a_new_incarnation() -> None:
    async with EmbeddedScheduler(liveness=FAST) as first:
        port = first.port
        agent = agent_for(first, "agent-1", reconnect_base=0.05, reconnect_max=0.2)
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.connected.wait(), 5)
        incarnation = agent.incarnation
    try:
        await wait_for(lambda: _true(not agent.connected.is_set()), timeout=5)
        async with EmbeddedScheduler(liveness=FAST, port=port) as second:
            await asyncio.wait_for(agent.connected.wait(), 10)
            record = await second.get_worker("agent-1")

            assert record is not None and record.status is WorkerStatus.AVAILABLE
            assert agent.incarnation > incarnation
            assert agent.connections == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_hundreds_of_agents_silent_at_once_are_all_lost_on_time_and_only_their_removal_is_slowed(
    running: Running,
) -> None:
    liveness = LivenessConfig(
        heartbeat_interval=0.2,
        lease_ttl=0.6,
        lost_grace=30,
        recovery_window=0,
        sweep_interval=0.1,
        mass_expiry_threshold=0.5,
        mass_expiry_min_workers=10,
        slowed_expiry_per_sweep=1,
    )
    async with EmbeddedScheduler(liveness=liveness) as scheduler:
        agents = [agent_for(scheduler, f"agent-{i:03}") for i in range(200)]
        for agent in agents:
            running.start(agent)
        await asyncio.wait_for(asyncio.gather(*(a.connected.wait() for a in agents)), 30)
        assert len(await scheduler.workers()) == 200
        watcher = scheduler.scheduler.events.watch()

        await running.stop()  # all 200 go silent at once
        silent_at = time.monotonic()
        seen: list[WorkerEvent] = []
        async with asyncio.timeout(10):
            async for event in watcher:
                seen.append(event)
                if sum(e.kind is WorkerEventKind.LOST for e in seen) == 200:
                    break
        all_lost_after = time.monotonic() - silent_at
        print(
            f"\n200 agents silent at once: all LOST {all_lost_after * 1000:.0f} ms after the last one stopped"
        )
        # Within the lease, one heartbeat interval and two sweeps of their last heartbeat, and a second for a
        # loaded machine.
        assert all_lost_after <= 0.6 + 0.2 + 2 * 0.1 + 1.0
        statuses = {w.status for w in await scheduler.workers()}
        slowed = [e for e in seen if e.kind is WorkerEventKind.EXPIRY_SLOWED]

        assert statuses == {WorkerStatus.LOST}  # none offered as AVAILABLE, none removed yet
        assert sorted(e.worker_id for e in seen if e.kind is WorkerEventKind.LOST) == [
            f"agent-{i:03}" for i in range(200)
        ]
        assert len(slowed) == 1
        assert re.fullmatch(
            r"\d+ of 200 leased workers unreachable at once; suspecting the network or the scheduler: "
            r"they are LOST, and removed at most 1 per 0\.1 s",
            slowed[0].reason,
        )


async def test_the_first_message_must_be_a_hello(scheduler: EmbeddedScheduler) -> None:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        call = pb_grpc.SchedulerServiceStub(channel).Connect()
        await call.write(pb.ConnectRequest(heartbeat=pb.Heartbeat(sequence=1)))

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in (raised.value.details() or "")


def raw_hello(worker_id: str, *, incarnation: int) -> pb.ConnectRequest:
    """The first message of a Connect stream, as any agent would send it."""
    hello = pb.WorkerHello(
        worker_id=worker_id,
        incarnation=incarnation,
        capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=1),
        metadata=pb.WorkerMetadata(worker_type="process"),
    )
    return pb.ConnectRequest(hello=hello)


async def test_a_hello_with_an_older_incarnation_is_refused(scheduler: EmbeddedScheduler) -> None:
    await scheduler.add_worker(DynamicWorker("w-1", incarnation=10))
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        call = pb_grpc.SchedulerServiceStub(channel).Connect()
        await call.write(raw_hello("w-1", incarnation=9))

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()

    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_an_agent_reporting_a_status_it_may_not_set_ends_its_stream_with_invalid_argument(
    scheduler: EmbeddedScheduler,
) -> None:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        call = pb_grpc.SchedulerServiceStub(channel).Connect()
        await call.write(raw_hello("w-1", incarnation=1))
        ack = await call.read()
        await call.write(pb.ConnectRequest(status_change=pb.StatusChange(status=pb.WORKER_STATUS_LOST)))

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()

    assert ack.ack.heartbeat_interval_ms == 50 and ack.ack.lease_ttl_ms == 400
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_delivers_every_transition_in_order_after_a_snapshot(
    scheduler: EmbeddedScheduler, running: Running
) -> None:
    await scheduler.add_worker(make_worker("static-1"))
    async with SchedulerPortClient(scheduler.target) as client:
        events: list[WorkerEvent] = []

        async def collect() -> None:
            async for event in client.watch_workers(include_snapshot=True):
                events.append(event)
                if event.kind is WorkerEventKind.UNREGISTERED:
                    return

        watching = asyncio.create_task(collect())
        await wait_for(lambda: _true(len(events) == 1))  # the snapshot arrived: the watch is live
        agent = agent_for(scheduler, "agent-1")
        task = await running.connected(agent)
        await client.drain_worker("agent-1")
        await wait_for(lambda: _drained(client, "agent-1"))
        agent.request_shutdown()
        await asyncio.wait_for(task, 5)
        await asyncio.wait_for(watching, 5)

    assert [(e.kind, e.worker_id) for e in events] == [
        (WorkerEventKind.SNAPSHOT, "static-1"),
        (WorkerEventKind.REGISTERED, "agent-1"),
        (WorkerEventKind.CONNECTED, "agent-1"),
        (WorkerEventKind.DRAINING, "agent-1"),
        (WorkerEventKind.DRAINED, "agent-1"),
        (WorkerEventKind.UNREGISTERED, "agent-1"),
    ]
    live = [e.sequence for e in events[1:]]
    assert live == list(range(live[0], live[0] + len(live)))
    assert events[4].record is not None and events[4].record.drained


async def test_a_draining_worker_stays_draining_when_its_agent_reconnects_and_hears_the_drain_again(
    scheduler: EmbeddedScheduler, running: Running
) -> None:
    first = agent_for(scheduler, "agent-1")
    task = await running.connected(first)
    async with SchedulerPortClient(scheduler.target) as client:
        await client.drain_worker("agent-1")
        await wait_for(lambda: _drained(client, "agent-1"))
        task.cancel()  # the stream breaks; the agent comes back as a new incarnation

        second = agent_for(scheduler, "agent-1")
        await running.connected(second)
        await wait_for(lambda: _drained(client, "agent-1"))
        record = await client.get_worker("agent-1")

    assert record is not None and record.status is WorkerStatus.DRAINING
    assert [c.kind for c in second.commands] == [CommandKind.DRAIN]


async def test_a_hello_without_an_incarnation_is_refused(scheduler: EmbeddedScheduler) -> None:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        call = pb_grpc.SchedulerServiceStub(channel).Connect()
        await call.write(raw_hello("w-1", incarnation=0))

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert await scheduler.get_worker("w-1") is None


async def test_streams_cancelled_right_after_their_hello_leave_no_session(
    scheduler: EmbeddedScheduler,
) -> None:
    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        for i in range(100):
            call = stub.Connect()
            await call.write(raw_hello(f"w-{i}", incarnation=1))
            call.cancel()

    await wait_for(lambda: _true(not scheduler.scheduler.sessions), timeout=5)
    assert not any(w.connected for w in await scheduler.workers())


async def test_heartbeats_and_status_reports_written_together_keep_the_stream_up(
    scheduler: EmbeddedScheduler,
) -> None:
    from hodei.domain import ResourceUsage
    from hodei.transport._stream import ConnectStream

    async with grpc.aio.insecure_channel(scheduler.target) as channel:
        stream = ConnectStream(channel)
        await stream.open(DynamicWorker("w-1", incarnation=1), timeout=5)
        for round_ in range(30):
            await asyncio.gather(
                stream.heartbeat(round_, ResourceUsage()),
                stream.report(WorkerStatus.BUSY if round_ % 2 else WorkerStatus.AVAILABLE),
                stream.heartbeat(round_, ResourceUsage()),
            )
        # The last report of round 29 said BUSY: the stream carried every write, in order, to the end.
        await wait_for(lambda: _status_is(scheduler, "w-1", WorkerStatus.BUSY))
        record = await scheduler.get_worker("w-1")
        stream.cancel()

    assert record is not None and record.connected


async def _status_is(scheduler: EmbeddedScheduler, worker_id: str, status: WorkerStatus) -> bool:
    record = await scheduler.get_worker(worker_id)
    return record is not None and record.status is status
