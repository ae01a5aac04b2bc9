"""The user story's integration suite (US-08.1.4), in Python, over real gRPC on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    ErrorCode,
    MaxRetriesExceeded,
    RegistrationConfig,
    RegistrationFailed,
    SchedulerPortClient,
    SchedulerTimeout,
    SchedulerUnavailable,
    UnregistrationStatus,
    WorkerManagementConfig,
    WorkerManagementService,
    WorkerRegistrationAdapter,
    WorkerStatus,
    WorkerType,
    static_worker,
)
from hodei.testing import EmbeddedScheduler, FailingScheduler, MockWorkerProvider
from tests.helpers import free_port, make_worker


async def test_end_to_end_provision_register_available() -> None:
    async with EmbeddedScheduler() as scheduler:
        scheduler_port = SchedulerPortClient(scheduler.channel())
        registration_adapter = WorkerRegistrationAdapter(
            scheduler_port, RegistrationConfig(max_retries=2, registration_timeout=5.0)
        )
        service = WorkerManagementService.new_with_registration(
            MockWorkerProvider(), registration_adapter, WorkerManagementConfig()
        )
        config = DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=4, memory_mb=8192)

        provisioned = await service.provision_worker(config)

        assert provisioned.status is WorkerStatus.REGISTERED
        worker_info = await scheduler.get_worker(provisioned.worker_id)
        assert worker_info is not None
        assert worker_info.status is WorkerStatus.AVAILABLE
        assert (worker_info.capabilities.cpu_cores, worker_info.capabilities.memory_mb) == (4, 8192)
        assert worker_info.worker_type is WorkerType.DOCKER


async def test_batch_of_100_workers_all_register() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        registration_adapter = WorkerRegistrationAdapter(port, RegistrationConfig())
        workers = [DynamicWorker(f"worker-{i}", WorkerType.DOCKER, DynamicWorkerConfig()) for i in range(100)]

        started = time.monotonic()
        results = await registration_adapter.register_workers_batch(workers)
        elapsed = time.monotonic() - started

        assert len(results) == 100
        assert sum(r.ok for r in results) == 100
        assert [r.worker_id for r in results] == [w.worker_id for w in workers]
        assert len(await scheduler.workers()) == 100
        assert elapsed < 10, f"batch registration took {elapsed:.1f} s"


async def test_registration_succeeds_after_two_failures_and_waits_the_backoff() -> None:
    async with FailingScheduler(2) as scheduler, SchedulerPortClient(scheduler.target) as port:
        registration_adapter = WorkerRegistrationAdapter(port, RegistrationConfig(max_retries=3))

        started = time.monotonic()
        receipt = await registration_adapter.register_worker(make_worker())
        elapsed = time.monotonic() - started

        assert receipt.record.status is WorkerStatus.AVAILABLE
        assert scheduler.calls == 3
        assert elapsed >= 0.3  # 100 ms + 200 ms of backoff


async def test_always_failing_scheduler_raises_max_retries_exceeded() -> None:
    async with FailingScheduler(100) as scheduler, SchedulerPortClient(scheduler.target) as port:
        registration_adapter = WorkerRegistrationAdapter(
            port, RegistrationConfig(max_retries=3, base_backoff=0.01)
        )

        with pytest.raises(MaxRetriesExceeded) as raised:
            await registration_adapter.register_worker(make_worker())

        assert raised.value.attempts == 4
        assert scheduler.calls == 4
        assert isinstance(raised.value.last_error, SchedulerUnavailable)
        assert await scheduler.get_worker("test-worker") is None


async def test_unregister_removes_the_worker() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.channel()) as port:
        await scheduler.add_worker(make_worker("test-worker"))
        registration_adapter = WorkerRegistrationAdapter(port, RegistrationConfig())

        status = await registration_adapter.unregister_worker("test-worker")

        assert status is UnregistrationStatus.SUCCESS
        assert await scheduler.get_worker("test-worker") is None


async def test_static_and_dynamic_workers_register_side_by_side() -> None:
    provider = MockWorkerProvider()
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(port))
        static = [static_worker("build-01", cpu_cores=8, memory_mb=16384, labels={"arch": "amd64"})]

        static_results = await service.register_static_workers(static)
        dynamic = await service.provision_worker(DynamicWorkerConfig(worker_type=WorkerType.PROCESS))

        assert [r.ok for r in static_results] == [True]
        records = {r.worker_id: r for r in await scheduler.workers()}
        assert set(records) == {"build-01", dynamic.worker_id}
        assert records["build-01"].worker_type is WorkerType.STATIC
        assert records["build-01"].labels == {"arch": "amd64"}
        assert records[dynamic.worker_id].worker_type is WorkerType.PROCESS
        assert provider.provisioned == [dynamic.worker_id]  # static workers are not provisioned


async def test_60_concurrent_single_registrations_all_succeed() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        registration_adapter = WorkerRegistrationAdapter(port)
        workers = [make_worker(f"concurrent-{i}") for i in range(60)]

        receipts = await asyncio.gather(*(registration_adapter.register_worker(w) for w in workers))

        assert sorted(r.record.worker_id for r in receipts) == sorted(w.worker_id for w in workers)
        assert all(r.created for r in receipts)
        assert len(await scheduler.workers()) == 60


async def test_lifecycle_provision_register_unregister_cleanup_leaves_nothing() -> None:
    provider = MockWorkerProvider()
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(port))

        worker = await service.provision_worker(DynamicWorkerConfig())
        assert await scheduler.get_worker(worker.worker_id) is not None
        result = await service.decommission_worker(worker.worker_id)

        assert result.was_registered
        assert await scheduler.get_worker(worker.worker_id) is None
        assert provider.stopped == [worker.worker_id]
        assert provider.destroyed == [worker.worker_id]
        assert provider.orphans == []


async def test_partial_batch_failure_registers_the_rest_and_names_each_failure() -> None:
    refused = {"refused-1": ErrorCode.PERMISSION_DENIED, "refused-2": ErrorCode.FAILED_PRECONDITION}
    async with (
        FailingScheduler(0, refuse=refused) as scheduler,
        SchedulerPortClient(scheduler.target) as port,
    ):
        registration_adapter = WorkerRegistrationAdapter(port)
        workers = [
            make_worker("good-1"),
            make_worker("refused-1"),
            make_worker("bad-cpu", cpu_cores=0),
            make_worker("good-2"),
            make_worker("refused-2"),
            make_worker("bad id!"),
        ]

        results = await registration_adapter.register_workers_batch(workers)

        assert [r.ok for r in results] == [True, False, False, True, False, False]
        assert [r.error.code if r.error else None for r in results] == [
            None,
            ErrorCode.PERMISSION_DENIED,
            ErrorCode.INVALID_ARGUMENT,
            None,
            ErrorCode.FAILED_PRECONDITION,
            ErrorCode.INVALID_ARGUMENT,
        ]
        assert (
            results[2].error is not None and results[2].error.violations[0].field == "capabilities.cpu_cores"
        )
        assert sorted(r.worker_id for r in await scheduler.workers()) == ["good-1", "good-2"]


async def test_invalid_workers_are_rejected_by_the_server_with_the_field_named() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        registration_adapter = WorkerRegistrationAdapter(port, RegistrationConfig(validate_before_send=False))
        workers = [make_worker("ok"), make_worker("x" * 129), make_worker("neg", memory_mb=-5)]

        results = await registration_adapter.register_workers_batch(workers)
        with pytest.raises(RegistrationFailed) as raised:
            await registration_adapter.register_worker(make_worker("big", labels={"k": "v" * 300}))

        assert [r.ok for r in results] == [True, False, False]
        assert [v.field for r in results[1:] if r.error for v in r.error.violations] == [
            "worker_id",
            "capabilities.memory_mb",
        ]
        assert [r.error.attempts for r in results[1:] if r.error] == [1, 1]
        assert raised.value.code is ErrorCode.INVALID_ARGUMENT
        assert [v.field for v in raised.value.violations] == ["metadata.labels['k']"]
        assert [r.worker_id for r in await scheduler.workers()] == ["ok"]


async def test_scheduler_not_listening_exhausts_retries_with_unavailable() -> None:
    # A free port below the kernel's ephemeral range: a bind to port 0 never hands it out, so the next test's
    # scheduler cannot get it and, through gRPC's pool of connections per address, this test's refused one.
    async with SchedulerPortClient(f"127.0.0.1:{free_port()}") as port:
        registration_adapter = WorkerRegistrationAdapter(
            port, RegistrationConfig(max_retries=2, base_backoff=0.01)
        )

        with pytest.raises(MaxRetriesExceeded) as raised:
            await registration_adapter.register_worker(make_worker())

        assert raised.value.attempts == 3
        assert isinstance(raised.value.last_error, SchedulerUnavailable)


async def test_call_hanging_past_registration_timeout_ends_in_deadline_exceeded() -> None:
    async with FailingScheduler(100, hang=True) as scheduler, SchedulerPortClient(scheduler.target) as port:
        registration_adapter = WorkerRegistrationAdapter(
            port, RegistrationConfig(max_retries=1, registration_timeout=0.2, base_backoff=0.01)
        )

        started = time.monotonic()
        with pytest.raises(MaxRetriesExceeded) as raised:
            await registration_adapter.register_worker(make_worker())
        elapsed = time.monotonic() - started

        assert raised.value.attempts == 2
        assert isinstance(raised.value.last_error, SchedulerTimeout)
        assert scheduler.calls == 2
        assert elapsed >= 0.4  # two attempts, each ended by its own 200 ms deadline


@pytest.mark.parametrize(
    "code",
    [ErrorCode.INVALID_ARGUMENT, ErrorCode.PERMISSION_DENIED, ErrorCode.UNAUTHENTICATED, ErrorCode.INTERNAL],
)
async def test_permanent_errors_are_not_retried(code: ErrorCode) -> None:
    async with FailingScheduler(100, code=code) as scheduler, SchedulerPortClient(scheduler.target) as port:
        registration_adapter = WorkerRegistrationAdapter(port, RegistrationConfig(max_retries=3))

        with pytest.raises(RegistrationFailed) as raised:
            await registration_adapter.register_worker(make_worker())

        assert scheduler.calls == 1
        assert raised.value.attempts == 1
        assert raised.value.code is code


async def test_scheduler_advice_to_wait_is_honoured_instead_of_the_backoff() -> None:
    async with (
        FailingScheduler(1, code=ErrorCode.RESOURCE_EXHAUSTED, retry_after=0.5) as scheduler,
        SchedulerPortClient(scheduler.target) as port,
    ):
        registration_adapter = WorkerRegistrationAdapter(port, RegistrationConfig(base_backoff=0.01))

        started = time.monotonic()
        await registration_adapter.register_worker(make_worker())
        elapsed = time.monotonic() - started

        assert scheduler.calls == 2
        assert elapsed >= 0.5


async def test_batch_retries_a_chunk_refused_by_a_failing_scheduler_and_registers_all() -> None:
    async with FailingScheduler(2) as scheduler, SchedulerPortClient(scheduler.target) as port:
        registration_adapter = WorkerRegistrationAdapter(
            port, RegistrationConfig(base_backoff=0.01, batch_size=10, batch_concurrency=1)
        )

        results = await registration_adapter.register_workers_batch(
            [make_worker(f"w-{i}") for i in range(30)]
        )

        assert all(r.ok for r in results)
        assert [r.attempts for r in results] == [3] * 10 + [1] * 20
        assert scheduler.calls == 5
        assert len(await scheduler.workers()) == 30
