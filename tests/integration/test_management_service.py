"""WorkerManagementService against a real scheduler, over real gRPC on loopback.

The scheduler is an EmbeddedScheduler or a FailingScheduler, the port is a real SchedulerPortClient, the
provider the MockWorkerProvider. The invariant under test: a worker the service provisioned either ends
registered with the scheduler, or is destroyed and reported to the caller with the reason.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hodei import (
    AccessDenied,
    DynamicWorkerConfig,
    ErrorCode,
    InvalidWorkerData,
    MaxRetriesExceeded,
    ProviderError,
    ProvisioningError,
    RegistrationCancelled,
    RegistrationConfig,
    RegistrationError,
    RegistrationFailed,
    SchedulerPortClient,
    SchedulerUnavailable,
    UnregistrationStatus,
    WorkerManagementConfig,
    WorkerManagementService,
    WorkerRegistrationAdapter,
    WorkerStatus,
    WorkerType,
    load_static_workers,
)
from hodei._bootstrap import build_control_plane
from hodei._ownership import owned
from hodei.testing import EmbeddedScheduler, FailingScheduler, MockWorkerProvider
from tests.helpers import wait_for

CONFIG = DynamicWorkerConfig(
    worker_type=WorkerType.DOCKER, cpu_cores=4, memory_mb=8192, labels={"team": "ci", "arch": "amd64"}
)
QUICK_RETRIES = RegistrationConfig(max_retries=1, base_backoff=0.01, registration_timeout=2.0)

ServiceFactory = Callable[..., WorkerManagementService]


@pytest.fixture
async def service_for(hodei_mock_worker_provider: MockWorkerProvider) -> AsyncIterator[ServiceFactory]:
    """``service_for(scheduler, registration=..., management=...)``: a service on its own SchedulerPortClient.

    The client owns its channel (it is not one the scheduler hands out), so that it outlives a stopped
    scheduler as a real control plane would.
    """
    clients: list[SchedulerPortClient] = []

    def make(
        scheduler: EmbeddedScheduler,
        *,
        registration: RegistrationConfig | None = None,
        management: WorkerManagementConfig | None = None,
    ) -> WorkerManagementService:
        client = SchedulerPortClient(scheduler.target)
        clients.append(client)
        adapter = WorkerRegistrationAdapter(client, registration or RegistrationConfig())
        return WorkerManagementService(hodei_mock_worker_provider, registration=adapter, config=management)

    yield make
    for client in clients:
        await client.close()


class NumberedWorkerService(WorkerManagementService):
    """Issues ``worker-000``, ``worker-001``, … so that a test can name the workers of a batch in advance."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._numbers = itertools.count()

    def new_worker_id(self) -> str:
        return f"{self.config.worker_id_prefix}-{next(self._numbers):03d}"


# --- one worker -------------------------------------------------------------------------------------------


async def test_provisioned_worker_comes_back_registered_and_is_available_in_the_scheduler_with_its_config(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler)

    worker = await service.provision_worker(CONFIG)

    assert worker.status is WorkerStatus.REGISTERED
    assert worker.config == owned(CONFIG, "hodei")  # the config, marked with the control plane's owner id
    assert hodei_mock_worker_provider.provisioned == [worker.worker_id]
    record = await hodei_embedded_scheduler.get_worker(worker.worker_id)
    assert record is not None
    assert record.status is WorkerStatus.AVAILABLE
    assert record.worker_type is WorkerType.DOCKER
    assert (record.capabilities.cpu_cores, record.capabilities.memory_mb) == (4, 8192)
    assert dict(record.labels) == {"team": "ci", "arch": "amd64", "hodei.owner": "hodei"}
    assert [r.worker_id for r in await hodei_embedded_scheduler.workers()] == [worker.worker_id]


