"""Metrics over real gRPC on loopback: known sequences give exact values on both sides, ``/metrics`` is scraped
over HTTP (in-process and from ``hodei scheduler serve`` and ``hodei agent``) and parsed with
``prometheus_client.parser``, and no label ever carries a worker id.
"""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from hodei import (
    DynamicWorkerConfig,
    ErrorCode,
    MaxRetriesExceeded,
    ProvisioningError,
    RegistrationConfig,
    RegistrationFailed,
    SchedulerPortClient,
    WorkerManagementService,
    WorkerRegistrationAdapter,
    WorkerStatus,
)
from hodei.agent import AgentConfig, AgentRefused, WorkerAgent
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand
from hodei.observability._http import MetricsEndpoint
from hodei.observability._metrics import AgentMetrics, ControlPlaneMetrics, SchedulerMetrics
from hodei.ports import CountedTransactions, RegistryStore
from hodei.server._bounds import RegistrationBound
from hodei.stores import PostgresRegistryStore
from hodei.stores._memory import MemoryRegistryStore
from hodei.stores._sqlite import SqliteRegistryStore
from hodei.testing import EmbeddedScheduler, FailingScheduler, MockWorkerProvider
from hodei.transport._codec import pb, pb_grpc
from tests.helpers import make_worker, metric, wait_for
from tests.integration.helpers import CLI_ENV, HODEI, end, scheduler_serve

FAST = LivenessConfig(
    heartbeat_interval=0.05, lease_ttl=0.4, lost_grace=0.6, recovery_window=0.0, sweep_interval=0.05
)
QUICK_RETRIES = RegistrationConfig(base_backoff=0.01, max_backoff=0.02)

# The catalogue, as a scrape shows it: every family the dashboard and the alert rules may name.
CONTROL_PLANE_FAMILIES = {
    "hodei_registrations": "counter",
    "hodei_registration_duration_seconds": "histogram",
    "hodei_registration_attempts": "histogram",
    "hodei_registration_retries": "counter",
    "hodei_registration_batch_size": "histogram",
    "hodei_provisioning_rollbacks": "counter",
}
SCHEDULER_FAMILIES = {
    "hodei_scheduler_registrations": "counter",
    "hodei_workers": "gauge",
    "hodei_heartbeat_lag_seconds": "histogram",
    "hodei_lease_expiries": "counter",
    "hodei_stream_connects": "counter",
    "hodei_streams_open": "gauge",
    "hodei_admission_rejections": "counter",
    "hodei_lease_leader": "gauge",
    "hodei_store_registration_transactions": "counter",
}
AGENT_FAMILIES = {
    "hodei_agent_stream_connects": "counter",
    "hodei_agent_reconnects": "counter",
    "hodei_agent_heartbeats": "counter",
}


async def _true(condition: bool) -> bool:
    return condition


