"""Several ``hodei scheduler serve`` replicas on one PostgreSQL registry.

Each replica is a real process on the private PostgreSQL cluster of the test session. The lease leader is
the replica whose ``hodei.scheduler.v1.LeaseLeader`` health is SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    RegistrationConfig,
    RegistrationReceipt,
    SchedulerPortClient,
    StaleIncarnation,
    WorkerRegistrationAdapter,
    WorkerStatus,
    WorkerType,
)
from hodei.domain import ResourceUsage
from hodei.lifecycle import WorkerEventKind
from hodei.server._server import LEADER_HEALTH
from hodei.transport._stream import ConnectStream
from tests.helpers import make_worker, wait_for
from tests.integration.helpers import HEARTBEAT, LEASE_TTL, OWN_SUBCHANNELS, SWEEP, replica

pytestmark = pytest.mark.timeout(120)

# The follower asks for the lock every sweep, and the database frees it as soon as the leader's session
# closes: the stated bound on taking over, with room for a loaded machine.
TAKEOVER_BOUND = SWEEP + 2.0


async def leads(address: str) -> bool:
    async with grpc.aio.insecure_channel(address, options=OWN_SUBCHANNELS) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=LEADER_HEALTH), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def test_a_worker_registered_through_one_replica_is_read_through_the_other(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    b = await replica(postgres_dsn, tmp_path / "b.log")
    try:
        async with SchedulerPortClient(a.address) as via_a, SchedulerPortClient(b.address) as via_b:
            receipt = await via_a.register_worker(make_worker("shared-1", labels={"zone": "eu"}))
            assert await via_b.get_worker("shared-1") == receipt.record
            await via_b.unregister_worker("shared-1")
            assert await via_a.get_worker("shared-1") is None
    finally:
        a.kill()
        b.kill()


async def test_one_replica_leads_and_when_it_is_killed_the_other_takes_over_expiry_within_the_bound(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    await wait_for(lambda: leads(a.address), timeout=10)
    b = await replica(postgres_dsn, tmp_path / "b.log")
    try:
        # B runs its sweeps, but the lock is A's.
        async with SchedulerPortClient(b.address, options=OWN_SUBCHANNELS) as via_b:
            await via_b.list_workers()
            assert not await leads(b.address)
            events = via_b.watch_workers()
            first_event = asyncio.create_task(anext(events))

            # An agent connected to A heartbeats through A; then A dies, and the agent with it.
            worker = DynamicWorker(
                "agent-on-a",
                WorkerType.PROCESS,
                DynamicWorkerConfig(cpu_cores=1, memory_mb=64),
                incarnation=1,
            )
            async with grpc.aio.insecure_channel(a.address) as channel:
                stream = ConnectStream(channel)
                await stream.open(worker, timeout=10)
                for sequence in range(1, 4):
                    await stream.heartbeat(sequence, ResourceUsage())
                    await asyncio.sleep(HEARTBEAT)
                stream.cancel()
            killed_at = time.monotonic()
            a.kill()

            await wait_for(lambda: leads(b.address), timeout=TAKEOVER_BOUND + 5, interval=0.02)
            takeover = time.monotonic() - killed_at
            print(f"\nlease leadership taken over in {takeover * 1000:.0f} ms (bound {TAKEOVER_BOUND:g} s)")
            assert takeover <= TAKEOVER_BOUND

            # The new leader expires the silent worker as the old one would have: within a lease, a heartbeat
            # interval and two sweeps of its last heartbeat (which A had shared through the database).
            async with asyncio.timeout(LEASE_TTL + HEARTBEAT + TAKEOVER_BOUND + 5):
                event = await first_event
                while not (event.kind is WorkerEventKind.LOST and event.worker_id == "agent-on-a"):
                    event = await anext(events)
            lost_after = time.monotonic() - killed_at
            print(f"the dead replica's silent worker was LOST {lost_after * 1000:.0f} ms after the kill")
            assert lost_after <= LEASE_TTL + HEARTBEAT + TAKEOVER_BOUND + 2 * SWEEP
            stored = await via_b.get_worker("agent-on-a")
            assert stored is not None and stored.status is WorkerStatus.LOST
    finally:
        a.kill()
        b.kill()


async def test_a_heartbeating_agent_on_the_follower_is_not_expired_by_the_leader(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    await wait_for(lambda: leads(a.address), timeout=10)
    b = await replica(postgres_dsn, tmp_path / "b.log")
    try:
        worker = DynamicWorker(
            "agent-on-b", WorkerType.PROCESS, DynamicWorkerConfig(cpu_cores=1, memory_mb=64), incarnation=1
        )
        async with grpc.aio.insecure_channel(b.address) as channel:
            stream = ConnectStream(channel)
            await stream.open(worker, timeout=10)
            # Several lease lengths of heartbeats that only B hears; A (the leader) must learn of them.
            deadline = time.monotonic() + 4 * LEASE_TTL
            sequence = 0
            while time.monotonic() < deadline:
                sequence += 1
                await stream.heartbeat(sequence, ResourceUsage())
                await asyncio.sleep(HEARTBEAT)
            async with SchedulerPortClient(a.address) as via_a:
                stored = await via_a.get_worker("agent-on-b")
            assert stored is not None and stored.status is WorkerStatus.AVAILABLE
            stream.cancel()
        assert await leads(a.address) and not await leads(b.address)
    finally:
        a.kill()
        b.kill()


async def test_a_client_given_both_replicas_keeps_registering_while_one_is_killed_and_sees_no_error(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    b = await replica(postgres_dsn, tmp_path / "b.log")
    config = RegistrationConfig(max_retries=10, base_backoff=0.05, max_backoff=0.5)
    workers = [make_worker(f"fleet-{n:03d}") for n in range(300)]
    done: list[str] = []
    try:
        async with SchedulerPortClient(f"{a.address},{b.address}") as client:
            adapter = WorkerRegistrationAdapter(client, config)

            async def register_all() -> None:
                for worker in workers:
                    await adapter.register_worker(worker)  # raises if any error reached the caller
                    done.append(worker.worker_id)

            registering = asyncio.create_task(register_all())
            await wait_for(lambda: _at_least(len(done), 100), timeout=30)
            a.kill()
            await asyncio.wait_for(registering, 60)
        assert done == [w.worker_id for w in workers]
        async with SchedulerPortClient(b.address) as via_b:
            page = await via_b.list_workers(page_size=1000)
        assert sorted(r.worker_id for r in page.workers) == sorted(done)
    finally:
        a.kill()
        b.kill()


async def _at_least(value: int, minimum: int) -> bool:
    return value >= minimum


async def test_concurrent_registrations_of_one_worker_through_two_replicas_keep_the_newest_incarnation(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    b = await replica(postgres_dsn, tmp_path / "b.log")
    try:
        async with SchedulerPortClient(a.address) as via_a, SchedulerPortClient(b.address) as via_b:
            for round_ in range(30):
                worker_id = f"contested-{round_}"
                older = DynamicWorker(worker_id, WorkerType.DOCKER, DynamicWorkerConfig(), incarnation=1)
                newer = DynamicWorker(worker_id, WorkerType.DOCKER, DynamicWorkerConfig(), incarnation=2)
                first, second = (via_a, via_b) if round_ % 2 else (via_b, via_a)
                outcomes = await asyncio.gather(
                    first.register_worker(older), second.register_worker(newer), return_exceptions=True
                )
                # The older one either landed first (and was replaced) or came second and was refused as stale.
                assert isinstance(outcomes[0], RegistrationReceipt | StaleIncarnation), outcomes[0]
                assert isinstance(outcomes[1], RegistrationReceipt), outcomes[1]
                stored = await via_a.get_worker(worker_id)
                assert stored is not None and stored.incarnation == 2
            page = await via_b.list_workers(page_size=1000)
            assert len(page.workers) == 30
    finally:
        a.kill()
        b.kill()


async def test_an_agent_given_both_replicas_moves_to_the_other_when_its_replica_is_killed_and_is_never_lost(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    b = await replica(postgres_dsn, tmp_path / "b.log")
    with (tmp_path / "agent.log").open("wb") as agent_log:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hodei",
                "agent",
                "--scheduler",
                f"{a.address},{b.address}",
                "--worker-id",
                "roaming-1",
            ],
            stdout=agent_log,
            stderr=agent_log,
        )
    try:
        async with SchedulerPortClient(b.address, options=OWN_SUBCHANNELS) as via_b:

            async def connected_available() -> bool:
                stored = await via_b.get_worker("roaming-1")
                return stored is not None and stored.status is WorkerStatus.AVAILABLE

            await wait_for(connected_available, timeout=20)
            events = via_b.watch_workers()
            first_event = asyncio.create_task(anext(events))
            a.kill()  # the agent's replica (it tries the addresses in order) dies under it

            async def connected_to_b() -> bool:
                stored = await via_b.get_worker("roaming-1")
                return stored is not None and stored.connected

            await wait_for(connected_to_b, timeout=20)
            # Through all of it the worker stayed registered and was never found LOST; let two leases pass.
            seen: list[WorkerEventKind] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2 * LEASE_TTL + HEARTBEAT):
                    event = await first_event
                    while True:
                        if event.worker_id == "roaming-1":
                            seen.append(event.kind)
                        event = await anext(events)
            assert WorkerEventKind.LOST not in seen and WorkerEventKind.EXPIRED not in seen
            stored = await via_b.get_worker("roaming-1")
            assert stored is not None and stored.status is WorkerStatus.AVAILABLE and stored.connected
    finally:
        agent.terminate()
        agent.wait(10)
        a.kill()
        b.kill()