@pytest.mark.parametrize(
    ("failures", "options", "code", "kind"),
    [
        (
            0,
            {"refuse": {"refused-worker": ErrorCode.PERMISSION_DENIED}},
            ErrorCode.PERMISSION_DENIED,
            AccessDenied,
        ),
        (1, {"code": ErrorCode.INVALID_ARGUMENT}, ErrorCode.INVALID_ARGUMENT, InvalidWorkerData),
    ],
    ids=["refused-by-veto", "invalid-argument"],
)
async def test_permanently_refused_registration_destroys_the_worker_after_a_single_attempt(
    hodei_failing_scheduler: Callable[..., Any],
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
    failures: int,
    options: dict[str, Any],
    code: ErrorCode,
    kind: type[Exception],
) -> None:
    scheduler: FailingScheduler = await hodei_failing_scheduler(failures, **options)
    service = service_for(scheduler)

    with pytest.raises(ProvisioningError) as caught:
        await service.provision_worker(CONFIG, worker_id="refused-worker")

    error = caught.value
    assert error.worker_id == "refused-worker"
    assert error.cleaned_up is True
    assert error.cleanup_error is None
    assert isinstance(error.cause, RegistrationFailed)
    assert error.cause.attempts == 1
    assert error.cause.code is code
    assert isinstance(error.cause.cause, kind)
    assert scheduler.calls == 1
    assert hodei_mock_worker_provider.destroyed == ["refused-worker"]
    assert hodei_mock_worker_provider.orphans == []
    assert await scheduler.get_worker("refused-worker") is None