async def eventually(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    await wait_for(lambda: _true(condition()), timeout=timeout)


async def scrape(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            return str(response.read().decode())

    return await asyncio.to_thread(get)


def families(text: str) -> dict[str, tuple[str, str]]:
    """``{family name: (type, help)}`` of a scrape, as Prometheus' own text parser reads it."""
    return {f.name: (f.type, f.documentation) for f in text_string_to_metric_families(text)}


def parsed_sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def adapter_for(
    target: str | SchedulerPortClient, config: RegistrationConfig = QUICK_RETRIES
) -> tuple[WorkerRegistrationAdapter, CollectorRegistry]:
    client = target if isinstance(target, SchedulerPortClient) else SchedulerPortClient(target)
    metrics = ControlPlaneMetrics()
    return WorkerRegistrationAdapter(client, config, metrics=metrics), metrics.registry


def scheduler_count(registry: CollectorRegistry, result: str, worker_type: str = "docker") -> float:
    return metric(registry, "hodei_scheduler_registrations_total", result=result, worker_type=worker_type)


def client_count(registry: CollectorRegistry, result: str, worker_type: str = "docker") -> float:
    return metric(registry, "hodei_registrations_total", result=result, worker_type=worker_type)


# --- the registration flow --------------------------------------------------------------------------------


async def test_three_attempts_make_one_attempts_observation_of_three_and_two_unavailable_retries() -> None:
    async with FailingScheduler(2, metrics=SchedulerMetrics()) as scheduler:
        adapter, client = adapter_for(scheduler.client())

        await adapter.register_worker(make_worker("w-1"))

        assert metric(client, "hodei_registration_attempts_count") == 1
        assert metric(client, "hodei_registration_attempts_sum") == 3
        assert metric(client, "hodei_registration_attempts_bucket", le="2.0") == 0
        assert metric(client, "hodei_registration_attempts_bucket", le="3.0") == 1
        assert metric(client, "hodei_registration_retries_total", cause="unavailable") == 2
        assert client_count(client, "success") == 1
        assert metric(client, "hodei_registration_duration_seconds_count", worker_type="docker") == 1
        # Two backoffs of at least 10 and 20 ms were waited between the first attempt and the outcome.
        assert metric(client, "hodei_registration_duration_seconds_sum", worker_type="docker") >= 0.03
        # The failed calls never reached the registry; the third did, once.
        assert scheduler_count(scheduler.metrics.registry, "created") == 1


async def test_a_worker_invalid_before_sending_counts_once_as_rejected_and_never_reaches_the_scheduler() -> (
    None
):
    async with EmbeddedScheduler() as scheduler:
        adapter, client = adapter_for(scheduler.client())

        with pytest.raises(RegistrationFailed):
            await adapter.register_worker(make_worker("w-bad", cpu_cores=0))

        assert client_count(client, "rejected") == 1
        assert sum(client_count(client, r) for r in ("success", "exhausted", "cancelled")) == 0
        assert metric(client, "hodei_registration_attempts_count") == 0
        assert scheduler_count(scheduler.metrics.registry, "invalid") == 0


async def test_an_invalid_worker_the_scheduler_refuses_counts_once_rejected_and_once_invalid() -> None:
    async with EmbeddedScheduler() as scheduler:
        config = RegistrationConfig(validate_before_send=False)
        adapter, client = adapter_for(scheduler.client(), config)

        with pytest.raises(RegistrationFailed) as refused:
            await adapter.register_worker(make_worker("w-bad", cpu_cores=0))

        assert refused.value.code is ErrorCode.INVALID_ARGUMENT
        assert client_count(client, "rejected") == 1
        assert metric(client, "hodei_registration_attempts_sum") == 1
        assert scheduler_count(scheduler.metrics.registry, "invalid") == 1
        assert scheduler_count(scheduler.metrics.registry, "created") == 0


def request(worker_id: str, worker_type: str = "docker", cpu_cores: int = 1) -> pb.RegisterWorkerRequest:
    return pb.RegisterWorkerRequest(
        worker_id=worker_id,
        capabilities=pb.WorkerCapabilities(cpu_cores=cpu_cores, memory_mb=64),
        metadata=pb.WorkerMetadata(worker_type=worker_type),
    )


def hello(worker_id: str, *, incarnation: int, worker_type: str = "docker") -> pb.ConnectRequest:
    return pb.ConnectRequest(
        hello=pb.WorkerHello(
            worker_id=worker_id,
            incarnation=incarnation,
            capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=64),
            metadata=pb.WorkerMetadata(worker_type=worker_type),
        )
    )


async def test_every_registration_the_scheduler_refuses_counts_once_even_those_it_cannot_decode() -> None:
    async with EmbeddedScheduler() as scheduler, grpc.aio.insecure_channel(scheduler.target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.RegisterWorker(request("w-1", worker_type="mainframe"))
        batch = [request("w-2"), request("w-3", worker_type="mainframe"), request("w-4", cpu_cores=0)]
        await stub.RegisterWorkers(pb.RegisterWorkersRequest(workers=batch))
        for first in (hello("w-5", incarnation=0), hello("w-6", incarnation=1, worker_type="mainframe")):
            call = stub.Connect()
            await call.write(first)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT

        registry = scheduler.metrics.registry
        assert scheduler_count(registry, "created") == 1
        assert scheduler_count(registry, "invalid", "unknown") == 3  # w-1, w-3, w-6: no such worker type
        assert scheduler_count(registry, "invalid") == 2  # w-4 (no CPU), w-5 (no incarnation)


async def test_a_batch_of_n_counts_n_registrations_on_both_sides_and_one_batch_size_of_n() -> None:
    async with EmbeddedScheduler() as scheduler:
        adapter, client = adapter_for(scheduler.client(), RegistrationConfig(batch_size=10))
        workers = [make_worker(f"w-{n:02}") for n in range(25)]

        results = await adapter.register_workers_batch(workers)
        again = await adapter.register_workers_batch(workers)

        assert all(r.ok for r in results + again)
        assert client_count(client, "success") == 50
        assert metric(client, "hodei_registration_batch_size_count") == 2
        assert metric(client, "hodei_registration_batch_size_sum") == 50
        assert metric(client, "hodei_registration_batch_size_bucket", le="10.0") == 0
        assert metric(client, "hodei_registration_batch_size_bucket", le="50.0") == 2
        assert metric(client, "hodei_registration_attempts_count") == 50
        assert metric(client, "hodei_registration_attempts_sum") == 50
        assert scheduler_count(scheduler.metrics.registry, "created") == 25
        assert scheduler_count(scheduler.metrics.registry, "updated") == 25


async def test_a_batch_retried_by_a_failing_scheduler_counts_each_workers_retry_and_attempts() -> None:
    async with FailingScheduler(1) as scheduler:
        adapter, client = adapter_for(scheduler.client(), RegistrationConfig(batch_size=4, base_backoff=0.01))

        await adapter.register_workers_batch([make_worker(f"w-{n}") for n in range(4)])

        assert metric(client, "hodei_registration_retries_total", cause="unavailable") == 4
        assert metric(client, "hodei_registration_attempts_sum") == 8
        assert client_count(client, "success") == 4
        assert scheduler_count(scheduler.metrics.registry, "created") == 4


# --- provisioning rollbacks -------------------------------------------------------------------------------


async def test_a_refused_registration_destroys_the_worker_and_counts_a_registration_failed_rollback() -> None:
    async with FailingScheduler(0, refuse={"w-refused": ErrorCode.PERMISSION_DENIED}) as scheduler:
        provider = MockWorkerProvider()
        adapter, client = adapter_for(scheduler.client())
        service = WorkerManagementService(provider, registration=adapter)

        with pytest.raises(ProvisioningError):
            await service.provision_worker(DynamicWorkerConfig(), worker_id="w-refused")
        await service.provision_worker(DynamicWorkerConfig(), worker_id="w-fine")

        assert provider.destroyed == ["w-refused"]
        assert metric(client, "hodei_provisioning_rollbacks_total", reason="registration_failed") == 1
        assert client_count(client, "rejected") == 1
        assert client_count(client, "success") == 1
        assert scheduler_count(scheduler.metrics.registry, "refused") == 1


async def test_exhausted_registrations_of_a_batch_count_one_rollback_per_destroyed_worker() -> None:
    async with FailingScheduler(100) as scheduler:
        provider = MockWorkerProvider()
        config = RegistrationConfig(max_retries=1, base_backoff=0.01)
        adapter, client = adapter_for(scheduler.client(), config)
        service = WorkerManagementService(provider, registration=adapter)

        results = await service.provision_workers(3, DynamicWorkerConfig())

        assert all(isinstance(r.error, ProvisioningError) for r in results)
        assert all(isinstance(r.error.cause, MaxRetriesExceeded) for r in results if r.error is not None)
        assert sorted(provider.destroyed) == sorted(provider.provisioned)
        assert metric(client, "hodei_provisioning_rollbacks_total", reason="registration_failed") == 3
        assert client_count(client, "exhausted") == 3


async def test_a_provisioning_cancelled_while_it_registers_counts_a_cancelled_rollback() -> None:
    async with FailingScheduler(1, hang=True) as scheduler:
        provider = MockWorkerProvider()
        adapter, client = adapter_for(scheduler.client())
        service = WorkerManagementService(provider, registration=adapter)
        task = asyncio.create_task(service.provision_worker(DynamicWorkerConfig(), worker_id="w-1"))
        await eventually(lambda: scheduler.failed_calls == 1)

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert provider.destroyed == ["w-1"]
        assert metric(client, "hodei_provisioning_rollbacks_total", reason="cancelled") == 1
        assert metric(client, "hodei_provisioning_rollbacks_total", reason="registration_failed") == 0
        assert client_count(client, "cancelled") == 1


# --- workers by status, for each store --------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RegistryStore]:
    opened: RegistryStore
    if request.param == "memory":
        opened = MemoryRegistryStore()
    elif request.param == "sqlite":
        opened = await SqliteRegistryStore.open(tmp_path / "registry.db")
    else:
        opened = await PostgresRegistryStore.open(request.getfixturevalue("postgres_dsn"), max_size=4)
    yield opened
    await opened.close()


async def test_the_registration_transactions_counted_are_the_stores_own(store: RegistryStore) -> None:
    async with EmbeddedScheduler(store=store) as scheduler, scheduler.client() as client:
        registry = scheduler.metrics.registry
        await asyncio.gather(*(client.register_worker(make_worker(f"w-{n}")) for n in range(60)))
        await client.register_workers([make_worker(f"b-{n}") for n in range(10)])
        counted = metric(registry, "hodei_store_registration_transactions_total")
        assert isinstance(store, CountedTransactions)
        assert counted == store.registration_transactions
        # The batch in one; each single in its own on the memory store, in shared ones on the others.
        assert counted == 61 if isinstance(store, MemoryRegistryStore) else 2 <= counted <= 61
        assert scheduler_count(registry, "created") == 70


async def test_workers_by_status_follow_registration_transition_and_unregistration(
    store: RegistryStore,
) -> None:
    liveness = LivenessConfig(sweep_interval=0.05, recovery_window=0.0)
    async with EmbeddedScheduler(store=store, liveness=liveness) as scheduler:
        registry = scheduler.metrics.registry
        client = scheduler.client()

        def by_status() -> dict[str, float]:
            return {
                s.value: n for s in WorkerStatus if (n := metric(registry, "hodei_workers", status=s.value))
            }

        await client.register_workers([make_worker(f"w-{n}") for n in range(3)])
        await eventually(lambda: by_status() == {"available": 3})
        await client.drain_worker("w-0")
        await eventually(lambda: by_status() == {"available": 2, "draining": 1})
        await client.unregister_worker("w-0")
        await client.unregister_worker("w-1")
        await eventually(lambda: by_status() == {"available": 1})
        assert metric(registry, "hodei_workers", status="lost") == 0


# --- agents' streams --------------------------------------------------------------------------------------


def agent_on(target: str, worker_id: str, metrics: AgentMetrics, **options: object) -> WorkerAgent:
    config = AgentConfig(schedulers=(target,), worker_id=worker_id, cpu_cores=1, memory_mb=512, **options)  # type: ignore[arg-type]
    return WorkerAgent(config, metrics=metrics)


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_connects_reconnects_open_streams_and_heartbeats_through_real_connect_streams() -> None:
    async with EmbeddedScheduler(liveness=FAST, metrics=SchedulerMetrics()) as scheduler:
        server = scheduler.metrics.registry
        agent_metrics = AgentMetrics()
        agent = agent_on(scheduler.target, "agent-1", agent_metrics, reconnect_base=0.01, reconnect_max=0.02)
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), 5)
            assert metric(server, "hodei_stream_connects_total", kind="first") == 1
            assert metric(server, "hodei_streams_open") == 1

            # The scheduler asks for a fresh registration: the agent comes back on a new stream.
            scheduler.scheduler.sessions["agent-1"].push(WorkerCommand(CommandKind.REREGISTER, "test"))
            await eventually(lambda: agent.connections == 2)
            await eventually(lambda: metric(server, "hodei_streams_open") == 1)
            assert metric(server, "hodei_stream_connects_total", kind="reconnect") == 1
            assert metric(server, "hodei_stream_connects_total", kind="first") == 1
            assert metric(agent_metrics.registry, "hodei_agent_stream_connects_total", result="ok") == 2
            assert metric(agent_metrics.registry, "hodei_agent_reconnects_total") == 1

            await eventually(lambda: agent.heartbeats_sent >= 3)
            assert metric(agent_metrics.registry, "hodei_agent_heartbeats_total") == agent.heartbeats_sent
            await eventually(lambda: metric(server, "hodei_heartbeat_lag_seconds_count") >= 1)

            agent.request_shutdown()
            await asyncio.wait_for(task, 5)
            await eventually(lambda: metric(server, "hodei_streams_open") == 0)
        finally:
            await stopped(task)


