"""A scheduler that crashes does not forget: SIGKILL mid-batch, and a restart with 1,000 leased workers.

Both run the real ``hodei scheduler serve`` process on a SQLite file (the embedded default), killed with
SIGKILL and started again on the same file and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import psutil
import pytest

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    RegistrationConfig,
    RegistrationReceipt,
    SchedulerError,
    SchedulerPortClient,
    WorkerRecord,
    WorkerRegistrationAdapter,
    WorkerStatus,
    WorkerType,
)
from hodei.bench.processes import ServerProcess
from hodei.domain import ResourceUsage
from hodei.lifecycle import WorkerEventKind
from hodei.transport._stream import ConnectStream
from tests.helpers import make_worker, wait_for

pytestmark = pytest.mark.timeout(120)

# gRPC shares connections between channels to one address: a new channel would inherit the reconnect backoff
# of the adapter's, which saw the scheduler die. A reader of its own dials at once.
OWN_SUBCHANNELS = (("grpc.use_local_subchannel_pool", 1),)


class RecordingClient(SchedulerPortClient):
    """The real port client, remembering every worker the scheduler said it registered (and when it said so)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.told: dict[str, RegistrationReceipt] = {}

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        outcomes = await super().register_workers(workers, timeout=timeout)
        for worker, outcome in zip(workers, outcomes, strict=True):
            if isinstance(outcome, RegistrationReceipt):
                self.told.setdefault(worker.worker_id, outcome)
        return outcomes

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        receipt = await super().register_worker(worker, timeout=timeout)
        self.told.setdefault(worker.worker_id, receipt)
        return receipt


async def all_workers(client: SchedulerPortClient) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await client.list_workers(page_size=1000, page_token=token)
        ids += [record.worker_id for record in page.workers]
        if not (token := page.next_page_token):
            return ids


async def test_sigkill_in_the_middle_of_a_500_worker_batch_loses_no_acknowledged_worker_and_duplicates_none(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'registry.db'}"
    first = await ServerProcess.scheduler(store=store, log=tmp_path / "scheduler.log").start()
    restarted: ServerProcess | None = None
    client = RecordingClient(first.address)
    # Retries that outlast a restart: up to 60 attempts, 50-250 ms apart.
    config = RegistrationConfig(
        max_retries=60, base_backoff=0.05, max_backoff=0.25, batch_size=20, batch_concurrency=2
    )
    adapter = WorkerRegistrationAdapter(client, config)
    workers = [make_worker(f"crash-{n:03d}") for n in range(500)]
    try:
        registering = asyncio.create_task(adapter.register_workers_batch(workers))
        await wait_for(lambda: _at_least(len(client.told), 200), timeout=30)
        first.kill()
        told_before_the_crash = dict(client.told)
        assert 200 <= len(told_before_the_crash) < 500, "the crash must land in the middle of the batch"

        restarted = await ServerProcess.scheduler(
            store=store, port=first.port, log=tmp_path / "scheduler.log"
        ).start()
        async with SchedulerPortClient(restarted.address, options=OWN_SUBCHANNELS) as reader:
            # Every worker the client heard about is there, as it was told (same registration time).
            for worker_id, receipt in told_before_the_crash.items():
                stored = await reader.get_worker(worker_id)
                assert stored is not None, f"{worker_id} was acknowledged, then lost in the crash"
                assert stored.registered_at == receipt.record.registered_at

            results = await asyncio.wait_for(registering, 60)
            assert [r.worker_id for r in results] == [w.worker_id for w in workers]
            assert [r.error for r in results if not r.ok] == []
            assert max(r.attempts for r in results) > 1, "some workers must have needed the retries"

            ids = await all_workers(reader)
            assert sorted(ids) == sorted(w.worker_id for w in workers)  # each once, none missing
            assert await reader.get_worker("crash-000") is not None
    finally:
        await client.close()
        first.kill()
        if restarted is not None:
            restarted.kill()


