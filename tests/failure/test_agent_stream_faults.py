"""The agent's Connect stream through a bad network and a scheduler that goes away: reset, black-holed, shut
down — each followed by the agent's recovery (connected, AVAILABLE, same worker id, a higher incarnation); and
the stream's order and flow control when one agent stops reading."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from hodei import SchedulerPortClient, WorkerStatus
from hodei.agent import AgentConfig, WorkerAgent
from hodei.agent._agent import CHANNEL_OPTIONS
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand
from hodei.testing import EmbeddedScheduler, FaultProxy
from hodei.transport._stream import ConnectStream
from tests.helpers import make_worker, wait_for, wait_until

pytestmark = pytest.mark.timeout(45)

FAST = LivenessConfig(
    heartbeat_interval=0.05, lease_ttl=0.5, lost_grace=30.0, recovery_window=0.0, sweep_interval=0.05
)
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


class RunningAgent:
    """An agent running as a task, reconnecting at once (no jitter) after a broken stream."""

    def __init__(self, target: str, worker_id: str, **options: object) -> None:
        config = AgentConfig(
            schedulers=(target,),
            worker_id=worker_id,
            cpu_cores=2,
            memory_mb=1024,
            reconnect_base=0.05,
            reconnect_max=0.2,
            **options,  # type: ignore[arg-type]
        )
        self.agent = WorkerAgent(config, random=lambda: 0.0)
        self.task: asyncio.Task[None] | None = None

    async def connected(self) -> WorkerAgent:
        self.task = asyncio.create_task(self.agent.run())
        await asyncio.wait_for(self.agent.connected.wait(), 5)
        return self.agent

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def scheduler() -> AsyncIterator[EmbeddedScheduler]:
    async with EmbeddedScheduler(liveness=FAST) as scheduler:
        yield scheduler


async def assert_recovered(scheduler: EmbeddedScheduler, agent: WorkerAgent, incarnation: int) -> None:
    """The agent is connected again, on a new stream, and the scheduler holds it AVAILABLE, same id, newer."""
    await asyncio.wait_for(agent.connected.wait(), 15)
    sent = agent.heartbeats_sent
    await wait_until(lambda: agent.heartbeats_sent >= sent + 3, timeout=5)  # and heartbeats flow again

    async def available() -> bool:
        record = await scheduler.get_worker(agent.config.worker_id)
        return record is not None and record.status is WorkerStatus.AVAILABLE and record.connected

    await wait_for(available, timeout=5)
    record = await scheduler.get_worker(agent.config.worker_id)
    assert record is not None
    assert record.worker_id == agent.config.worker_id
    assert record.incarnation == agent.incarnation > incarnation
    assert agent.connections == 2
    assert [r.worker_id for r in await scheduler.workers()] == [agent.config.worker_id]


async def test_a_reset_stream_is_reopened_by_the_agent_with_the_same_worker_id_and_a_higher_incarnation(
    scheduler: EmbeddedScheduler, proxy: FaultProxy
) -> None:
    running = RunningAgent(proxy.target, "agent-reset")
    agent = await running.connected()
    incarnation = agent.incarnation
    try:
        proxy.reset_all()
        await wait_until(lambda: agent.connections >= 2 or not agent.connected.is_set())
        await assert_recovered(scheduler, agent, incarnation)
        assert proxy.connections_reset == 1
    finally:
        await running.stop()


# What the agent's channel options promise: a ping every keepalive_time, answered within keepalive_timeout.
KEEPALIVE = dict(CHANNEL_OPTIONS)
NOTICE_WITHIN = (KEEPALIVE["grpc.keepalive_time_ms"] + KEEPALIVE["grpc.keepalive_timeout_ms"]) / 1000 + 5.0


async def test_a_black_holed_stream_is_noticed_within_the_keepalive_and_the_agent_recovers_after_the_network_heals(
    scheduler: EmbeddedScheduler, proxy: FaultProxy
) -> None:
    running = RunningAgent(proxy.target, "agent-dark", hello_timeout=1.0)
    agent = await running.connected()
    incarnation = agent.incarnation
    try:
        proxy.black_hole()

        async def lost() -> bool:
            record = await scheduler.get_worker("agent-dark")
            return record is not None and record.status is WorkerStatus.LOST

        await wait_for(lost, timeout=5)  # the scheduler hears no heartbeat: LOST once the lease ends
        # The agent's writes still succeed into the void: only a ping left unanswered can tell it.
        await wait_until(
            lambda: agent.connections >= 2 or not agent.connected.is_set(), timeout=NOTICE_WITHIN
        )
        proxy.heal()
        await assert_recovered(scheduler, agent, incarnation)
    finally:
        await running.stop()


async def test_an_agent_reconnecting_into_a_black_hole_connects_as_soon_as_the_network_heals(
    scheduler: EmbeddedScheduler, proxy: FaultProxy
) -> None:
    running = RunningAgent(proxy.target, "agent-dark-2", hello_timeout=0.5)
    agent = await running.connected()
    incarnation = agent.incarnation
    try:
        proxy.black_hole()
        proxy.reset_all()  # the stream breaks, and the new connection is accepted and never answered
        await wait_until(lambda: not agent.connected.is_set() and proxy.connections_accepted >= 2)
        proxy.heal()  # what the black hole held (the new connection's handshake, the hello) flows on
        await assert_recovered(scheduler, agent, incarnation)
    finally:
        await running.stop()


TIMED_OUT_HELLOS = "hodei_agent_stream_connects_total"


async def test_an_agent_reconnecting_into_a_black_hole_gives_up_each_attempt_after_its_accept_timeout(
    scheduler: EmbeddedScheduler, proxy: FaultProxy
) -> None:
    # The black hole holds the handshake and the hello: the scheduler never accepts it (a hello's own timeout
    # counts from acceptance), and the agent gives the attempt up after accept_timeout.
    accept_timeout = 0.5
    running = RunningAgent(proxy.target, "agent-dark-3", accept_timeout=accept_timeout)
    agent = await running.connected()
    try:
        proxy.black_hole()
        proxy.reset_all()
        await wait_until(lambda: not agent.connected.is_set())
        registry = agent.metrics.registry
        await wait_until(
            lambda: (registry.get_sample_value(TIMED_OUT_HELLOS, {"result": "deadline_exceeded"}) or 0) >= 1,
            timeout=accept_timeout + 2.0,
        )
    finally:
        await running.stop()


async def test_a_scheduler_shut_down_and_replaced_on_the_same_port_gets_the_agent_back_available() -> None:
    first = await EmbeddedScheduler(liveness=FAST).start()
    port = first.port
    running = RunningAgent(first.target, "agent-restart")
    agent = await running.connected()
    incarnation = agent.incarnation
    try:
        await first.stop()
        await wait_until(lambda: not agent.connected.is_set())
        async with EmbeddedScheduler(liveness=FAST, port=port) as second:
            await assert_recovered(second, agent, incarnation)
    finally:
        await running.stop()
        await first.stop()


# Drain commands of 16 KB each: 16 MB, three times what gRPC lets a scheduler write to a reader that does not read
# (its flow-control windows, grown by BDP probing, and the sockets' buffers hold about 5 MB here).
QUEUED = 1000
REASON_SIZE = 16 * 1024
# Heartbeats every 50 ms, and a lease that the silent stream keeps for the length of the test.
QUICK_HEARTBEATS_LONG_LEASE = LivenessConfig(
    heartbeat_interval=0.05, lease_ttl=60.0, lost_grace=60.0, recovery_window=0.0, sweep_interval=0.5
)


async def test_commands_to_an_agent_not_reading_arrive_in_order_and_do_not_hold_up_other_agents() -> None:
    async with EmbeddedScheduler(liveness=QUICK_HEARTBEATS_LONG_LEASE) as scheduler:
        channel = grpc.aio.insecure_channel(scheduler.target, options=OWN_CONNECTION)
        slow = ConnectStream(channel)
        running = RunningAgent(scheduler.target, "agent-busy")
        client = SchedulerPortClient(scheduler.target, options=OWN_CONNECTION)
        try:
            await slow.open(replace(make_worker("agent-slow"), incarnation=1), timeout=5)
            session = scheduler.scheduler.sessions["agent-slow"]
            reasons = [f"{n:05d}-" + "x" * REASON_SIZE for n in range(QUEUED)]
            for reason in reasons:
                session.push(WorkerCommand(CommandKind.DRAIN, reason))
            await wait_until(lambda: session.commands.qsize() < QUEUED)  # the scheduler is writing them

            # Meanwhile another agent connects, heartbeats, and hears its own drain at once.
            agent = await running.connected()
            sent = agent.heartbeats_sent
            outcome = await client.drain_worker("agent-busy", deadline=5, timeout=2)
            assert outcome.delivered
            await wait_until(lambda: [c.kind for c in agent.commands] == [CommandKind.DRAIN], timeout=2)
            await wait_until(lambda: agent.heartbeats_sent >= sent + 5, timeout=5)
            assert (await client.register_worker(make_worker("w-1"), timeout=2)).created

            # The silent stream is held back by flow control, not buffered without bound in the scheduler.
            assert session.commands.qsize() > 0

            received: list[str] = []
            async with asyncio.timeout(20):
                async for command in slow.commands():
                    received.append(command.reason)
                    if len(received) == QUEUED:
                        break
            assert received == reasons  # every one, in the order it was queued
        finally:
            slow.cancel()
            await running.stop()
            await client.close()
            await channel.close()
