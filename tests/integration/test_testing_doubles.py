"""The test doubles hodei ships in ``hodei.testing``, held to the standard of any product feature.

EmbeddedScheduler and FailingScheduler are real gRPC servers on loopback, checked here from the outside with a
raw SchedulerPortClient; MockWorkerProvider and the pytest plugin's fixtures are checked as a user would use them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei import (
    AccessDenied,
    DynamicWorkerConfig,
    ErrorCode,
    InvalidWorkerData,
    ProviderError,
    RegistrationReceipt,
    SchedulerConflict,
    SchedulerError,
    SchedulerInternalError,
    SchedulerOverloaded,
    SchedulerPortClient,
    SchedulerTimeout,
    SchedulerUnavailable,
    WorkerStatus,
    WorkerType,
)
from hodei._infra.directories import free_loopback_port
from hodei._ownership import owned
from hodei.testing import EmbeddedScheduler, FailingScheduler, MockWorkerProvider
from tests.helpers import make_worker

SCHEDULER_SERVICE = "hodei.scheduler.v1.SchedulerService"


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=2
    )
    return int(reply.status)


@pytest.fixture
async def raw_client() -> AsyncIterator[Callable[[str], SchedulerPortClient]]:
    """``raw_client(target)``: a SchedulerPortClient owning its channel, closed at the end of the test."""
    clients: list[SchedulerPortClient] = []

    def connect(target: str) -> SchedulerPortClient:
        client = SchedulerPortClient(target)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


# --- EmbeddedScheduler ------------------------------------------------------------------------------------


async def test_embedded_scheduler_binds_a_free_loopback_port_and_serves_health_on_it() -> None:
    async with EmbeddedScheduler() as scheduler:
        assert scheduler.port > 0
        assert scheduler.target == f"127.0.0.1:{scheduler.port}"
        channel = scheduler.channel()
        assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await health_of(channel, SCHEDULER_SERVICE) == health_pb2.HealthCheckResponse.SERVING


async def test_embedded_scheduler_client_registers_workers_into_the_schedulers_registry() -> None:
    async with EmbeddedScheduler() as scheduler:
        client = scheduler.client()

        receipt = await client.register_worker(make_worker("via-client", cpu_cores=3, labels={"k": "v"}))

        assert receipt.created is True
        record = await scheduler.get_worker("via-client")
        assert record is not None
        assert record.status is WorkerStatus.AVAILABLE
        assert record.capabilities.cpu_cores == 3
        assert dict(record.labels) == {"k": "v"}
        assert await client.get_worker("via-client") == record


async def test_add_worker_puts_the_worker_in_the_registry_as_available_and_get_worker_returns_it(
    hodei_embedded_scheduler: EmbeddedScheduler, hodei_scheduler_client: SchedulerPortClient
) -> None:
    added = await hodei_embedded_scheduler.add_worker(make_worker("added-directly", memory_mb=2048))

    assert added.worker_id == "added-directly"
    assert added.status is WorkerStatus.AVAILABLE
    assert added.capabilities.memory_mb == 2048
    assert await hodei_embedded_scheduler.get_worker("added-directly") == added
    assert await hodei_scheduler_client.get_worker("added-directly") == added
    assert await hodei_embedded_scheduler.get_worker("never-added") is None


async def test_workers_lists_every_registered_worker_in_worker_id_order(
    hodei_embedded_scheduler: EmbeddedScheduler, hodei_scheduler_client: SchedulerPortClient
) -> None:
    assert await hodei_embedded_scheduler.workers() == []
    for worker_id in ("charlie", "alpha"):
        await hodei_embedded_scheduler.add_worker(make_worker(worker_id))
    await hodei_scheduler_client.register_worker(make_worker("bravo"))

    assert [r.worker_id for r in await hodei_embedded_scheduler.workers()] == ["alpha", "bravo", "charlie"]


async def test_stop_is_idempotent_closes_the_channels_it_handed_out_and_frees_the_port(
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    scheduler = await EmbeddedScheduler().start()
    channel = scheduler.channel()
    assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING

    await scheduler.stop()
    await scheduler.stop()

    with pytest.raises(grpc.aio.UsageError):
        await health_of(channel)
    with pytest.raises(SchedulerUnavailable):
        await raw_client(scheduler.target).get_worker("anyone", timeout=2)


async def test_starting_an_embedded_scheduler_a_second_time_raises_runtime_error() -> None:
    scheduler = await EmbeddedScheduler().start()
    try:
        with pytest.raises(RuntimeError):
            await scheduler.start()
    finally:
        await scheduler.stop()
    with pytest.raises(RuntimeError):
        await scheduler.start()


async def test_embedded_scheduler_new_returns_a_started_scheduler() -> None:
    scheduler = await EmbeddedScheduler.new()
    try:
        assert await health_of(scheduler.channel()) == health_pb2.HealthCheckResponse.SERVING
        await scheduler.client().register_worker(make_worker("from-new"))
        assert await scheduler.get_worker("from-new") is not None
    finally:
        await scheduler.stop()


async def test_two_embedded_schedulers_run_side_by_side_on_different_ports_with_isolated_registries() -> None:
    async with EmbeddedScheduler() as first, EmbeddedScheduler() as second:
        assert first.port != second.port

        await first.client().register_worker(make_worker("only-in-first"))
        await second.client().register_worker(make_worker("only-in-second"))

        assert [r.worker_id for r in await first.workers()] == ["only-in-first"]
        assert [r.worker_id for r in await second.workers()] == ["only-in-second"]
        assert await second.client().get_worker("only-in-first") is None
        assert await first.client().get_worker("only-in-second") is None


# --- FailingScheduler -------------------------------------------------------------------------------------


async def test_failing_scheduler_fails_the_first_two_calls_with_unavailable_and_serves_the_third(
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    async with FailingScheduler(2) as scheduler:
        client = raw_client(scheduler.target)

        for _ in range(2):
            with pytest.raises(SchedulerUnavailable) as caught:
                await client.register_worker(make_worker("patient"))
            assert caught.value.code is ErrorCode.UNAVAILABLE
        receipt = await client.register_worker(make_worker("patient"))

        assert receipt.record.status is WorkerStatus.AVAILABLE
        assert scheduler.calls == 3
        assert scheduler.failed_calls == 2
        assert [r.worker_id for r in await scheduler.workers()] == ["patient"]


async def test_failing_scheduler_fails_a_whole_batch_call_like_a_single_one(
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    async with FailingScheduler(1) as scheduler:
        client = raw_client(scheduler.target)
        batch = [make_worker("one"), make_worker("two")]

        with pytest.raises(SchedulerUnavailable):
            await client.register_workers(batch)
        outcomes = await client.register_workers(batch)

        assert all(isinstance(o, RegistrationReceipt) for o in outcomes)
        assert (scheduler.calls, scheduler.failed_calls) == (2, 1)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (ErrorCode.RESOURCE_EXHAUSTED, SchedulerOverloaded),
        (ErrorCode.ABORTED, SchedulerConflict),
        (ErrorCode.PERMISSION_DENIED, AccessDenied),
        (ErrorCode.INTERNAL, SchedulerInternalError),
    ],
)
async def test_failing_scheduler_code_chooses_the_status_code_of_the_injected_failures(
    raw_client: Callable[[str], SchedulerPortClient], code: ErrorCode, kind: type[SchedulerError]
) -> None:
    async with FailingScheduler(1, code=code) as scheduler:
        client = raw_client(scheduler.target)

        with pytest.raises(kind) as caught:
            await client.register_worker(make_worker())

        assert caught.value.code is code
        assert caught.value.message == "injected failure"


async def test_hanging_failing_scheduler_ends_the_call_with_scheduler_timeout_at_the_clients_deadline(
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    async with FailingScheduler(1, hang=True) as scheduler:
        client = raw_client(scheduler.target)

        started = time.monotonic()
        with pytest.raises(SchedulerTimeout):
            await client.register_worker(make_worker("hung"), timeout=0.3)
        elapsed = time.monotonic() - started

        assert elapsed >= 0.3
        assert scheduler.failed_calls == 1
        assert await scheduler.get_worker("hung") is None


async def test_delayed_failing_scheduler_serves_the_call_after_the_delay(
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    async with FailingScheduler(0, delay=0.3) as scheduler:
        client = raw_client(scheduler.target)

        started = time.monotonic()
        receipt = await client.register_worker(make_worker("slow"))
        elapsed = time.monotonic() - started

        assert receipt.record.worker_id == "slow"
        assert 0.3 <= elapsed < 5.0
        assert (scheduler.calls, scheduler.failed_calls) == (1, 0)


async def test_refuse_refuses_only_the_named_workers_inside_a_batch(
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    refuse = {"bad-apple": ErrorCode.PERMISSION_DENIED, "bad-data": ErrorCode.INVALID_ARGUMENT}
    async with FailingScheduler(0, refuse=refuse) as scheduler:
        client = raw_client(scheduler.target)
        ids = ["good-1", "bad-apple", "good-2", "bad-data", "good-3"]

        outcomes = await client.register_workers([make_worker(i) for i in ids])

        assert [type(o) for o in outcomes] == [
            RegistrationReceipt,
            AccessDenied,
            RegistrationReceipt,
            InvalidWorkerData,
            RegistrationReceipt,
        ]
        assert [o.worker_id for o in outcomes if isinstance(o, SchedulerError)] == ["bad-apple", "bad-data"]
        assert [r.worker_id for r in await scheduler.workers()] == ["good-1", "good-2", "good-3"]
        with pytest.raises(AccessDenied):
            await client.register_worker(make_worker("bad-apple"))


async def test_get_worker_is_unaffected_by_default_and_only_registration_calls_misbehave(
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    async with FailingScheduler(3) as scheduler:
        client = raw_client(scheduler.target)
        await scheduler.add_worker(make_worker("present"))

        for _ in range(3):
            record = await client.get_worker("present")
            assert record is not None and record.worker_id == "present"
        assert (await client.list_workers()).workers[0].worker_id == "present"

        assert (scheduler.calls, scheduler.failed_calls) == (0, 0)
        with pytest.raises(SchedulerUnavailable):
            await client.register_worker(make_worker("newcomer"))


async def test_methods_chooses_which_rpcs_misbehave(raw_client: Callable[[str], SchedulerPortClient]) -> None:
    async with FailingScheduler(1, methods={"GetWorker"}) as scheduler:
        client = raw_client(scheduler.target)

        receipt = await client.register_worker(make_worker("registered-fine"))
        assert receipt.record.worker_id == "registered-fine"
        assert scheduler.calls == 0

        with pytest.raises(SchedulerUnavailable):
            await client.get_worker("registered-fine")
        record = await client.get_worker("registered-fine")
        assert record is not None and record.worker_id == "registered-fine"
        assert (scheduler.calls, scheduler.failed_calls) == (2, 1)


async def test_fail_next_set_delay_and_refuse_switch_the_behaviour_of_a_running_scheduler(
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    async with FailingScheduler(0) as scheduler:
        client = raw_client(scheduler.target)
        await client.register_worker(make_worker("w1"))

        scheduler.fail_next(2, code=ErrorCode.ABORTED)
        for _ in range(2):
            with pytest.raises(SchedulerConflict):
                await client.register_worker(make_worker("w2"))
        await client.register_worker(make_worker("w2"))

        scheduler.fail_next(1, hang=True)
        with pytest.raises(SchedulerTimeout):
            await client.register_worker(make_worker("w3"), timeout=0.2)

        scheduler.set_delay(0.2)
        started = time.monotonic()
        await client.register_worker(make_worker("w3"))
        assert time.monotonic() - started >= 0.2
        scheduler.set_delay(0)

        scheduler.refuse("w4")
        with pytest.raises(AccessDenied):
            await client.register_worker(make_worker("w4"))
        scheduler.refuse("w5", ErrorCode.INVALID_ARGUMENT)
        with pytest.raises(InvalidWorkerData):
            await client.register_worker(make_worker("w5"))

        assert scheduler.calls == 8
        assert scheduler.failed_calls == 3
        assert [r.worker_id for r in await scheduler.workers()] == ["w1", "w2", "w3"]


# --- MockWorkerProvider -----------------------------------------------------------------------------------


async def test_mock_provider_records_provisioned_stopped_and_destroyed_workers_in_call_order() -> None:
    provider = MockWorkerProvider()
    config = DynamicWorkerConfig(worker_type=WorkerType.PROCESS, cpu_cores=1)

    worker = await provider.provision("b", config)
    await provider.provision("a", config)
    await provider.provision("c", config)
    await provider.stop("c")
    await provider.stop("b")
    await provider.destroy("c")
    await provider.destroy("b")
    await provider.destroy("never-provisioned")

    assert (worker.worker_id, worker.worker_type, worker.config, worker.status) == (
        "b",
        WorkerType.PROCESS,
        owned(config, "hodei"),  # marked with its owner id
        WorkerStatus.PROVISIONING,
    )
    assert provider.provisioned == ["b", "a", "c"]
    assert provider.stopped == ["c", "b"]
    assert provider.destroyed == ["c", "b"]
    assert [w.worker_id for w in await provider.list_workers()] == ["a"]


async def test_mock_provider_rejects_a_duplicate_worker_id_with_provider_error_and_keeps_the_first() -> None:
    provider = MockWorkerProvider()
    first = await provider.provision("twin", DynamicWorkerConfig(cpu_cores=1))

    with pytest.raises(ProviderError) as caught:
        await provider.provision("twin", DynamicWorkerConfig(cpu_cores=8))

    assert caught.value.worker_id == "twin"
    assert caught.value.hint == "choose another worker id"
    assert provider.provisioned == ["twin"]
    assert provider.running == {"twin": first}


async def test_fail_provision_fails_exactly_the_next_n_provision_calls() -> None:
    provider = MockWorkerProvider()
    custom = ProviderError("quota exceeded", hint="raise the quota")
    provider.fail_provision(2)
    provider.fail_provision(1, custom)

    with pytest.raises(ProviderError, match="injected provisioning failure"):
        await provider.provision("w1", DynamicWorkerConfig())
    with pytest.raises(ProviderError, match="injected provisioning failure"):
        await provider.provision("w1", DynamicWorkerConfig())
    with pytest.raises(ProviderError) as caught:
        await provider.provision("w1", DynamicWorkerConfig())
    assert caught.value is custom
    await provider.provision("w1", DynamicWorkerConfig())

    assert provider.provisioned == ["w1"]


async def test_fail_destroy_fails_the_next_destroy_and_keeps_the_worker_running() -> None:
    provider = MockWorkerProvider()
    await provider.provision("sticky", DynamicWorkerConfig())
    provider.fail_destroy()

    with pytest.raises(ProviderError, match="injected destroy failure"):
        await provider.destroy("sticky")
    assert provider.orphans == ["sticky"]
    assert provider.destroyed == []

    await provider.destroy("sticky")
    assert provider.orphans == []
    assert provider.destroyed == ["sticky"]


async def test_status_and_orphans_follow_the_workers_that_are_running() -> None:
    provider = MockWorkerProvider()
    for worker_id in ("zulu", "alpha", "mike"):
        await provider.provision(worker_id, DynamicWorkerConfig())
    await provider.destroy("mike")

    assert await provider.status("alpha") is WorkerStatus.AVAILABLE
    assert await provider.status("mike") is None
    assert await provider.status("unknown") is None
    assert provider.orphans == ["alpha", "zulu"]


# --- the pytest plugin ------------------------------------------------------------------------------------


@pytest.fixture
async def unreachable_after_teardown() -> AsyncIterator[list[str]]:
    """Targets that must refuse connections once the fixtures requested after this one are torn down.

    Requested before a plugin fixture, its teardown runs after the plugin fixture's.
    """
    targets: list[str] = []
    yield targets
    for target in targets:
        async with SchedulerPortClient(target) as client:
            with pytest.raises(SchedulerUnavailable):
                await client.get_worker("anyone", timeout=2)


def test_hodei_pytest_plugin_is_registered_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("hodei")

    assert plugin is not None
    assert plugin.__name__ == "hodei.testing.pytest_plugin"


async def test_embedded_scheduler_fixture_is_started_and_scheduler_client_talks_to_it(
    unreachable_after_teardown: list[str],
    hodei_embedded_scheduler: EmbeddedScheduler,
    hodei_scheduler_client: SchedulerPortClient,
) -> None:
    unreachable_after_teardown.append(hodei_embedded_scheduler.target)
    assert type(hodei_embedded_scheduler) is EmbeddedScheduler
    assert hodei_scheduler_client.target == hodei_embedded_scheduler.target

    await hodei_scheduler_client.register_worker(make_worker("through-fixture"))

    record = await hodei_embedded_scheduler.get_worker("through-fixture")
    assert record is not None and record.status is WorkerStatus.AVAILABLE


async def test_failing_scheduler_fixture_builds_started_schedulers_with_the_given_options(
    unreachable_after_teardown: list[str],
    hodei_failing_scheduler: Callable[..., Any],
    raw_client: Callable[[str], SchedulerPortClient],
) -> None:
    aborting: FailingScheduler = await hodei_failing_scheduler(2, code=ErrorCode.ABORTED)
    healthy: FailingScheduler = await hodei_failing_scheduler(0)
    unreachable_after_teardown += [aborting.target, healthy.target]
    assert aborting.port != healthy.port

    for _ in range(2):
        with pytest.raises(SchedulerConflict):
            await raw_client(aborting.target).register_worker(make_worker())
    await raw_client(aborting.target).register_worker(make_worker())
    await raw_client(healthy.target).register_worker(make_worker())

    assert (aborting.calls, aborting.failed_calls) == (3, 2)
    assert (healthy.calls, healthy.failed_calls) == (1, 0)


def test_mock_worker_provider_fixture_is_a_fresh_empty_provider(
    hodei_mock_worker_provider: MockWorkerProvider,
) -> None:
    assert isinstance(hodei_mock_worker_provider, MockWorkerProvider)
    assert hodei_mock_worker_provider.running == {}
    assert hodei_mock_worker_provider.provisioned == []
    assert hodei_mock_worker_provider.orphans == []


def test_a_free_loopback_port_lies_below_the_kernel_s_ephemeral_range_and_can_be_bound() -> None:
    # A port the kernel hands out itself may be handed out again, as an outgoing connection's: a server killed
    # and started again on its port while agents reconnect would find it taken.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_loopback_port() for _ in range(20)}

    assert all(10_000 <= port < low for port in ports), sorted(ports)
    assert len(ports) > 1  # drawn at random: side-by-side test sessions rarely meet
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))