async def test_a_second_stream_of_one_worker_replaces_the_first_and_streams_open_stays_exact() -> None:
    async with (
        EmbeddedScheduler(liveness=FAST) as scheduler,
        grpc.aio.insecure_channel(scheduler.target) as ch,
    ):
        registry = scheduler.metrics.registry
        stub = pb_grpc.SchedulerServiceStub(ch)
        first = stub.Connect()
        await first.write(hello("w-1", incarnation=1))
        await first.read()  # the acknowledgement
        second = stub.Connect()
        await second.write(hello("w-1", incarnation=2))
        await second.read()

        await eventually(lambda: metric(registry, "hodei_streams_open") == 1)  # the first was ended
        assert metric(registry, "hodei_stream_connects_total", kind="first") == 1
        assert metric(registry, "hodei_stream_connects_total", kind="reconnect") == 1
        await second.done_writing()
        await eventually(lambda: metric(registry, "hodei_streams_open") == 0)


async def test_an_agent_counts_its_refused_connects_by_status_code() -> None:
    async with EmbeddedScheduler() as scheduler:
        metrics = AgentMetrics()
        agent = agent_on(scheduler.target, "bad id!", metrics)

        with pytest.raises(AgentRefused):
            await asyncio.wait_for(agent.run(), 5)

        assert metric(metrics.registry, "hodei_agent_stream_connects_total", result="invalid_argument") == 1
        assert metric(metrics.registry, "hodei_agent_stream_connects_total", result="ok") == 0
        assert scheduler_count(scheduler.metrics.registry, "invalid", "process") == 1
    # Nothing listens any more: the agent keeps trying, and counts each failure.
    metrics = AgentMetrics()
    agent = agent_on(scheduler.target, "w-1", metrics, reconnect_base=0.01, reconnect_max=0.02)
    task = asyncio.create_task(agent.run())
    try:
        refused = {"result": "unavailable"}  # a series that exists once the first failure is counted
        await eventually(
            lambda: (
                (metrics.registry.get_sample_value("hodei_agent_stream_connects_total", refused) or 0) >= 2
            )
        )
        assert metric(metrics.registry, "hodei_agent_reconnects_total") == 0
    finally:
        await stopped(task)


