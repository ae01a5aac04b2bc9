"""UnregisterWorker fenced by incarnation: an old agent's farewell never removes its successor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    RegistrationConfig,
    SchedulerPortClient,
    StaleIncarnation,
    WorkerRegistrationAdapter,
    WorkerType,
)
from hodei.agent import AgentConfig, WorkerAgent
from hodei.domain import ResourceUsage
from hodei.errors import RegistrationFailed
from hodei.lifecycle import CommandKind, LivenessConfig
from hodei.ports import UnregistrationStatus
from hodei.testing import EmbeddedScheduler
from hodei.transport._stream import ConnectStream

LIVENESS = LivenessConfig(heartbeat_interval=0.05, lease_ttl=2.0, recovery_window=0.0, sweep_interval=0.05)


def worker(incarnation: int) -> DynamicWorker:
    return DynamicWorker(
        "fenced-1", WorkerType.PROCESS, DynamicWorkerConfig(cpu_cores=1), incarnation=incarnation
    )


@pytest_asyncio.fixture
async def scheduler() -> AsyncIterator[EmbeddedScheduler]:
    async with EmbeddedScheduler(liveness=LIVENESS) as embedded:
        yield embedded


async def test_an_old_agents_farewell_after_its_successors_hello_leaves_the_successor_registered_and_connected(
    scheduler: EmbeddedScheduler,
) -> None:
    async with (
        grpc.aio.insecure_channel(scheduler.target) as channel_a,
        grpc.aio.insecure_channel(scheduler.target) as channel_b,
        SchedulerPortClient(scheduler.target) as client,
    ):
        a, b = ConnectStream(channel_a), ConnectStream(channel_b)
        await a.open(worker(1), timeout=5)
        await b.open(worker(2), timeout=5)

        # A's farewell, carrying A's incarnation, arrives after B's hello.
        with pytest.raises(StaleIncarnation) as refused:
            await client.unregister_worker("fenced-1", incarnation=1, reason="agent A shutting down")

        assert refused.value.worker_id == "fenced-1"
        assert "incarnation 1 is older than the registered incarnation 2" in refused.value.message
        stored = await client.get_worker("fenced-1")
        assert stored is not None and stored.incarnation == 2 and stored.connected
        session = scheduler.scheduler.sessions["fenced-1"]
        assert session.incarnation == 2 and not session.closed and session.commands.empty()
        await b.heartbeat(1, ResourceUsage())  # B's stream is up

        # B's own farewell removes it, and the first (only) command B ever hears is that shutdown.
        assert await client.unregister_worker("fenced-1", incarnation=2) is UnregistrationStatus.SUCCESS
        commands = b.commands()
        first = await asyncio.wait_for(anext(commands), 5)
        assert (first.kind, first.reason) == (CommandKind.SHUTDOWN, "unregistered")
        assert await client.get_worker("fenced-1") is None
        a.cancel()
        b.cancel()


async def test_a_fenced_unregistration_of_an_unknown_worker_is_not_registered_and_a_newer_one_removes(
    scheduler: EmbeddedScheduler,
) -> None:
    async with SchedulerPortClient(scheduler.target) as client:
        assert (
            await client.unregister_worker("fenced-1", incarnation=7) is UnregistrationStatus.NOT_REGISTERED
        )
        await client.register_worker(worker(3))
        assert await client.unregister_worker("fenced-1", incarnation=4) is UnregistrationStatus.SUCCESS
        assert await client.get_worker("fenced-1") is None


async def test_an_agent_says_farewell_with_its_own_incarnation_and_leaves_a_newer_registration_alone(
    scheduler: EmbeddedScheduler,
) -> None:
    config = AgentConfig(schedulers=(scheduler.target,), worker_id="fenced-1", cpu_cores=1, memory_mb=64)
    agent = WorkerAgent(config)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 5)
        async with SchedulerPortClient(scheduler.target) as client:
            # A successor of this worker registered meanwhile, with a newer incarnation.
            newer = agent.incarnation + 1_000
            await client.register_worker(worker(newer))

            agent.request_shutdown("SIGTERM")
            await asyncio.wait_for(task, 10)

            assert not agent.unregistered
            stored = await client.get_worker("fenced-1")
            assert stored is not None and stored.incarnation == newer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_adapter_passes_the_incarnation_and_fails_a_stale_farewell_at_once(
    scheduler: EmbeddedScheduler,
) -> None:
    async with SchedulerPortClient(scheduler.target) as client:
        await client.register_worker(worker(5))
        adapter = WorkerRegistrationAdapter(client, RegistrationConfig(max_retries=3, base_backoff=0.01))

        with pytest.raises(RegistrationFailed) as failed:
            await adapter.unregister_worker("fenced-1", incarnation=4)

        assert isinstance(failed.value.cause, StaleIncarnation) and failed.value.attempts == 1
        assert await adapter.unregister_worker("fenced-1", incarnation=5) is UnregistrationStatus.SUCCESS
