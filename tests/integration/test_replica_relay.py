"""Replicas on one PostgreSQL behave as one scheduler: commands reach an agent wherever its stream is, and
every replica's watchers see every replica's events (relayed with LISTEN/NOTIFY).

The replicas are real ``hodei scheduler serve`` processes on the test session's private PostgreSQL cluster,
as in test_replicas.py; agents are real Connect streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from hodei import DynamicWorker, DynamicWorkerConfig, SchedulerPortClient, WorkerStatus, WorkerType
from hodei.domain import MAX_WORKER_ID_LENGTH, ResourceUsage
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.ports import UnregistrationStatus
from hodei.scheduler._core import Scheduler
from hodei.scheduler._events import Watcher
from hodei.scheduler._relay import REASON_LIMIT, short_reason
from hodei.stores import PostgresEventRelay, PostgresRegistryStore
from hodei.transport._stream import ConnectStream
from tests.helpers import make_worker, wait_for
from tests.integration.helpers import (
    CLI_ENV,
    HEARTBEAT,
    HODEI,
    LEASE_TTL,
    OWN_SUBCHANNELS,
    replica,
    table_rows,
)

pytestmark = pytest.mark.timeout(120)


def agent_worker(worker_id: str, incarnation: int = 1) -> DynamicWorker:
    return DynamicWorker(
        worker_id, WorkerType.PROCESS, DynamicWorkerConfig(cpu_cores=1, memory_mb=64), incarnation=incarnation
    )


async def heartbeats(stream: ConnectStream) -> None:
    """A real agent's heartbeats, every HEARTBEAT seconds: its lease runs however long the test takes."""
    for sequence in itertools.count(1):
        await stream.heartbeat(sequence, ResourceUsage())
        await asyncio.sleep(HEARTBEAT)


async def next_command(commands: AsyncIterator[WorkerCommand]) -> WorkerCommand:
    return await asyncio.wait_for(anext(commands), 10)