# --- the registration bound ---------------------------------------------------------------------------------


async def test_calls_refused_by_registration_bound_are_counted_by_method() -> None:
    metrics = SchedulerMetrics()
    bound = RegistrationBound(max_in_flight=1, retry_after=0.05, metrics=metrics)
    async with (
        FailingScheduler(0, delay=0.3, registration_bound=bound, metrics=metrics) as scheduler,
        grpc.aio.insecure_channel(scheduler.target) as channel,
    ):
        stub = pb_grpc.SchedulerServiceStub(channel)

        async def register() -> pb.RegisterWorkerResponse:
            return await stub.RegisterWorker(request("w-1"))

        admitted = asyncio.create_task(register())
        await eventually(lambda: bound.in_flight == 1)

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RegisterWorkers(pb.RegisterWorkersRequest(workers=[request("w-2")]))
        await admitted

        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert metric(metrics.registry, "hodei_admission_rejections_total", method="RegisterWorkers") == 1
        assert metric(metrics.registry, "hodei_admission_rejections_total", method="RegisterWorker") == 0
        assert scheduler_count(metrics.registry, "created") == 1  # the refused call reached nobody


async def test_the_default_registration_bound_of_a_scheduler_shares_its_metrics() -> None:
    metrics = SchedulerMetrics()

    scheduler = EmbeddedScheduler(metrics=metrics)

    assert scheduler.registration_bound.metrics is metrics


