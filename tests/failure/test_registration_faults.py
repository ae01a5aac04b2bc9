"""Registration through a bad network and a misbehaving scheduler: what the caller gets, exactly.

Every test here provisions through the real WorkerManagementService (MockWorkerProvider) or the adapter, dials
through a FaultProxy or a FailingScheduler over real gRPC, and checks which workers ended registered, the error
the caller got, how many calls were made, and that nothing is left provisioned and unregistered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from hodei import (
    DynamicWorkerConfig,
    MaxRetriesExceeded,
    RegistrationConfig,
    SchedulerTimeout,
    WorkerRegistrationAdapter,
    WorkerStatus,
)
from hodei.errors import ProvisioningError
from hodei.management import WorkerManagementService
from hodei.testing import EmbeddedScheduler, FailingScheduler, FaultProxy, MockWorkerProvider
from tests.helpers import AttemptRecordingClient, wait_for, wait_until

pytestmark = pytest.mark.timeout(30)

# Connections of its own (gRPC would share one between the channels of a process), reconnecting within 50-200 ms
# after a refused or reset connection instead of gRPC's default second or more.
QUICK_RECONNECTS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)
CONFIG = DynamicWorkerConfig(cpu_cores=2, memory_mb=1024)


@pytest.fixture
async def client(proxy: FaultProxy) -> AsyncIterator[AttemptRecordingClient]:
    client = AttemptRecordingClient(proxy.target, options=QUICK_RECONNECTS)
    yield client
    await client.close()


def service_for(
    client: AttemptRecordingClient, provider: MockWorkerProvider, **config: object
) -> WorkerManagementService:
    settings = {"max_retries": 3, "base_backoff": 0.05, "max_backoff": 0.2, "registration_timeout": 1.0}
    adapter = WorkerRegistrationAdapter(client, RegistrationConfig(**(settings | config)))  # type: ignore[arg-type]
    return WorkerManagementService(provider, registration=adapter)


@contextlib.asynccontextmanager
async def served(
    target: str, **config: object
) -> AsyncIterator[tuple[AttemptRecordingClient, MockWorkerProvider, WorkerManagementService]]:
    """A recording client of ``target``, a mock provider and the service over both; the client closed after."""
    client, provider = AttemptRecordingClient(target), MockWorkerProvider()
    try:
        yield client, provider, service_for(client, provider, **config)
    finally:
        await client.close()


async def registered_ids(scheduler: EmbeddedScheduler) -> list[str]:
    return [record.worker_id for record in await scheduler.workers()]


async def test_a_scheduler_unreachable_when_registration_starts_and_back_during_the_retries_registers_the_worker(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.refuse()
    provider = MockWorkerProvider()
    service = service_for(client, provider, max_retries=40)

    provisioning = asyncio.create_task(service.provision_worker(CONFIG, worker_id="late-1"))
    await wait_until(lambda: len(client.attempts) >= 2)  # two calls refused: the retries are under way
    proxy.refuse(False)
    worker = await provisioning

    assert worker.status is WorkerStatus.REGISTERED
    assert client.attempts[-1] == "OK"
    assert set(client.attempts[:-1]) == {"UNAVAILABLE"} and len(client.attempts) > 2
    assert await registered_ids(scheduler) == ["late-1"]
    assert provider.orphans == ["late-1"] and provider.destroyed == []


async def test_a_scheduler_never_reachable_exhausts_the_retries_with_unavailable_and_destroys_the_worker(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.refuse()
    provider = MockWorkerProvider()
    service = service_for(client, provider, max_retries=3)

    with pytest.raises(ProvisioningError) as caught:
        await service.provision_worker(CONFIG, worker_id="never-1")

    failure = caught.value.cause
    assert isinstance(failure, MaxRetriesExceeded)
    assert (failure.attempts, failure.code.name) == (4, "UNAVAILABLE")
    assert client.attempts == ["UNAVAILABLE"] * 4
    assert caught.value.cleaned_up is True
    assert provider.destroyed == ["never-1"] and provider.orphans == []
    assert await registered_ids(scheduler) == []


async def test_a_black_hole_shorter_than_the_retry_budget_ends_with_the_worker_registered_once(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    assert await client.get_worker("warm-up") is None  # the connection is open when the network goes dark
    proxy.black_hole()
    provider = MockWorkerProvider()
    service = service_for(client, provider, max_retries=10, registration_timeout=0.3)

    provisioning = asyncio.create_task(service.provision_worker(CONFIG, worker_id="dark-1"))
    await wait_until(lambda: "DEADLINE_EXCEEDED" in client.attempts)
    proxy.heal()
    worker = await provisioning

    assert worker.status is WorkerStatus.REGISTERED
    assert client.attempts[0] == "DEADLINE_EXCEEDED" and client.attempts[-1] == "OK"
    assert client.attempts.count("OK") == 1
    # The attempts held in the black hole reach the scheduler when it ends: the registration is idempotent.
    assert await registered_ids(scheduler) == ["dark-1"]
    assert provider.orphans == ["dark-1"] and provider.destroyed == []


async def test_a_black_hole_longer_than_the_retry_budget_is_max_retries_exceeded_by_deadline_and_destroys_the_worker(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    assert await client.get_worker("warm-up") is None
    proxy.black_hole()
    provider = MockWorkerProvider()
    service = service_for(client, provider, max_retries=2, registration_timeout=0.3)

    with pytest.raises(ProvisioningError) as caught:
        await service.provision_worker(CONFIG, worker_id="dark-2")

    failure = caught.value.cause
    assert isinstance(failure, MaxRetriesExceeded)
    assert failure.attempts == 3
    assert isinstance(failure.last_error, SchedulerTimeout)
    assert failure.code.name == "DEADLINE_EXCEEDED"
    assert client.attempts == ["DEADLINE_EXCEEDED"] * 3
    assert provider.destroyed == ["dark-2"] and provider.orphans == []
    await proxy.stop()  # what the black hole held is dropped with the connection, never delivered
    assert await registered_ids(scheduler) == []


def no_worker(client: AttemptRecordingClient, worker_id: str) -> Callable[[], Awaitable[bool]]:
    async def gone() -> bool:
        return await client.get_worker(worker_id) is None

    return gone


async def test_a_black_hole_that_ends_after_the_caller_gave_up_leaves_no_registration_behind(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    assert await client.get_worker("warm-up") is None
    proxy.black_hole()
    provider = MockWorkerProvider()
    service = service_for(client, provider, max_retries=2, registration_timeout=0.3)
    with pytest.raises(ProvisioningError):
        await service.provision_worker(CONFIG, worker_id="dark-3")

    proxy.heal()  # the three attempts and the rollback's unregistration, held until now, reach the scheduler
    # The scheduler reads them in order but serves each call in a task of its own: a later read may be answered
    # before the unregistration is written, so the outcome is waited for (a registration left behind never goes).
    await wait_for(no_worker(client, "dark-3"), timeout=5)
    assert await registered_ids(scheduler) == []
    assert provider.destroyed == ["dark-3"] and provider.orphans == []


@pytest.mark.parametrize("max_retries", [0, 1, 4])
async def test_retries_exhausted_raise_max_retries_exceeded_after_max_retries_plus_one_attempts_with_the_last_cause(
    max_retries: int,
) -> None:
    async with FailingScheduler(100, retry_after=0.01, message="still starting") as scheduler:
        async with served(scheduler.target, max_retries=max_retries) as (_, provider, service):
            with pytest.raises(ProvisioningError) as caught:
                await service.provision_worker(CONFIG, worker_id="tired-1")

        failure = caught.value.cause
        assert isinstance(failure, MaxRetriesExceeded)
        assert failure.attempts == max_retries + 1 == scheduler.calls == scheduler.failed_calls
        assert (failure.code.name, failure.last_error.message) == ("UNAVAILABLE", "still starting")
        assert provider.destroyed == ["tired-1"] and provider.orphans == []
        assert await scheduler.workers() == []


async def test_a_scheduler_just_faster_than_the_timeout_registers_the_worker_at_the_first_attempt() -> None:
    async with FailingScheduler(0, delay=0.35) as scheduler:
        async with served(scheduler.target, registration_timeout=0.6) as (client, provider, service):
            worker = await service.provision_worker(CONFIG, worker_id="slow-1")

        assert worker.status is WorkerStatus.REGISTERED
        assert client.attempts == ["OK"] and scheduler.calls == 1
        assert [r.worker_id for r in await scheduler.workers()] == ["slow-1"]
        assert provider.orphans == ["slow-1"]


async def test_a_scheduler_just_slower_than_the_timeout_times_each_attempt_out_until_exhausted() -> None:
    async with FailingScheduler(0, delay=0.5) as scheduler:
        async with served(scheduler.target, max_retries=2, registration_timeout=0.3) as (
            client,
            provider,
            service,
        ):
            with pytest.raises(ProvisioningError) as caught:
                await service.provision_worker(CONFIG, worker_id="slow-2")

        failure = caught.value.cause
        assert isinstance(failure, MaxRetriesExceeded)
        assert (failure.attempts, type(failure.last_error)) == (3, SchedulerTimeout)
        assert client.attempts == ["DEADLINE_EXCEEDED"] * 3 and scheduler.calls == 3
        assert provider.destroyed == ["slow-2"] and provider.orphans == []
        # The server stops each attempt's work at its deadline, and the rollback unregisters: nothing is written.
        assert await scheduler.workers() == []


async def test_a_scheduler_just_slower_than_the_timeout_then_faster_registers_at_the_second_attempt() -> None:
    async with FailingScheduler(0, delay=0.5) as scheduler:
        async with served(scheduler.target, max_retries=3, registration_timeout=0.3, base_backoff=0.1) as (
            client,
            provider,
            service,
        ):
            provisioning = asyncio.create_task(service.provision_worker(CONFIG, worker_id="slow-3"))
            await wait_until(lambda: client.attempts == ["DEADLINE_EXCEEDED"])
            scheduler.set_delay(0.0)
            worker = await provisioning

        assert worker.status is WorkerStatus.REGISTERED
        assert client.attempts == ["DEADLINE_EXCEEDED", "OK"]
        assert [r.worker_id for r in await scheduler.workers()] == ["slow-3"]
        assert provider.orphans == ["slow-3"] and provider.destroyed == []
