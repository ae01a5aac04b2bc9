"""The scheduler's side of the replica relay (ReplicaRelay and the core's hooks), on an in-memory bus.

Two Schedulers share one memory store and a bus that hands each replica's messages to the others on the next
turn of the loop, in order (what PostgresEventRelay does through NOTIFY; its own tests are in
tests/integration/test_replica_relay.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from hodei import DynamicWorker, DynamicWorkerConfig, WorkerType
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEventKind
from hodei.ports import Relayed, RelayedCommand, RelayedEvent
from hodei.scheduler._core import Scheduler
from hodei.scheduler._relay import REASON_LIMIT, short_reason
from hodei.stores._memory import MemoryRegistryStore


class Bus:
    """Every message one member publishes reaches every other member, in order, on a later loop turn."""

    def __init__(self) -> None:
        self.members: list[BusRelay] = []
        self.sent: list[Relayed] = []


class BusRelay:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._receive: Callable[[Relayed], None] | None = None

    async def start(self, receive: Callable[[Relayed], None]) -> None:
        self._receive = receive
        self._bus.members.append(self)

    def publish(self, message: Relayed) -> None:
        self._bus.sent.append(message)
        loop = asyncio.get_running_loop()
        for member in self._bus.members:
            if member is not self and member._receive is not None:
                loop.call_soon(member._receive, message)

    async def close(self) -> None:
        self._bus.members.remove(self)


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[Scheduler, Scheduler, Bus]]:
    store, bus = MemoryRegistryStore(), Bus()
    liveness = LivenessConfig(recovery_window=0.0)
    a = Scheduler(store, liveness=liveness, relay=BusRelay(bus))
    b = Scheduler(store, liveness=liveness, relay=BusRelay(bus))
    await a.start(sweep=False)
    await b.start(sweep=False)
    assert a.relay is not None and b.relay is not None
    a.relay.ack_timeout = b.relay.ack_timeout = 0.5
    yield a, b, bus
    await a.stop()
    await b.stop()


def worker(incarnation: int) -> DynamicWorker:
    return DynamicWorker("w-1", WorkerType.PROCESS, DynamicWorkerConfig(), incarnation=incarnation)


async def test_a_drain_through_one_replica_reaches_the_stream_on_the_other_and_says_it_was_delivered(
    replicas: tuple[Scheduler, Scheduler, Bus],
) -> None:
    a, b, _ = replicas
    _, session = await a.hello(worker(1))

    outcome = await b.drain("w-1", deadline=2.0, reason="maintenance")

    assert outcome.delivered is True
    assert session.commands.get_nowait() == WorkerCommand(CommandKind.DRAIN, "maintenance", 2.0)
    assert session.draining


async def test_a_relayed_command_for_an_older_incarnation_does_not_reach_a_newer_stream(
    replicas: tuple[Scheduler, Scheduler, Bus],
) -> None:
    a, b, bus = replicas
    _, session = await a.hello(worker(5))
    assert b.relay is not None

    delivered = await b.relay.command("w-1", WorkerCommand(CommandKind.SHUTDOWN, "old"), incarnation=4)

    assert delivered is False
    assert session.commands.empty() and a.sessions["w-1"] is session
    assert [type(m) for m in bus.sent if not isinstance(m, RelayedEvent)] == [RelayedCommand]  # no ack


async def test_an_unregistration_through_one_replica_ends_the_stream_on_the_other_without_a_disconnect(
    replicas: tuple[Scheduler, Scheduler, Bus],
) -> None:
    a, b, _ = replicas
    _, session = await a.hello(worker(1))
    watcher = a.events.watch()

    await b.unregister("w-1", reason="decommissioned", incarnation=1)

    # The bus delivers on the next loop turns: the stream hears the shutdown, then ends.
    shutdown = await asyncio.wait_for(session.commands.get(), 5)
    assert shutdown == WorkerCommand(CommandKind.SHUTDOWN, "unregistered")
    assert session.commands.get_nowait() is None and session.closed
    assert "w-1" not in a.sessions
    a.goodbye(session)  # the servicer's goodbye, once the stream closed: nothing more to announce
    a.report_orphan_removed("marker", reason="")
    kinds = []
    async for event in watcher:
        kinds.append(event.kind)
        if event.worker_id == "marker":
            break
    assert kinds == [WorkerEventKind.UNREGISTERED, WorkerEventKind.ORPHAN_REMOVED]


async def test_what_travels_between_replicas_quotes_reasons_short(
    replicas: tuple[Scheduler, Scheduler, Bus],
) -> None:
    a, b, bus = replicas
    long = "x" * 5_000
    await a.hello(worker(1))
    await b.drain("w-1", reason=long)

    relayed = [m for m in bus.sent if isinstance(m, RelayedCommand | RelayedEvent)]
    reasons = [m.command.reason if isinstance(m, RelayedCommand) else m.reason for m in relayed]
    assert short_reason(long) in reasons
    assert max(len(reason) for reason in reasons) <= REASON_LIMIT
    assert short_reason(long).endswith("… (5000 chars)")
