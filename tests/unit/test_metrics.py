"""The metrics, counted where things happen: the adapter's outcomes (cancellations included), the scheduler's
liveness, sessions and leadership on fake clocks, the management service's rollbacks, the catalogue's series.

No network: ports and providers are in-process; the same counts are checked over real gRPC in
tests/integration/test_metrics.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    ErrorCode,
    RegistrationConfig,
    RegistrationFailed,
    SchedulerError,
    WorkerManagementService,
    WorkerRegistrationAdapter,
    WorkerType,
)
from hodei.domain import ResourceUsage, WorkerRecord, WorkerStatus
from hodei.errors import scheduler_error_for
from hodei.observability._http import parse_listen
from hodei.observability._metrics import BulkHistogram, ControlPlaneMetrics, SchedulerMetrics
from hodei.ports import RegistrationReceipt, UnregistrationStatus
from hodei.scheduler._core import Scheduler
from hodei.stores._memory import MemoryRegistryStore
from hodei.testing import FakeClock, FaultyStore, MockWorkerProvider
from tests.helpers import make_worker, stored_worker
from tests.helpers import metric as value
from tests.scheduling import LIVENESS, agent


def receipt(worker: DynamicWorker) -> RegistrationReceipt:
    record = WorkerRecord(
        worker_id=worker.worker_id,
        worker_type=worker.worker_type,
        capabilities=worker.capabilities,
        registered_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return RegistrationReceipt(record, created=True)


class GatedPort:
    """A SchedulerPort in memory: registration calls answer with the next scripted error (or succeed), and the
    calls numbered in ``hang`` (1-based, single and batch calls counted together) never answer."""

    def __init__(self, *, errors: Sequence[SchedulerError] = (), hang: Sequence[int] = ()) -> None:
        self.errors = list(errors)
        self.hang = set(hang)
        self.calls = 0
        self.hanging = asyncio.Event()

    async def _answer(self) -> None:
        self.calls += 1
        if self.calls in self.hang:
            self.hanging.set()
            await asyncio.Event().wait()
        if self.errors:
            raise self.errors.pop(0)

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        await self._answer()
        return receipt(worker)

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        await self._answer()
        return [receipt(w) for w in workers]

    async def unregister_worker(
        self, worker_id: str, *, incarnation: int | None = None, timeout: float | None = None
    ) -> UnregistrationStatus:
        await self._answer()
        return UnregistrationStatus.SUCCESS

    async def close(self) -> None:
        return None


async def no_sleep(seconds: float) -> None:
    return None


def adapter_on(port: GatedPort, **config: object) -> tuple[WorkerRegistrationAdapter, CollectorRegistry]:
    metrics = ControlPlaneMetrics()
    registration = WorkerRegistrationAdapter(
        port,  # type: ignore[arg-type]
        RegistrationConfig(**config),  # type: ignore[arg-type]
        sleep=no_sleep,
        metrics=metrics,
    )
    return registration, metrics.registry


# --- the catalogue ----------------------------------------------------------------------------------------


def test_observe_many_records_exactly_what_as_many_observes_would() -> None:
    one_by_one = Histogram("lag_seconds", "x", buckets=(0.1, 1.0, 5.0), registry=CollectorRegistry())
    at_once = BulkHistogram("lag_seconds", "x", buckets=(0.1, 1.0, 5.0), registry=CollectorRegistry())
    for amount, count in [(0.05, 3), (1.0, 2), (7.5, 4), (0.1, 1)]:
        for _ in range(count):
            one_by_one.observe(amount)
        at_once.observe_many(amount, count)

    def samples(histogram: Histogram) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        [family] = histogram.collect()
        return [
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples(at_once) == samples(one_by_one)
    assert ("lag_seconds_count", (), 10.0) in samples(at_once)
    assert ("lag_seconds_bucket", (("le", "1.0"),), 6.0) in samples(at_once)
    [total] = [v for name, _, v in samples(at_once) if name == "lag_seconds_sum"]
    assert total == pytest.approx(0.15 + 2.0 + 30.0 + 0.1)


def test_every_label_value_of_the_catalogue_is_a_series_at_zero_before_anything_happens() -> None:
    control = ControlPlaneMetrics().registry
    scheduler = SchedulerMetrics().registry

    for result in ("success", "rejected", "exhausted", "cancelled"):
        assert value(control, "hodei_registrations_total", result=result, worker_type="kubernetes") == 0
    for cause in ("unavailable", "deadline_exceeded", "resource_exhausted", "aborted"):
        assert value(control, "hodei_registration_retries_total", cause=cause) == 0
    for reason in ("registration_failed", "cancelled", "error"):
        assert value(control, "hodei_provisioning_rollbacks_total", reason=reason) == 0
    assert value(control, "hodei_registration_duration_seconds_count", worker_type="static") == 0
    for result in ("created", "updated", "kept", "invalid", "stale", "refused"):
        assert (
            value(scheduler, "hodei_scheduler_registrations_total", result=result, worker_type="unknown") == 0
        )
    for status in WorkerStatus:
        assert value(scheduler, "hodei_workers", status=status.value) == 0
    for reason in ("lease_expired", "lost_grace"):
        assert value(scheduler, "hodei_lease_expiries_total", reason=reason) == 0
    for kind in ("first", "reconnect"):
        assert value(scheduler, "hodei_stream_connects_total", kind=kind) == 0


def test_process_registry_serves_the_process_metrics_beside_hodei_ones() -> None:
    from hodei.observability._metrics import process_registry

    registry = process_registry()
    SchedulerMetrics(registry)
    text = generate_latest(registry).decode()

    assert "process_cpu_seconds_total" in text
    assert "python_info" in text
    assert "hodei_workers" in text


# --- the adapter ------------------------------------------------------------------------------------------


async def test_a_registration_its_caller_cancels_counts_as_cancelled_and_observes_no_duration() -> None:
    port = GatedPort(hang=[1])
    registration, registry = adapter_on(port)
    task = asyncio.create_task(registration.register_worker(make_worker("w-1")))
    await asyncio.wait_for(port.hanging.wait(), 5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert value(registry, "hodei_registrations_total", result="cancelled", worker_type="docker") == 1
    assert value(registry, "hodei_registrations_total", result="success", worker_type="docker") == 0
    assert value(registry, "hodei_registration_attempts_count") == 0
    assert value(registry, "hodei_registration_duration_seconds_count", worker_type="docker") == 0


async def test_a_cancelled_answer_from_the_scheduler_counts_as_cancelled_after_one_attempt() -> None:
    port = GatedPort(errors=[scheduler_error_for(ErrorCode.CANCELLED, "the server went away")])
    registration, registry = adapter_on(port)

    with pytest.raises(RegistrationFailed):
        await registration.register_worker(make_worker("w-1"))

    assert value(registry, "hodei_registrations_total", result="cancelled", worker_type="docker") == 1
    assert value(registry, "hodei_registrations_total", result="rejected", worker_type="docker") == 0
    assert value(registry, "hodei_registration_attempts_sum") == 1


async def test_a_batch_cancelled_half_way_counts_only_its_unsettled_workers_as_cancelled() -> None:
    # One call in flight at a time, two workers per call: the first call settles two, the second hangs.
    port = GatedPort(hang=[2])
    registration, registry = adapter_on(port, batch_size=2, batch_concurrency=1)
    workers = [make_worker(f"w-{n}") for n in range(5)]
    task = asyncio.create_task(registration.register_workers_batch(workers))
    await asyncio.wait_for(port.hanging.wait(), 5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert value(registry, "hodei_registrations_total", result="success", worker_type="docker") == 2
    assert value(registry, "hodei_registrations_total", result="cancelled", worker_type="docker") == 3
    assert value(registry, "hodei_registration_batch_size_count") == 1
    assert value(registry, "hodei_registration_batch_size_sum") == 5


async def test_batch_outcomes_are_counted_by_result_type_and_attempts() -> None:
    port = GatedPort(
        errors=[
            scheduler_error_for(ErrorCode.UNAVAILABLE, "down"),
            scheduler_error_for(ErrorCode.ABORTED, "conflict"),
        ]
    )
    registration, registry = adapter_on(port, batch_size=3, batch_concurrency=1, max_retries=2)
    static = DynamicWorker("s-1", WorkerType.STATIC, DynamicWorkerConfig(worker_type=WorkerType.STATIC))
    invalid = make_worker("bad", cpu_cores=0)
    workers = [make_worker("w-1"), invalid, static, make_worker("w-2")]

    results = await registration.register_workers_batch(workers)

    assert [r.ok for r in results] == [True, False, True, True]
    # The first call (w-1, s-1, w-2) failed twice and was settled by its third attempt.
    assert value(registry, "hodei_registrations_total", result="success", worker_type="docker") == 2
    assert value(registry, "hodei_registrations_total", result="success", worker_type="static") == 1
    assert value(registry, "hodei_registrations_total", result="rejected", worker_type="docker") == 1
    assert value(registry, "hodei_registration_retries_total", cause="unavailable") == 3
    assert value(registry, "hodei_registration_retries_total", cause="aborted") == 3
    assert value(registry, "hodei_registration_attempts_count") == 3  # the invalid one made no attempt
    assert value(registry, "hodei_registration_attempts_sum") == 9
    assert value(registry, "hodei_registration_duration_seconds_count", worker_type="docker") == 2
    assert value(registry, "hodei_registration_duration_seconds_count", worker_type="static") == 1


async def test_unregistration_retries_are_not_registration_retries() -> None:
    port = GatedPort(errors=[scheduler_error_for(ErrorCode.UNAVAILABLE, "down")])
    registration, registry = adapter_on(port)

    await registration.unregister_worker("w-1")

    assert port.calls == 2
    assert value(registry, "hodei_registration_retries_total", cause="unavailable") == 0


# --- the management service -------------------------------------------------------------------------------


class ExplodingPort(GatedPort):
    """Registration fails with an error that is not a registration error (a bug, say)."""

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        raise RuntimeError("a bug in a port")


async def test_a_worker_destroyed_after_an_unexpected_registration_error_counts_as_an_error_rollback() -> (
    None
):
    provider = MockWorkerProvider()
    registration, registry = adapter_on(ExplodingPort())
    service = WorkerManagementService(provider, registration=registration)

    with pytest.raises(RuntimeError):
        await service.provision_worker(DynamicWorkerConfig(), worker_id="w-1")

    assert provider.destroyed == ["w-1"]
    assert service.metrics is registration.metrics
    assert value(registry, "hodei_provisioning_rollbacks_total", reason="error") == 1
    assert value(registry, "hodei_provisioning_rollbacks_total", reason="cancelled") == 0


async def test_a_batch_provisioning_cancelled_during_registration_counts_each_provisioned_worker_once() -> (
    None
):
    provider = MockWorkerProvider()
    port = GatedPort(hang=[1])
    registration, registry = adapter_on(port)
    service = WorkerManagementService(provider, registration=registration)
    provider.fail_provision(1)  # one of the three is never provisioned: nothing of it to roll back
    task = asyncio.create_task(service.provision_workers(3, DynamicWorkerConfig()))
    await asyncio.wait_for(port.hanging.wait(), 5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert sorted(provider.destroyed) == sorted(provider.provisioned)
    assert len(provider.provisioned) == 2
    assert value(registry, "hodei_provisioning_rollbacks_total", reason="cancelled") == 2
    assert value(registry, "hodei_registrations_total", result="cancelled", worker_type="docker") == 2


async def test_a_service_without_an_adapter_has_metrics_of_its_own() -> None:
    service = WorkerManagementService(MockWorkerProvider())

    await service.provision_worker(DynamicWorkerConfig(), worker_id="w-1")

    assert value(service.metrics.registry, "hodei_provisioning_rollbacks_total", reason="error") == 0


# --- the scheduler, on fake clocks ------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def scheduler(clock: FakeClock) -> AsyncIterator[Scheduler]:
    started = Scheduler(MemoryRegistryStore(), liveness=LIVENESS, clock=clock.wall, monotonic=clock.monotonic)
    await started.start(sweep=False)
    yield started
    await started.stop()


def registry_of(scheduler: Scheduler) -> CollectorRegistry:
    return scheduler.metrics.registry


async def test_a_silent_agent_counts_one_lease_expiry_when_lost_and_one_lost_grace_when_removed(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    registry = registry_of(scheduler)
    await scheduler.hello(agent("a-1"))
    await scheduler.hello(agent("a-2"))
    session_2 = scheduler.sessions["a-2"]

    # a-2 keeps beating; a-1 is silent: LOST at 4 s (lease 3 s + one heartbeat interval), removed 5 s later.
    for moment in range(1, 5):
        clock.now = moment
        await scheduler.heartbeat(session_2, ResourceUsage())
        await scheduler.monitor.sweep(moment)
    assert value(registry, "hodei_lease_expiries_total", reason="lease_expired") == 1
    assert value(registry, "hodei_lease_expiries_total", reason="lost_grace") == 0

    for moment in range(5, 10):
        clock.now = moment
        await scheduler.heartbeat(session_2, ResourceUsage())
        await scheduler.monitor.sweep(moment)
    assert value(registry, "hodei_lease_expiries_total", reason="lease_expired") == 1
    assert value(registry, "hodei_lease_expiries_total", reason="lost_grace") == 1
    assert await scheduler.get("a-1") is None


async def test_heartbeat_lag_is_observed_between_consecutive_heartbeats_of_a_session(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    registry = registry_of(scheduler)
    _, session = await scheduler.hello(agent("a-1"))
    for moment in (1.0, 1.5, 4.0):  # the first beat has nothing before it
        clock.now = moment
        await scheduler.heartbeat(session, ResourceUsage())

    assert value(registry, "hodei_heartbeat_lag_seconds_count") == 2
    assert value(registry, "hodei_heartbeat_lag_seconds_sum") == pytest.approx(3.0)
    assert value(registry, "hodei_heartbeat_lag_seconds_bucket", le="0.5") == 1
    assert value(registry, "hodei_heartbeat_lag_seconds_bucket", le="2.0") == 1
    assert value(registry, "hodei_heartbeat_lag_seconds_bucket", le="5.0") == 2


async def test_streams_open_stays_exact_when_a_new_session_replaces_an_old_one(scheduler: Scheduler) -> None:
    registry = registry_of(scheduler)
    _, first = await scheduler.hello(agent("a-1", incarnation=1))
    _, second = await scheduler.hello(agent("a-1", incarnation=2))  # replaces the first
    _, other = await scheduler.hello(agent("a-2"))
    assert value(registry, "hodei_streams_open") == 3  # the replaced stream is still open until it ends
    assert value(registry, "hodei_stream_connects_total", kind="first") == 2
    assert value(registry, "hodei_stream_connects_total", kind="reconnect") == 1

    scheduler.goodbye(first)
    scheduler.goodbye(first)  # a second goodbye of one stream changes nothing
    assert value(registry, "hodei_streams_open") == 2
    await scheduler.unregister("a-1")  # its stream is told to end, and says goodbye when it does
    scheduler.goodbye(second)
    assert value(registry, "hodei_streams_open") == 1

    await scheduler.stop()  # ends the streams still open
    scheduler.goodbye(other)
    assert value(registry, "hodei_streams_open") == 0


async def test_workers_by_status_are_refreshed_from_the_store_on_every_tick(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    registry = registry_of(scheduler)
    for n in range(3):
        await scheduler.register(make_worker(f"w-{n}"))
    await scheduler.drain("w-0")
    await scheduler.tick(1.0)
    counts = {s.value: value(registry, "hodei_workers", status=s.value) for s in WorkerStatus}
    assert counts == {s.value: 0 for s in WorkerStatus} | {"available": 2, "draining": 1}

    await scheduler.unregister("w-0")
    await scheduler.unregister("w-1")
    await scheduler.tick(2.0)
    assert value(registry, "hodei_workers", status="available") == 1
    assert value(registry, "hodei_workers", status="draining") == 0


class SwitchedLeadership:
    def __init__(self) -> None:
        self.leading = True

    async def acquire(self) -> bool:
        return self.leading

    async def release(self) -> None:
        return None


async def test_the_lease_leader_gauge_follows_the_leadership(clock: FakeClock) -> None:
    leadership = SwitchedLeadership()
    scheduler = Scheduler(MemoryRegistryStore(), liveness=LIVENESS, leadership=leadership)
    registry = registry_of(scheduler)
    await scheduler.start(sweep=False)
    try:
        assert value(registry, "hodei_lease_leader") == 0
        await scheduler.tick(1.0)
        assert value(registry, "hodei_lease_leader") == 1
        leadership.leading = False
        await scheduler.tick(2.0)
        assert value(registry, "hodei_lease_leader") == 0
    finally:
        await scheduler.stop()


async def test_the_scheduler_counts_registrations_where_the_registry_decides_them(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    registry = registry_of(scheduler)
    await scheduler.register(make_worker("w-1"))
    await scheduler.register(make_worker("w-1"))  # the same again: updated
    await scheduler.hello(agent("w-2", incarnation=5))
    with pytest.raises(SchedulerError):
        await scheduler.hello(agent("w-2", incarnation=4))  # older than the registered one

    def counted(result: str) -> float:
        return value(registry, "hodei_scheduler_registrations_total", result=result, worker_type="docker")

    assert (counted("created"), counted("updated"), counted("stale")) == (2, 1, 1)


async def test_the_stores_registration_transactions_are_read_at_each_scrape(scheduler: Scheduler) -> None:
    registry = registry_of(scheduler)
    assert value(registry, "hodei_store_registration_transactions_total") == 0
    await scheduler.register(make_worker("w-1"))
    await scheduler.register_records([stored_worker(f"b-{n}") for n in range(4)])
    # The memory store writes each call whole: one transaction each, however many workers it holds.
    assert value(registry, "hodei_store_registration_transactions_total") == 2
    assert value(registry, "hodei_scheduler_registrations_total", result="created", worker_type="docker") == 5


def test_a_store_that_counts_no_transactions_has_no_such_series() -> None:
    registry = Scheduler(FaultyStore(MemoryRegistryStore())).metrics.registry
    assert "hodei_store_registration_transactions_total" not in generate_latest(registry).decode()


async def test_schedulers_sharing_their_metrics_count_the_transactions_of_both_stores() -> None:
    metrics = SchedulerMetrics()
    first, second = MemoryRegistryStore(), MemoryRegistryStore()
    for store in (first, second):
        Scheduler(store, metrics=metrics)
    await first.upsert([stored_worker("a")])
    await second.upsert([stored_worker("b")])
    await second.upsert([stored_worker("c")])
    assert value(metrics.registry, "hodei_store_registration_transactions_total") == 3


async def test_a_follower_still_refreshes_the_workers_gauge(clock: FakeClock) -> None:
    leadership = SwitchedLeadership()
    leadership.leading = False
    scheduler = Scheduler(MemoryRegistryStore(), liveness=LIVENESS, leadership=leadership)
    await scheduler.start(sweep=False)
    try:
        await scheduler.register(make_worker("w-1"))
        await scheduler.tick(1.0)
        assert value(registry_of(scheduler), "hodei_workers", status="available") == 1
        assert value(registry_of(scheduler), "hodei_lease_leader") == 0
    finally:
        await scheduler.stop()


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:80", ("::1", 80))],
)
def test_a_metrics_address_is_host_and_port(listen: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(listen) == parsed


@pytest.mark.parametrize("listen", ["", "9464", ":9464", "localhost", "localhost:http", "h:65536"])
def test_a_malformed_metrics_address_is_refused(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(listen)