# --- /metrics over HTTP -----------------------------------------------------------------------------------


def assert_catalogue(scraped: dict[str, tuple[str, str]], expected: dict[str, str]) -> None:
    for name, kind in expected.items():
        assert name in scraped, f"{name} is not in the scrape"
        assert scraped[name][0] == kind, f"{name} is a {scraped[name][0]}, not a {kind}"
        assert scraped[name][1], f"{name} has no HELP"


async def test_scheduler_serve_serves_its_metrics_over_http_with_every_family_of_the_catalogue() -> None:
    async with scheduler_serve("--store", "memory", "--metrics-listen", "127.0.0.1:0") as served:
        await served.listening_line()
        line = await served.listening_line()
        found = re.fullmatch(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
        assert found is not None, line
        url = found.group(1)
        async with SchedulerPortClient(served.target) as client:
            await client.register_worker(make_worker("w-1"))

            text = await scrape(url)

        assert_catalogue(families(text), SCHEDULER_FAMILIES)
        assert "process_cpu_seconds" in families(text)
        assert (
            parsed_sample(text, "hodei_scheduler_registrations_total", result="created", worker_type="docker")
            == 1
        )
        # The gauges follow the liveness ticks, every second by default; the first makes this replica leader.
        for _ in range(50):
            text = await scrape(url)
            if parsed_sample(text, "hodei_workers", status="available") == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("hodei_workers{status=available} did not become 1 within 5 s")
        assert parsed_sample(text, "hodei_lease_leader") == 1
        finished = await served.stop()
        assert finished.returncode == 0


async def test_a_bad_metrics_address_is_refused_before_the_scheduler_starts() -> None:
    from tests.integration.helpers import run_hodei

    finished = await run_hodei("scheduler", "serve", "--store", "memory", "--metrics-listen", "nowhere")

    assert finished.returncode == 2
    assert "HOST:PORT" in finished.stderr


async def test_hodei_agent_serves_its_metrics_and_logs_where() -> None:
    async with EmbeddedScheduler() as scheduler:
        process = await asyncio.create_subprocess_exec(
            HODEI,
            "agent",
            "--scheduler",
            scheduler.target,
            "--worker-id",
            "cli-agent-1",
            "--metrics-listen",
            "127.0.0.1:0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=CLI_ENV,
        )
        try:
            assert process.stderr is not None
            url = None
            async with asyncio.timeout(10):
                while url is None:
                    line = (await process.stderr.readline()).decode()
                    assert line, "hodei agent ended without saying where its metrics are"
                    if found := re.search(r'"url": "(http://127\.0\.0\.1:\d+/metrics)"', line):
                        url = found.group(1)
            for _ in range(100):
                text = await scrape(url)
                if parsed_sample(text, "hodei_agent_stream_connects_total", result="ok") == 1:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the agent's scrape never showed its connect: {text}")
            assert_catalogue(families(text), AGENT_FAMILIES)
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 10)
            assert process.returncode == 0
        finally:
            await end(process)