def singles_in_flight(
    client: SchedulerPortClient,
) -> tuple[list[DynamicWorker], asyncio.Future[list[RegistrationReceipt]]]:
    """1,500 single registrations through the adapter (retrying through a restart), 500 in flight at a time."""
    config = RegistrationConfig(max_retries=60, base_backoff=0.05, max_backoff=0.25, registration_timeout=5.0)
    adapter = WorkerRegistrationAdapter(client, config)
    workers = [make_worker(f"single-{n:04d}") for n in range(1500)]
    in_flight = asyncio.Semaphore(500)

    async def register(worker: DynamicWorker) -> RegistrationReceipt:
        async with in_flight:
            return await adapter.register_worker(worker)

    return workers, asyncio.gather(*(register(w) for w in workers))


async def test_sigkill_while_500_single_registrations_are_in_flight_loses_no_acknowledged_worker_and_duplicates_none(
    tmp_path: Path,
) -> None:
    """The twin of the batch test for group commit: 500 single registrations in flight share transactions, and
    each is acknowledged only once the transaction holding it committed."""
    store = f"sqlite:///{tmp_path / 'registry.db'}"
    first = await ServerProcess.scheduler(store=store, log=tmp_path / "scheduler.log").start()
    restarted: ServerProcess | None = None
    client = RecordingClient(first.address)
    try:
        workers, registering = singles_in_flight(client)
        await wait_for(lambda: _at_least(len(client.told), 600), timeout=30)
        first.kill()
        told_before_the_crash = dict(client.told)
        assert 600 <= len(told_before_the_crash) < 1500, (
            "the crash must land while registrations are in flight"
        )

        restarted = await ServerProcess.scheduler(
            store=store, port=first.port, log=tmp_path / "scheduler.log"
        ).start()
        async with SchedulerPortClient(restarted.address, options=OWN_SUBCHANNELS) as reader:
            stored = {record.worker_id: record for record in await all_records(reader)}
            lost = [worker_id for worker_id in told_before_the_crash if worker_id not in stored]
            assert lost == [], f"{len(lost)} acknowledged registrations were lost in the crash"
            for worker_id, receipt in told_before_the_crash.items():
                assert stored[worker_id].registered_at == receipt.record.registered_at

            receipts = await asyncio.wait_for(registering, 60)
            assert [r.record.worker_id for r in receipts] == [w.worker_id for w in workers]
            ids = await all_workers(reader)
            assert len(ids) == len(set(ids)) == len(workers)  # each once, none missing
            assert set(ids) == {w.worker_id for w in workers}
    finally:
        await client.close()
        first.kill()
        if restarted is not None:
            restarted.kill()


async def test_the_stores_writer_killed_while_500_single_registrations_are_in_flight_loses_none_and_is_replaced(
    tmp_path: Path,
) -> None:
    """The SQLite store's writer process dies under load: the groups it held are answered UNAVAILABLE (and
    retried), every acknowledged worker stays as it was told, the next group starts another writer, and every
    worker ends registered once."""
    store = f"sqlite:///{tmp_path / 'registry.db'}"
    scheduler = await ServerProcess.scheduler(store=store, log=tmp_path / "scheduler.log").start()
    client = RecordingClient(scheduler.address)
    try:
        [writer] = writers(scheduler.pid)
        workers, registering = singles_in_flight(client)
        await wait_for(lambda: _at_least(len(client.told), 600), timeout=30)
        os.kill(writer, signal.SIGKILL)
        told_before_the_kill = dict(client.told)
        assert 600 <= len(told_before_the_kill) < 1500, "the kill must land while registrations are in flight"

        receipts = await asyncio.wait_for(registering, 60)
        assert [r.record.worker_id for r in receipts] == [w.worker_id for w in workers]
        assert [w for w in writers(scheduler.pid) if w != writer] != []
        stored = {record.worker_id: record for record in await all_records(client)}
        assert len(stored) == len(workers)
        for worker_id, receipt in told_before_the_kill.items():
            assert stored[worker_id].registered_at == receipt.record.registered_at
        ids = await all_workers(client)
        assert len(ids) == len(set(ids)) == len(workers)  # each once, none missing
    finally:
        await client.close()
        scheduler.kill()


def writers(scheduler: int) -> list[int]:
    """The PIDs of the scheduler's SQLite writer processes."""
    return [
        child.pid
        for child in psutil.Process(scheduler).children()
        if "hodei.stores._sqlite_writer" in " ".join(child.cmdline())
    ]


async def all_records(client: SchedulerPortClient) -> list[WorkerRecord]:
    records: list[WorkerRecord] = []
    token = ""
    while True:
        page = await client.list_workers(page_size=1000, page_token=token)
        records += page.workers
        if not (token := page.next_page_token):
            return records