async def test_registration_that_exhausts_its_retries_raises_max_retries_exceeded_and_destroys_the_worker(
    hodei_failing_scheduler: Callable[..., Any],
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    scheduler: FailingScheduler = await hodei_failing_scheduler(100)
    service = service_for(scheduler, registration=RegistrationConfig(max_retries=1, base_backoff=0.01))

    with pytest.raises(ProvisioningError) as caught:
        await service.provision_worker(CONFIG, worker_id="unlucky-worker")

    error = caught.value
    assert isinstance(error.cause, MaxRetriesExceeded)
    assert error.cause.attempts == 2
    assert isinstance(error.cause.last_error, SchedulerUnavailable)
    assert error.cleaned_up is True
    assert scheduler.calls == 2
    assert scheduler.failed_calls == 2
    assert hodei_mock_worker_provider.destroyed == ["unlucky-worker"]
    assert hodei_mock_worker_provider.orphans == []
    assert await scheduler.workers() == []


async def test_failed_destroy_after_failed_registration_is_reported_as_not_cleaned_up_with_the_cleanup_error(
    hodei_failing_scheduler: Callable[..., Any],
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    scheduler: FailingScheduler = await hodei_failing_scheduler(
        0, refuse={"stuck-worker": ErrorCode.PERMISSION_DENIED}
    )
    service = service_for(scheduler)
    destroy_failure = ProviderError("the engine refused to remove the container", worker_id="stuck-worker")
    hodei_mock_worker_provider.fail_destroy(1, destroy_failure)

    with pytest.raises(ProvisioningError) as caught:
        await service.provision_worker(CONFIG, worker_id="stuck-worker")

    error = caught.value
    assert error.cleaned_up is False
    assert error.cleanup_error is destroy_failure
    assert isinstance(error.cause, RegistrationFailed)
    assert "destroying it failed too" in str(error)
    assert hodei_mock_worker_provider.destroyed == []
    assert hodei_mock_worker_provider.orphans == ["stuck-worker"]


async def test_worker_whose_registration_failed_is_kept_when_configured_and_the_error_says_so(
    hodei_failing_scheduler: Callable[..., Any],
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    scheduler: FailingScheduler = await hodei_failing_scheduler(
        0, refuse={"kept-worker": ErrorCode.PERMISSION_DENIED}
    )
    service = service_for(scheduler, management=WorkerManagementConfig(destroy_on_registration_failure=False))

    with pytest.raises(ProvisioningError) as caught:
        await service.provision_worker(CONFIG, worker_id="kept-worker")

    error = caught.value
    assert error.cleaned_up is False
    assert error.cleanup_error is None
    assert "it was kept, as configured" in str(error)
    assert list(hodei_mock_worker_provider.running) == ["kept-worker"]
    assert hodei_mock_worker_provider.destroyed == []
    assert await scheduler.get_worker("kept-worker") is None


async def test_invalid_config_raises_invalid_worker_data_and_provisions_nothing(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler)
    invalid = DynamicWorkerConfig(cpu_cores=0, memory_mb=-1)

    with pytest.raises(InvalidWorkerData) as caught:
        await service.provision_worker(invalid)

    assert {v.field for v in caught.value.violations} == {"capabilities.cpu_cores", "capabilities.memory_mb"}
    assert hodei_mock_worker_provider.provisioned == []
    assert await hodei_embedded_scheduler.workers() == []


async def test_provider_failure_raises_provider_error_and_registers_nothing(
    hodei_failing_scheduler: Callable[..., Any],
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    scheduler: FailingScheduler = await hodei_failing_scheduler(0)
    service = service_for(scheduler)
    hodei_mock_worker_provider.fail_provision()

    with pytest.raises(ProviderError):
        await service.provision_worker(CONFIG, worker_id="never-born")

    assert hodei_mock_worker_provider.provisioned == []
    assert scheduler.calls == 0
    assert await scheduler.workers() == []


async def test_provision_through_a_closed_port_client_destroys_the_worker_and_reports_a_provisioning_error(
    hodei_embedded_scheduler: EmbeddedScheduler, hodei_mock_worker_provider: MockWorkerProvider
) -> None:
    client = SchedulerPortClient(hodei_embedded_scheduler.target)
    await client.close()
    service = WorkerManagementService(
        hodei_mock_worker_provider, registration=WorkerRegistrationAdapter(client, QUICK_RETRIES)
    )

    with pytest.raises(ProvisioningError) as caught:
        await service.provision_worker(CONFIG, worker_id="closed-client-worker")

    assert isinstance(caught.value.cause, RegistrationError)
    assert caught.value.cleaned_up is True
    assert hodei_mock_worker_provider.orphans == []


# --- many workers -----------------------------------------------------------------------------------------


async def test_provision_workers_registers_all_twenty_workers_and_the_scheduler_has_them_available(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler)

    results = await service.provision_workers(20, CONFIG)

    assert len(results) == 20
    assert all(r.ok and r.error is None for r in results)
    assert all(r.worker is not None and r.worker.status is WorkerStatus.REGISTERED for r in results)
    ids = [r.worker_id for r in results]
    assert len(set(ids)) == 20
    assert [r.worker.worker_id for r in results if r.worker is not None] == ids
    records = await hodei_embedded_scheduler.workers()
    assert sorted(r.worker_id for r in records) == sorted(ids)
    assert all(r.status is WorkerStatus.AVAILABLE for r in records)
    assert all(dict(r.labels) == {"team": "ci", "arch": "amd64", "hodei.owner": "hodei"} for r in records)
    assert sorted(hodei_mock_worker_provider.provisioned) == sorted(ids)
    assert hodei_mock_worker_provider.destroyed == []


async def test_provision_workers_reports_each_worker_and_destroys_only_the_refused_ones(
    hodei_failing_scheduler: Callable[..., Any], hodei_mock_worker_provider: MockWorkerProvider
) -> None:
    scheduler: FailingScheduler = await hodei_failing_scheduler(
        0, refuse={"worker-003": ErrorCode.PERMISSION_DENIED, "worker-006": ErrorCode.INVALID_ARGUMENT}
    )
    hodei_mock_worker_provider.fail_provision(1)  # the first provider call: worker-000's
    async with SchedulerPortClient(scheduler.target) as client:
        service = NumberedWorkerService(
            hodei_mock_worker_provider, registration=WorkerRegistrationAdapter(client, RegistrationConfig())
        )

        results = await service.provision_workers(8, CONFIG)

    ids = [f"worker-{n:03d}" for n in range(8)]
    registered = ["worker-001", "worker-002", "worker-004", "worker-005", "worker-007"]
    assert [r.worker_id for r in results] == ids
    by_id = {r.worker_id: r for r in results}

    assert by_id["worker-000"].worker is None
    assert isinstance(by_id["worker-000"].error, ProviderError)
    for refused, code in (
        ("worker-003", ErrorCode.PERMISSION_DENIED),
        ("worker-006", ErrorCode.INVALID_ARGUMENT),
    ):
        result = by_id[refused]
        assert result.worker is None
        assert isinstance(result.error, ProvisioningError)
        assert result.error.cleaned_up is True
        assert isinstance(result.error.cause, RegistrationFailed)
        assert result.error.cause.code is code
        assert result.error.cause.attempts == 1
    for worker_id in registered:
        result = by_id[worker_id]
        assert result.ok
        assert result.worker is not None
        assert result.worker.status is WorkerStatus.REGISTERED

    assert sorted(hodei_mock_worker_provider.destroyed) == ["worker-003", "worker-006"]
    assert hodei_mock_worker_provider.orphans == registered
    assert sorted(hodei_mock_worker_provider.provisioned) == [i for i in ids if i != "worker-000"]
    records = await scheduler.workers()
    assert [r.worker_id for r in records] == registered
    assert all(r.status is WorkerStatus.AVAILABLE for r in records)


async def test_provision_workers_with_count_zero_returns_no_results_and_provisions_nothing(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler)

    assert await service.provision_workers(0, CONFIG) == []
    assert hodei_mock_worker_provider.provisioned == []
    assert await hodei_embedded_scheduler.workers() == []


async def test_provision_workers_with_a_negative_count_raises_value_error_and_provisions_nothing(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler)

    with pytest.raises(ValueError, match="count must be >= 0"):
        await service.provision_workers(-1, CONFIG)

    assert hodei_mock_worker_provider.provisioned == []


async def test_sixty_workers_provisioned_concurrently_all_end_available_in_the_scheduler(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler)

    workers = await asyncio.gather(*(service.provision_worker(CONFIG) for _ in range(60)))

    assert all(w.status is WorkerStatus.REGISTERED for w in workers)
    ids = sorted(w.worker_id for w in workers)
    assert len(set(ids)) == 60
    records = await hodei_embedded_scheduler.workers()
    assert [r.worker_id for r in records] == ids
    assert all(r.status is WorkerStatus.AVAILABLE for r in records)
    assert hodei_mock_worker_provider.orphans == ids


# --- end of life ------------------------------------------------------------------------------------------


async def test_decommission_unregisters_stops_and_destroys_a_registered_worker(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler)
    worker = await service.provision_worker(CONFIG)
    record = await hodei_embedded_scheduler.get_worker(worker.worker_id)
    assert record is not None and record.status is WorkerStatus.AVAILABLE

    result = await service.decommission_worker(worker.worker_id)

    assert result.worker_id == worker.worker_id
    assert result.was_registered is True
    assert result.drained is False  # no agent was connected to drain
    assert await hodei_embedded_scheduler.get_worker(worker.worker_id) is None
    assert hodei_mock_worker_provider.stopped == [worker.worker_id]
    assert hodei_mock_worker_provider.destroyed == [worker.worker_id]
    assert hodei_mock_worker_provider.orphans == []
    assert await service.list_workers() == []


async def test_decommission_of_a_worker_the_scheduler_already_forgot_still_destroys_it(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_scheduler_client: SchedulerPortClient,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler)
    worker = await service.provision_worker(CONFIG)
    assert await hodei_scheduler_client.unregister_worker(worker.worker_id) is UnregistrationStatus.SUCCESS

    result = await service.decommission_worker(worker.worker_id)

    assert result.was_registered is False
    assert result.drained is False
    assert hodei_mock_worker_provider.stopped == [worker.worker_id]
    assert hodei_mock_worker_provider.destroyed == [worker.worker_id]
    assert hodei_mock_worker_provider.orphans == []


async def test_decommission_while_the_scheduler_is_down_raises_registration_error_and_keeps_the_worker(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    service = service_for(hodei_embedded_scheduler, registration=QUICK_RETRIES)
    worker = await service.provision_worker(CONFIG)
    await hodei_embedded_scheduler.stop()

    with pytest.raises(RegistrationError) as caught:
        await service.decommission_worker(worker.worker_id)

    assert isinstance(caught.value, MaxRetriesExceeded)
    assert caught.value.attempts == 2
    assert isinstance(caught.value.last_error, SchedulerUnavailable)
    assert hodei_mock_worker_provider.stopped == []
    assert hodei_mock_worker_provider.destroyed == []
    assert hodei_mock_worker_provider.orphans == [worker.worker_id]


async def test_cancelling_provision_while_registration_hangs_destroys_the_worker(
    hodei_failing_scheduler: Callable[..., Any],
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    scheduler: FailingScheduler = await hodei_failing_scheduler(1, hang=True)
    service = service_for(scheduler, registration=RegistrationConfig(registration_timeout=60.0))
    provisioning = asyncio.create_task(service.provision_worker(CONFIG, worker_id="abandoned-worker"))

    async def registration_in_flight() -> bool:
        return scheduler.calls == 1

    await wait_for(registration_in_flight)
    provisioning.cancel()

    with pytest.raises(asyncio.CancelledError):
        await provisioning
    assert hodei_mock_worker_provider.provisioned == ["abandoned-worker"]
    assert hodei_mock_worker_provider.destroyed == ["abandoned-worker"]
    assert hodei_mock_worker_provider.orphans == []
    assert await scheduler.get_worker("abandoned-worker") is None


async def test_cancelling_provision_workers_while_batch_registration_hangs_destroys_every_provisioned_worker(
    hodei_failing_scheduler: Callable[..., Any],
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    scheduler: FailingScheduler = await hodei_failing_scheduler(1, hang=True)
    service = service_for(scheduler, registration=RegistrationConfig(registration_timeout=60.0))
    provisioning = asyncio.create_task(service.provision_workers(5, CONFIG))

    async def registration_in_flight() -> bool:
        return scheduler.calls == 1

    await wait_for(registration_in_flight)
    provisioning.cancel()

    with pytest.raises(asyncio.CancelledError):
        await provisioning
    assert len(hodei_mock_worker_provider.provisioned) == 5
    assert sorted(hodei_mock_worker_provider.destroyed) == sorted(hodei_mock_worker_provider.provisioned)
    assert hodei_mock_worker_provider.orphans == []
    assert await scheduler.workers() == []


# --- static workers and construction ----------------------------------------------------------------------

STATIC_WORKERS_TOML = """
[[workers]]
id = "build-01"
cpu_cores = 8
memory_mb = 16384
hostname = "build-01.lan"
labels = { arch = "amd64", os = "linux" }

[[workers]]
id = "build-02"
cpu_cores = 4
memory_mb = 8192
pool = "metal"
labels = { arch = "arm64" }
"""


@pytest.fixture
def static_workers_file(tmp_path: Path) -> Path:
    path = tmp_path / "static-workers.toml"
    path.write_text(STATIC_WORKERS_TOML)
    return path


async def test_static_workers_from_a_toml_file_are_registered_as_static_with_their_labels(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
    static_workers_file: Path,
) -> None:
    service = service_for(hodei_embedded_scheduler)

    results = await service.register_static_workers(load_static_workers(static_workers_file))

    assert [(r.worker_id, r.ok) for r in results] == [("build-01", True), ("build-02", True)]
    assert hodei_mock_worker_provider.provisioned == []
    first, second = await hodei_embedded_scheduler.workers()
    assert (first.worker_id, first.worker_type, first.status) == (
        "build-01",
        WorkerType.STATIC,
        WorkerStatus.AVAILABLE,
    )
    assert (first.capabilities.cpu_cores, first.capabilities.memory_mb) == (8, 16384)
    assert dict(first.labels) == {"arch": "amd64", "os": "linux"}
    assert (first.pool, first.hostname) == ("static", "build-01.lan")
    assert (second.worker_id, second.worker_type, second.status) == (
        "build-02",
        WorkerType.STATIC,
        WorkerStatus.AVAILABLE,
    )
    assert (second.capabilities.cpu_cores, second.capabilities.memory_mb) == (4, 8192)
    assert dict(second.labels) == {"arch": "arm64"}
    assert second.pool == "metal"


async def test_registering_static_workers_without_a_registration_adapter_raises_runtime_error(
    hodei_mock_worker_provider: MockWorkerProvider, static_workers_file: Path
) -> None:
    service = WorkerManagementService(hodei_mock_worker_provider)

    with pytest.raises(RuntimeError, match="registration adapter"):
        await service.register_static_workers(load_static_workers(static_workers_file))


async def test_new_with_registration_builds_a_service_that_provisions_and_registers_like_the_constructor(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_scheduler_client: SchedulerPortClient,
    hodei_mock_worker_provider: MockWorkerProvider,
) -> None:
    adapter = WorkerRegistrationAdapter(hodei_scheduler_client, RegistrationConfig())
    config = WorkerManagementConfig(worker_id_prefix="built")

    service = WorkerManagementService.new_with_registration(hodei_mock_worker_provider, adapter, config)

    assert service.provider is hodei_mock_worker_provider
    assert service.registration is adapter
    assert service.config is config
    worker = await service.provision_worker(CONFIG)
    assert worker.status is WorkerStatus.REGISTERED
    assert worker.worker_id.startswith("built-")
    record = await hodei_embedded_scheduler.get_worker(worker.worker_id)
    assert record is not None and record.status is WorkerStatus.AVAILABLE


async def test_a_control_plane_built_from_an_address_closes_the_client_it_made_when_the_block_ends(
    hodei_embedded_scheduler: EmbeddedScheduler, hodei_mock_worker_provider: MockWorkerProvider
) -> None:
    async with build_control_plane(
        hodei_mock_worker_provider, scheduler=hodei_embedded_scheduler.target
    ) as service:
        worker = await service.provision_worker(CONFIG)
    assert service.registration is not None

    with pytest.raises(RegistrationCancelled, match="closed"):
        await service.registration.port.get_worker(worker.worker_id)
    await service.aclose()  # idempotent
    assert hodei_mock_worker_provider.destroyed == []


async def test_closing_a_service_leaves_the_client_and_the_provider_it_was_handed_to_the_caller(
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_scheduler_client: SchedulerPortClient,
    hodei_mock_worker_provider: MockWorkerProvider,
) -> None:
    async with build_control_plane(hodei_mock_worker_provider, scheduler=hodei_scheduler_client) as service:
        worker = await service.provision_worker(CONFIG)
    async with WorkerManagementService(
        hodei_mock_worker_provider, registration=WorkerRegistrationAdapter(hodei_scheduler_client)
    ):
        pass

    record = await hodei_scheduler_client.get_worker(worker.worker_id)
    assert record is not None
    assert record.worker_id == worker.worker_id
    assert [w.worker_id for w in await hodei_mock_worker_provider.list_workers()] == [worker.worker_id]


def test_a_service_cannot_own_the_port_client_of_a_registration_adapter_it_was_not_given(
    hodei_mock_worker_provider: MockWorkerProvider,
) -> None:
    with pytest.raises(ValueError, match="owns_port needs a registration adapter"):
        WorkerManagementService(hodei_mock_worker_provider, owns_port=True)


async def test_a_worker_registered_by_an_attempt_whose_answer_was_lost_is_unregistered_before_it_is_destroyed(
    hodei_failing_scheduler: Callable[..., Any],
    hodei_mock_worker_provider: MockWorkerProvider,
    service_for: ServiceFactory,
) -> None:
    # Every registration is written, then answered UNAVAILABLE: the caller exhausts its retries and gives up
    # on a worker that the scheduler holds — and that no lease would ever expire.
    scheduler: FailingScheduler = await hodei_failing_scheduler(100, lose_answers=True)
    service = service_for(scheduler, registration=RegistrationConfig(max_retries=1, base_backoff=0.01))

    with pytest.raises(ProvisioningError) as caught:
        await service.provision_worker(CONFIG, worker_id="lost-answer")

    assert isinstance(caught.value.cause, MaxRetriesExceeded)
    assert scheduler.failed_calls == 2
    assert hodei_mock_worker_provider.destroyed == ["lost-answer"]
    assert await scheduler.get_worker("lost-answer") is None