async def test_drain_shutdown_and_unregister_asked_through_one_replica_reach_an_agent_connected_to_the_other(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    b = await replica(postgres_dsn, tmp_path / "b.log")
    try:
        async with (
            grpc.aio.insecure_channel(a.address, options=OWN_SUBCHANNELS) as channel,
            SchedulerPortClient(b.address, options=OWN_SUBCHANNELS) as via_b,
        ):
            stream = ConnectStream(channel)
            await stream.open(agent_worker("on-a"), timeout=10)
            commands = stream.commands()

            drain = await via_b.drain_worker("on-a", deadline=3.0, reason="maintenance")
            assert drain.delivered is True
            assert drain.record.status is WorkerStatus.DRAINING
            assert await next_command(commands) == WorkerCommand(CommandKind.DRAIN, "maintenance", 3.0)

            assert await via_b.shutdown_worker("on-a", reason="bye") is True
            assert await next_command(commands) == WorkerCommand(CommandKind.SHUTDOWN, "bye")

            assert await via_b.unregister_worker("on-a") is UnregistrationStatus.SUCCESS
            assert await next_command(commands) == WorkerCommand(CommandKind.SHUTDOWN, "unregistered")
            # A ended the stream, as it would have after an unregistration asked through itself.
            with pytest.raises(StopAsyncIteration):
                await next_command(commands)
            assert await via_b.get_worker("on-a") is None
    finally:
        a.kill()
        b.kill()


async def test_a_drain_of_a_worker_whose_agent_is_connected_nowhere_is_not_delivered(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    b = await replica(postgres_dsn, tmp_path / "b.log")
    try:
        async with grpc.aio.insecure_channel(a.address, options=OWN_SUBCHANNELS) as channel:
            stream = ConnectStream(channel)
            await stream.open(agent_worker("gone-from-a"), timeout=10)
            stream.cancel()
        async with SchedulerPortClient(b.address, options=OWN_SUBCHANNELS) as via_b:
            # Its lease still runs (it is not LOST yet), but no replica holds its stream.
            drain = await via_b.drain_worker("gone-from-a", reason="maintenance")
            assert drain.delivered is False and drain.record.status is WorkerStatus.DRAINING
            # A pushed registration (no agent, no lease) is not even asked about.
            await via_b.register_worker(make_worker("pushed-1"))
            assert (await via_b.drain_worker("pushed-1")).delivered is False
    finally:
        a.kill()
        b.kill()


async def _events_by_worker(
    events: AsyncIterator[WorkerEvent], worker_ids: list[str], until: WorkerEventKind
) -> dict[str, list[WorkerEvent]]:
    """Each worker's events, in the order the watch gave them, until each has had ``until``."""
    seen: dict[str, list[WorkerEvent]] = {worker_id: [] for worker_id in worker_ids}
    waiting = set(worker_ids)
    async with asyncio.timeout(15):
        async for event in events:
            if event.worker_id in seen:
                seen[event.worker_id].append(event)
                if event.kind is until:
                    waiting.discard(event.worker_id)
                    if not waiting:
                        return seen
    raise AssertionError(f"the watch ended before {until}: {seen}")


async def test_a_watch_on_a_third_replica_sees_the_other_replicas_events_in_order_per_worker(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    b = await replica(postgres_dsn, tmp_path / "b.log")
    c = await replica(postgres_dsn, tmp_path / "c.log")
    try:
        async with (
            SchedulerPortClient(b.address, options=OWN_SUBCHANNELS) as via_b,
            SchedulerPortClient(c.address, options=OWN_SUBCHANNELS) as via_c,
        ):
            # The snapshot of a marker worker says C's watch is up before anything happens elsewhere.
            await via_c.register_worker(make_worker("marker"))
            events = via_c.watch_workers(include_snapshot=True)
            first = await asyncio.wait_for(anext(events), 10)
            assert (first.kind, first.worker_id) == (WorkerEventKind.SNAPSHOT, "marker")

            async with grpc.aio.insecure_channel(a.address, options=OWN_SUBCHANNELS) as to_a:
                streams = [ConnectStream(to_a) for _ in range(3)]
                for number, stream in enumerate(streams):
                    await stream.open(agent_worker(f"watched-{number}"), timeout=10)
                ids = [f"watched-{number}" for number in range(3)]
                # Each replica's events arrive in the order it sent them; A sends its own after it answered
                # the hellos, so B's drains wait until C has heard A's connections (a drain made meanwhile on
                # B could reach C first). The drains, relayed to A, cause A's DRAINED: those arrive in order.
                by_worker = await _events_by_worker(events, ids, WorkerEventKind.CONNECTED)
                for number, stream in enumerate(streams):
                    await via_b.drain_worker(f"watched-{number}", reason=f"drain {number}")
                    # The agent on A says it drained, as an agent does.
                    await stream.report(WorkerStatus.DRAINING, drained=True, reason="drained")

                drained = await _events_by_worker(events, ids, WorkerEventKind.DRAINED)
                for worker_id in ids:
                    by_worker[worker_id] += drained[worker_id]
                for number, worker_id in enumerate(ids):
                    seen = by_worker[worker_id]
                    assert [e.kind for e in seen] == [
                        WorkerEventKind.REGISTERED,  # A
                        WorkerEventKind.CONNECTED,  # A
                        WorkerEventKind.DRAINING,  # B
                        WorkerEventKind.DRAINED,  # A
                    ]
                    assert seen[1].reason == "incarnation 1" and seen[2].reason == f"drain {number}"
                    assert [e.sequence for e in seen] == sorted(e.sequence for e in seen)
                    assert all(e.record is None for e in seen)  # ids, kinds and reasons only
                for stream in streams:
                    await stream.heartbeat(1, ResourceUsage())
                    stream.cancel()
    finally:
        a.kill()
        b.kill()
        c.kill()


async def test_an_agent_whose_worker_was_deleted_under_its_stream_is_told_to_register_again(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    try:
        async with grpc.aio.insecure_channel(a.address, options=OWN_SUBCHANNELS) as channel:
            stream = ConnectStream(channel)
            await stream.open(agent_worker("deleted-1"), timeout=10)
            commands = stream.commands()
            # Removed by something that told no replica (a lost notification, an operator's SQL): the lease
            # sync of the replica holding the stream finds it gone.
            db = await asyncpg.connect(postgres_dsn)
            try:
                assert (
                    await db.execute("DELETE FROM hodei_workers WHERE worker_id = 'deleted-1'") == "DELETE 1"
                )
            finally:
                await db.close()
            await stream.heartbeat(1, ResourceUsage())

            command = await next_command(commands)
            assert command == WorkerCommand(CommandKind.REREGISTER, "the scheduler forgot this worker")
            stream.cancel()
    finally:
        a.kill()


# -- in-process replicas: two Schedulers on one database, each with its own relay ------------------------


@contextlib.asynccontextmanager
async def in_process_replica(dsn: str) -> AsyncIterator[Scheduler]:
    store = await PostgresRegistryStore.open(dsn, min_size=1, max_size=2)
    scheduler = Scheduler(store, liveness=LivenessConfig(recovery_window=0.0), relay=PostgresEventRelay(dsn))
    try:
        await scheduler.start(sweep=False)
        yield scheduler
    finally:
        await scheduler.stop()
        await store.close()


async def _until(watcher: Watcher, worker_id: str) -> list[WorkerEvent]:
    """Every event up to the first of ``worker_id``, failing after 10 s."""
    seen: list[WorkerEvent] = []
    async with asyncio.timeout(10):
        async for event in watcher:
            seen.append(event)
            if event.worker_id == worker_id:
                return seen
    raise AssertionError(f"no event of {worker_id}: {seen}")


def _kinds(events: list[WorkerEvent]) -> list[tuple[WorkerEventKind, str]]:
    return [(event.kind, event.worker_id) for event in events]


async def test_an_agent_whose_worker_another_replica_unregistered_is_shut_down_even_if_found_gone_first(
    postgres_dsn: str,
) -> None:
    async with in_process_replica(postgres_dsn) as a, in_process_replica(postgres_dsn) as b:
        _, session = await a.hello(agent_worker("unregistered-1"))  # heard: A's next lease sync touches it
        assert await b.unregister("unregistered-1") is UnregistrationStatus.SUCCESS
        # A's sync finds it gone, most often before B's relayed word of the unregistration has come: the
        # operator's unregistration ends the agent all the same, it is never told to come back.
        await a.tick(time.monotonic())

        command = await asyncio.wait_for(session.commands.get(), 10)
        assert command == WorkerCommand(CommandKind.SHUTDOWN, "unregistered")
        assert await asyncio.wait_for(session.commands.get(), 10) is None  # and its stream ended
        assert "unregistered-1" not in a.sessions


async def test_a_worker_expired_by_another_replica_tells_its_agent_here_to_register_again_and_nothing_echoes(
    postgres_dsn: str,
) -> None:
    async with in_process_replica(postgres_dsn) as a, in_process_replica(postgres_dsn) as b:
        on_a, on_b = a.events.watch(), b.events.watch()
        _, session = await a.hello(agent_worker("expired-1"))
        connected = [(WorkerEventKind.REGISTERED, "expired-1"), (WorkerEventKind.CONNECTED, "expired-1")]
        assert _kinds(await _until(on_b, "expired-1")) == connected[:1]
        assert _kinds(await _until(on_b, "expired-1")) == connected[1:]
        # B (the leader) found it silent and removed it: A's news of its heartbeats came too late.
        await b.registry.transition("expired-1", WorkerStatus.LOST, reason="lease expired")
        assert await b.registry.expire("expired-1", reason="lost for too long")

        command = await asyncio.wait_for(session.commands.get(), 10)
        assert command == WorkerCommand(CommandKind.REREGISTER, "the scheduler forgot this worker")

        # A marker from each side flushes the other's relay: by then every event either published is in, and
        # each was seen exactly once on each replica (a relayed event is never sent back).
        a.report_orphan_removed("marker-a", reason="flush")
        b.report_orphan_removed("marker-b", reason="flush")
        removed = [(WorkerEventKind.LOST, "expired-1"), (WorkerEventKind.EXPIRED, "expired-1")]
        markers = [(WorkerEventKind.ORPHAN_REMOVED, "marker-a"), (WorkerEventKind.ORPHAN_REMOVED, "marker-b")]
        assert _kinds(await _until(on_a, "marker-b")) == [*connected, *removed, *markers]
        assert _kinds(await _until(on_b, "marker-a")) == [*removed, *reversed(markers)]


async def test_a_burst_of_events_with_the_longest_ids_and_reasons_arrives_whole_and_in_order(
    postgres_dsn: str,
) -> None:
    async with in_process_replica(postgres_dsn) as a, in_process_replica(postgres_dsn) as b:
        on_b = b.events.watch()
        # Escaped as \\uXXXX in the JSON payload: six bytes a character, the most a message can grow by.
        ids = [f"{n:04d}" + "é" * (MAX_WORKER_ID_LENGTH - 4) for n in range(2_000)]
        for worker_id in ids:
            a.events.publish(WorkerEventKind.UPDATED, worker_id, None, "ü" * 5_000)
        a.report_orphan_removed("end", reason="")

        seen = await _until(on_b, "end")
        assert [event.worker_id for event in seen] == [*ids, "end"]
        assert {event.reason for event in seen[:-1]} == {short_reason("ü" * 5_000)}
        assert len(short_reason("ü" * 5_000)) <= REASON_LIMIT


async def _terminate(dsn: str, query_prefix: str) -> int:
    """Kill the sessions of this database whose last statement starts with ``query_prefix``; how many."""
    db = await asyncpg.connect(dsn)
    try:
        killed = await db.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE $1",
            query_prefix + "%",
        )
    finally:
        await db.close()
    return len(killed)


async def _relayed_again(sender: Scheduler, watcher: Watcher, marker: str) -> None:
    """Publish ``marker`` events on ``sender`` until ``watcher`` (another replica's) sees one: what is notified
    while a listener is cut off is lost, by design."""
    async with asyncio.timeout(15):
        while True:
            sender.report_orphan_removed(marker, reason="probe")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    async for event in watcher:
                        if event.worker_id == marker:
                            return


async def test_a_relay_whose_connections_the_database_killed_listens_again_and_resends_what_it_had_not_sent(
    postgres_dsn: str,
) -> None:
    async with in_process_replica(postgres_dsn) as a, in_process_replica(postgres_dsn) as b:
        on_a, on_b = a.events.watch(), b.events.watch()
        await _relayed_again(a, on_b, "warm-a")  # both sending connections are open now
        await _relayed_again(b, on_a, "warm-b")

        assert await _terminate(postgres_dsn, "LISTEN") == 2
        await _relayed_again(a, on_b, "after-listeners-a")
        await _relayed_again(b, on_a, "after-listeners-b")

        assert await _terminate(postgres_dsn, "SELECT pg_notify") == 2
        # The next message meets a dead connection: it is sent again on a new one, not lost.
        a.report_orphan_removed("after-senders", reason="once")
        async with asyncio.timeout(15):
            async for event in on_b:
                if event.worker_id == "after-senders":
                    break


# -- where a worker is connected, seen through any replica ----------------------------------------------


async def test_a_listing_through_another_replica_shows_which_replica_holds_the_agents_stream(
    postgres_dsn: str, tmp_path: Path
) -> None:
    a = await replica(postgres_dsn, tmp_path / "a.log")
    b = await replica(postgres_dsn, tmp_path / "b.log")
    try:
        async with (
            grpc.aio.insecure_channel(a.address, options=OWN_SUBCHANNELS) as channel,
            SchedulerPortClient(a.address, options=OWN_SUBCHANNELS) as via_a,
            SchedulerPortClient(b.address, options=OWN_SUBCHANNELS) as via_b,
        ):
            stream = ConnectStream(channel)
            await stream.open(agent_worker("seen-1"), timeout=10)
            # It heartbeats: under load the listing below takes longer than its lease.
            beating = asyncio.create_task(heartbeats(stream))

            async def shown_via_a_on_b() -> bool:  # after A's next lease sync
                stored = await via_b.get_worker("seen-1")
                return stored is not None and stored.connected_via == a.address

            await wait_for(shown_via_a_on_b, timeout=10)
            [listed] = (await via_b.list_workers()).workers
            assert (listed.connected, listed.connected_via) == (False, a.address)
            here = await via_a.get_worker("seen-1")
            assert here is not None and (here.connected, here.connected_via) == (True, "")

            # The operator's listing through B says where the agent is, not "disconnected".
            env = CLI_ENV | {"COLUMNS": "200"}
            listing = await asyncio.create_subprocess_exec(
                HODEI, "workers", "list", "--scheduler", b.address, stdout=asyncio.subprocess.PIPE, env=env
            )
            printed, _ = await asyncio.wait_for(listing.communicate(), 30)
            assert listing.returncode == 0
            [row] = table_rows(printed.decode())
            assert row[0] == "seen-1" and row[-1] == f"connected via {a.address}"

            # The stream closes: A clears it at its next sync, while the worker's lease still runs.
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            stream.cancel()

            async def disconnected_on_b() -> bool:
                stored = await via_b.get_worker("seen-1")
                assert stored is not None and stored.status is WorkerStatus.AVAILABLE, stored
                return stored.connected_via == ""

            await wait_for(disconnected_on_b, timeout=LEASE_TTL)
    finally:
        a.kill()
        b.kill()