async def _at_least(value: int, minimum: int) -> bool:
    return value >= minimum


@contextlib.asynccontextmanager
async def agents(address: str, workers: Sequence[DynamicWorker]) -> AsyncIterator[list[ConnectStream]]:
    """One Connect stream per worker on one channel, each acknowledged before this yields."""
    async with grpc.aio.insecure_channel(address) as channel:
        streams = [ConnectStream(channel) for _ in workers]
        try:
            await asyncio.gather(*(s.open(w, timeout=20) for s, w in zip(streams, workers, strict=True)))
            yield streams
        finally:
            for stream in streams:
                stream.cancel()


async def test_a_restart_with_a_thousand_leased_workers_knows_them_all_and_expires_only_the_silent_after_recovery(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'registry.db'}"
    recovery_window, lease_ttl, heartbeat = 4.0, 3.0, 1.0
    liveness = [
        "--heartbeat-interval",
        str(heartbeat),
        "--lease-ttl",
        str(lease_ttl),
        "--recovery-window",
        str(recovery_window),
        "--sweep-interval",
        "0.2",
        "--mass-expiry-threshold",
        "1",  # half of the fleet stays silent on purpose: expire them at the normal pace
        "--max-hellos-in-flight",
        "1000",  # the raw streams below say all their hellos at once and do not come back when refused
    ]
    log = tmp_path / "scheduler.log"
    first = await ServerProcess.scheduler(*liveness, store=store, log=log).start()
    second: ServerProcess | None = None
    config = DynamicWorkerConfig(worker_type=WorkerType.PROCESS, cpu_cores=1, memory_mb=256)
    fleet = [DynamicWorker(f"agent-{n:04d}", WorkerType.PROCESS, config, incarnation=1) for n in range(1000)]
    try:
        async with agents(first.address, fleet):
            first.kill()  # the scheduler dies with 1,000 streams open

        # Taken before the process starts: its recovery window opens later than this.
        restarted_at = time.monotonic()
        second = await ServerProcess.scheduler(*liveness, store=store, port=first.port, log=log).start()
        async with SchedulerPortClient(second.address, options=OWN_SUBCHANNELS) as client:
            events = client.watch_workers()
            page = await client.list_workers(page_size=1000)
            assert len(page.workers) == 1000
            assert {r.status for r in page.workers} == {WorkerStatus.AVAILABLE}
            assert {r.lease_ttl for r in page.workers} == {lease_ttl}

            # Half of the agents come back (a new incarnation, as a restarted agent's) and heartbeat; half never do.
            back = [DynamicWorker(w.worker_id, w.worker_type, w.config, incarnation=2) for w in fleet[:500]]
            silent = {w.worker_id for w in fleet[500:]}
            async with agents(second.address, back) as streams:

                async def beat() -> None:
                    # Every stream beats at once each round (one after another, a round on a busy machine could
                    # outlast the lease by itself), and the rounds are timed from their start.
                    for sequence in range(1, 10_000):
                        started = time.monotonic()
                        await asyncio.gather(
                            *(stream.heartbeat(sequence, ResourceUsage()) for stream in streams)
                        )
                        await asyncio.sleep(max(0.0, heartbeat / 2 - (time.monotonic() - started)))

                beating = asyncio.create_task(beat())
                lost: dict[str, float] = {}
                try:
                    async with asyncio.timeout(recovery_window + 4 * lease_ttl + 30):
                        async for event in events:
                            if event.kind is WorkerEventKind.LOST:
                                lost[event.worker_id] = time.monotonic() - restarted_at
                                if len(lost) == len(silent):
                                    break
                finally:
                    beating.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beating

                assert set(lost) == silent  # exactly the silent ones, and none of those that came back
                # Nobody expired inside the recovery window, though the silent leases ran out long before it.
                assert min(lost.values()) >= recovery_window
                page = await client.list_workers(page_size=1000)
                statuses = {r.worker_id: r.status for r in page.workers}
                assert len(statuses) == 1000
                assert {statuses[w.worker_id] for w in back} == {WorkerStatus.AVAILABLE}
    finally:
        first.kill()
        if second is not None:
            second.kill()
