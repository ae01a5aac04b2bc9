"""Partial batch failures and invalid worker data: exactly the valid, accepted workers end registered, and each
rejected one says why (the field, the code, the number of calls)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    ErrorCode,
    InvalidWorkerData,
    RegistrationConfig,
    RegistrationFailed,
    WorkerRegistrationAdapter,
    WorkerStatus,
    WorkerType,
)
from hodei.errors import AccessDenied, ProvisioningError, WorkerAlreadyExists
from hodei.management import WorkerManagementConfig, WorkerManagementService
from hodei.testing import FailingScheduler, FaultProxy, MockWorkerProvider
from tests.helpers import AttemptRecordingClient, make_worker, wait_until

pytestmark = pytest.mark.timeout(30)

QUICK_RECONNECTS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)
REFUSED = {"refused-1": ErrorCode.PERMISSION_DENIED, "refused-2": ErrorCode.ALREADY_EXISTS}


def adapter_for(client: AttemptRecordingClient, **config: object) -> WorkerRegistrationAdapter:
    settings = {"max_retries": 5, "base_backoff": 0.05, "max_backoff": 0.2, "registration_timeout": 5.0}
    return WorkerRegistrationAdapter(client, RegistrationConfig(**(settings | config)))  # type: ignore[arg-type]


@pytest.fixture
async def slow_refusing_scheduler() -> AsyncIterator[FailingScheduler]:
    """Refuses REFUSED, and answers after 0.3 s so that a batch call is surely in flight when it is reset."""
    async with FailingScheduler(0, delay=0.3, refuse=REFUSED) as scheduler:
        yield scheduler


@pytest.mark.parametrize(
    "validate_before_send", [True, False], ids=["rejected-locally", "rejected-by-server"]
)
async def test_a_batch_with_invalid_and_refused_workers_and_a_reset_mid_batch_registers_exactly_the_others(
    slow_refusing_scheduler: FailingScheduler, validate_before_send: bool
) -> None:
    scheduler = slow_refusing_scheduler
    valid = [make_worker(f"ok-{n}") for n in range(6)]
    invalid = [make_worker("bad-cpu", cpu_cores=0), make_worker("bad-pool", pool="-nope-")]
    refused = [make_worker(worker_id) for worker_id in REFUSED]
    batch = [valid[0], invalid[0], refused[0], *valid[1:4], refused[1], invalid[1], *valid[4:]]
    async with FaultProxy(scheduler.target) as proxy:
        client = AttemptRecordingClient(proxy.target, options=QUICK_RECONNECTS)
        adapter = adapter_for(client, validate_before_send=validate_before_send)
        try:
            registering = asyncio.create_task(adapter.register_workers_batch(batch))
            await wait_until(lambda: scheduler.calls == 1 and proxy.active_connections == 1)
            proxy.reset_all()  # the batch call is in flight (the scheduler holds it for 0.3 s)
            results = await registering
        finally:
            await client.close()

    assert client.attempts[0] == "UNAVAILABLE" and client.attempts[-1] == "OK"
    assert [r.worker_id for r in results] == [w.worker_id for w in batch]
    by_id = {r.worker_id: r for r in results}
    assert sorted(r.worker_id for r in results if r.ok) == sorted(w.worker_id for w in valid)
    assert all(by_id[w.worker_id].attempts == 2 for w in valid)  # the reset call, then the retry
    assert sorted(r.worker_id for r in await scheduler.workers()) == sorted(w.worker_id for w in valid)

    for worker_id, kind in (("refused-1", AccessDenied), ("refused-2", WorkerAlreadyExists)):
        error = by_id[worker_id].error
        assert isinstance(error, RegistrationFailed) and isinstance(error.cause, kind)
        assert (error.code, error.attempts) == (REFUSED[worker_id], 2)
    for worker_id, field in (("bad-cpu", "capabilities.cpu_cores"), ("bad-pool", "metadata.pool")):
        error = by_id[worker_id].error
        assert isinstance(error, RegistrationFailed) and isinstance(error.cause, InvalidWorkerData)
        assert error.code is ErrorCode.INVALID_ARGUMENT
        assert [v.field for v in error.violations] == [field]
        assert error.attempts == (0 if validate_before_send else 2)


async def test_provisioning_a_batch_through_a_reset_registers_all_but_the_refused_which_are_destroyed(
    slow_refusing_scheduler: FailingScheduler,
) -> None:
    scheduler = slow_refusing_scheduler
    ids = iter(["prov-1", "refused-1", "prov-2", "refused-2", "prov-3"])

    class NumberedService(WorkerManagementService):
        def new_worker_id(self) -> str:
            return next(ids)

    async with FaultProxy(scheduler.target) as proxy:
        client = AttemptRecordingClient(proxy.target, options=QUICK_RECONNECTS)
        provider = MockWorkerProvider()
        service = NumberedService(provider, registration=adapter_for(client), config=WorkerManagementConfig())
        try:
            provisioning = asyncio.create_task(service.provision_workers(5, DynamicWorkerConfig()))
            await wait_until(lambda: scheduler.calls == 1 and proxy.active_connections == 1)
            proxy.reset_all()
            results = await provisioning
        finally:
            await client.close()

    assert [r.worker_id for r in results] == ["prov-1", "refused-1", "prov-2", "refused-2", "prov-3"]
    registered = [r.worker_id for r in results if r.ok]
    assert registered == ["prov-1", "prov-2", "prov-3"]
    assert all(r.worker is not None and r.worker.status is WorkerStatus.REGISTERED for r in results if r.ok)
    for result in results:
        if not result.ok:
            assert isinstance(result.error, ProvisioningError) and result.error.cleaned_up is True
            assert result.error.cause.code is REFUSED[result.worker_id]  # type: ignore[attr-defined]
    assert sorted(r.worker_id for r in await scheduler.workers()) == registered
    assert provider.orphans == registered  # every one provisioned is registered, or destroyed
    assert sorted(provider.destroyed) == ["refused-1", "refused-2"]


def _worker(worker_id: str = "w-1", *, hostname: str = "", **config: object) -> DynamicWorker:
    return DynamicWorker(worker_id, WorkerType.DOCKER, DynamicWorkerConfig(**config), hostname=hostname)  # type: ignore[arg-type]


INVALID = {
    "empty id": (_worker(""), "worker_id"),
    "id with a space": (_worker("has space"), "worker_id"),
    "id starting with a dash": (_worker("-w"), "worker_id"),
    "id too long": (_worker("w" * 129), "worker_id"),
    "no cpu": (_worker(cpu_cores=0), "capabilities.cpu_cores"),
    "too many cpus": (_worker(cpu_cores=4097), "capabilities.cpu_cores"),
    "no memory": (_worker(memory_mb=0), "capabilities.memory_mb"),
    "negative disk": (_worker(disk_mb=-1), "capabilities.disk_mb"),
    "too many gpus": (_worker(gpu_count=1025), "capabilities.gpu_count"),
    "too many labels": (_worker(labels={f"k{n}": "v" for n in range(65)}), "metadata.labels"),
    "bad label key": (_worker(labels={"bad key": "v"}), "metadata.labels['bad key']"),
    "label value too long": (_worker(labels={"k": "v" * 257}), "metadata.labels['k']"),
    "bad pool": (_worker(pool="pool!"), "metadata.pool"),
    "pool too long": (_worker(pool="p" * 254), "metadata.pool"),
    "bad hostname": (_worker(hostname="host name"), "metadata.hostname"),
}


@pytest.mark.parametrize("worker,field", INVALID.values(), ids=INVALID.keys())
async def test_invalid_worker_data_is_rejected_before_sending_naming_the_field_and_nothing_is_provisioned_or_sent(
    worker: DynamicWorker, field: str
) -> None:
    async with FailingScheduler(0) as scheduler:
        client = AttemptRecordingClient(scheduler.target)
        try:
            with pytest.raises(RegistrationFailed) as caught:
                await adapter_for(client).register_worker(worker)
        finally:
            await client.close()
        assert isinstance(caught.value.cause, InvalidWorkerData)
        assert (caught.value.code, caught.value.attempts) == (ErrorCode.INVALID_ARGUMENT, 0)
        assert [v.field for v in caught.value.violations] == [field]
        assert client.attempts == [] and scheduler.calls == 0
        assert await scheduler.workers() == []


@pytest.mark.parametrize("worker,field", INVALID.values(), ids=INVALID.keys())
async def test_invalid_worker_data_sent_anyway_is_rejected_by_the_server_with_invalid_argument_naming_the_field(
    worker: DynamicWorker, field: str
) -> None:
    async with FailingScheduler(0) as scheduler:
        client = AttemptRecordingClient(scheduler.target)
        try:
            with pytest.raises(RegistrationFailed) as caught:
                await adapter_for(client, validate_before_send=False).register_worker(worker)
        finally:
            await client.close()
        assert isinstance(caught.value.cause, InvalidWorkerData)
        assert (caught.value.code, caught.value.attempts) == (ErrorCode.INVALID_ARGUMENT, 1)
        assert [v.field for v in caught.value.violations] == [field]
        assert client.attempts == ["INVALID_ARGUMENT"] and scheduler.calls == 1
        assert await scheduler.workers() == []


async def test_an_invalid_config_is_refused_by_the_management_service_and_nothing_is_provisioned() -> None:
    async with FailingScheduler(0) as scheduler:
        client = AttemptRecordingClient(scheduler.target)
        provider = MockWorkerProvider()
        service = WorkerManagementService(provider, registration=adapter_for(client))
        try:
            with pytest.raises(InvalidWorkerData) as caught:
                await service.provision_worker(DynamicWorkerConfig(cpu_cores=0, memory_mb=0))
            with pytest.raises(InvalidWorkerData) as bad_id:
                await service.provision_worker(DynamicWorkerConfig(), worker_id="bad id")
        finally:
            await client.close()
        assert [v.field for v in caught.value.violations] == [
            "capabilities.cpu_cores",
            "capabilities.memory_mb",
        ]
        assert [v.field for v in bad_id.value.violations] == ["worker_id"]
        assert provider.provisioned == [] and scheduler.calls == 0