async def test_the_control_plane_and_the_agent_serve_every_family_of_their_catalogue_in_process() -> None:
    registry = CollectorRegistry()
    ControlPlaneMetrics(registry)
    AgentMetrics(registry)
    with MetricsEndpoint(registry) as endpoint:
        scraped = families(await scrape(endpoint.url))

    assert_catalogue(scraped, CONTROL_PLANE_FAMILIES | AGENT_FAMILIES)


async def test_a_stopped_endpoint_no_longer_answers_and_cannot_start_again() -> None:
    endpoint = MetricsEndpoint(CollectorRegistry(), "127.0.0.1:0")
    endpoint.start()
    url = endpoint.url
    await scrape(url)
    endpoint.stop()
    endpoint.stop()

    with pytest.raises(OSError):
        await scrape(url)
    with pytest.raises(RuntimeError):
        endpoint.start()


async def test_no_label_of_any_metric_carries_a_worker_id() -> None:
    marker = "7f3a9c"
    registry = CollectorRegistry()
    scheduler_metrics = SchedulerMetrics(registry)
    control = ControlPlaneMetrics(registry)
    agent_metrics = AgentMetrics(registry)
    async with FailingScheduler(1, metrics=scheduler_metrics) as scheduler:
        adapter = WorkerRegistrationAdapter(scheduler.client(), QUICK_RETRIES, metrics=control)
        service = WorkerManagementService(MockWorkerProvider(), registration=adapter)
        await adapter.register_worker(make_worker(f"tenant-{marker}-single"))
        await adapter.register_workers_batch([make_worker(f"tenant-{marker}-b{n}") for n in range(5)])
        with pytest.raises(RegistrationFailed):
            await adapter.register_worker(make_worker(f"tenant-{marker}-invalid", cpu_cores=0))
        scheduler.refuse(f"tenant-{marker}-refused")
        with pytest.raises(ProvisioningError):
            await service.provision_worker(DynamicWorkerConfig(), worker_id=f"tenant-{marker}-refused")
        agent = agent_on(scheduler.target, f"tenant-{marker}-agent", agent_metrics)
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), 5)
            with MetricsEndpoint(registry) as endpoint:
                text = await scrape(endpoint.url)
        finally:
            await stopped(task)

    label_values = [
        value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        for value in s.labels.values()
    ]
    assert label_values, "the scrape has no labelled sample at all"
    assert not [v for v in label_values if marker in v]
    assert marker not in text
    assert (
        parsed_sample(text, "hodei_scheduler_registrations_total", result="refused", worker_type="docker")
        == 1
    )


async def test_an_endpoint_on_a_taken_port_fails_to_start_and_can_be_stopped_all_the_same() -> None:
    with MetricsEndpoint(CollectorRegistry(), "127.0.0.1:0") as serving:
        taken = MetricsEndpoint(CollectorRegistry(), serving.address)

        with pytest.raises(OSError):
            taken.start()
        taken.stop()

        with pytest.raises(RuntimeError):
            taken.start()


async def test_scheduler_serve_exits_1_with_one_line_when_its_metrics_port_is_taken() -> None:
    from tests.helpers import free_port
    from tests.integration.helpers import run_hodei

    with MetricsEndpoint(CollectorRegistry(), "127.0.0.1:0") as serving:
        finished = await run_hodei(
            "scheduler",
            "serve",
            "--store",
            "memory",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--metrics-listen",
            serving.address,
        )

    assert finished.returncode == 1
    assert f"hodei scheduler: cannot serve metrics on {serving.address}:" in finished.stderr
    assert "Traceback" not in finished.stderr
