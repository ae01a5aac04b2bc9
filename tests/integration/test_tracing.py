"""Traces across the gRPC hop, over real gRPC on loopback: one trace from ``provision_worker`` through each
registration attempt and the client span to the scheduler's server span, in one process and across two.

The test process traces through an SDK provider with an in-memory exporter, handed to ``configure_tracing``
(the global provider can be set only once per process, so hodei never needs it to be).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    ErrorCode,
    ProvisioningError,
    RegistrationConfig,
    SchedulerPortClient,
    WorkerManagementService,
    WorkerRegistrationAdapter,
    WorkerType,
)
from hodei.observability import _tracing as tracing
from hodei.testing import EmbeddedScheduler, FailingScheduler, MockWorkerProvider
from tests.helpers import free_port, make_worker
from tests.integration.helpers import CLI_ENV, HODEI, end, health_becomes_serving

REGISTER = "/hodei.scheduler.v1.SchedulerService/RegisterWorker"
REGISTER_BATCH = "/hodei.scheduler.v1.SchedulerService/RegisterWorkers"
SCHEDULER_SERVICE = "hodei.scheduler.v1.SchedulerService"
NO_WAIT = RegistrationConfig(max_retries=3, base_backoff=0.001, max_backoff=0.001, jitter=0.0)


def named(exporter: InMemorySpanExporter, name: str, kind: SpanKind | None = None) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name and (kind is None or s.kind is kind)]


async def until_spans(
    exporter: InMemorySpanExporter, name: str, count: int, kind: SpanKind | None = None
) -> list[ReadableSpan]:
    """The ``count`` finished spans called ``name``, waited for (a server span may end after the client's
    call returned); fails after 5 s."""
    for _ in range(500):
        found = named(exporter, name, kind)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(named(exporter, name, kind))} span(s) {name!r}, expected {count}")


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def service(port: SchedulerPortClient) -> WorkerManagementService:
    return WorkerManagementService(
        MockWorkerProvider(), registration=WorkerRegistrationAdapter(port, NO_WAIT)
    )


async def test_one_trace_runs_from_provision_worker_through_the_attempt_and_client_span_to_the_server_span(
    spans: InMemorySpanExporter,
) -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        worker = await service(port).provision_worker(DynamicWorkerConfig(), worker_id="traced-1")

        [server] = await until_spans(spans, REGISTER, 1, SpanKind.SERVER)
    [provision] = named(spans, "provision_worker")
    [attempt] = named(spans, "register_worker.attempt")
    [client] = named(spans, REGISTER, SpanKind.CLIENT)

    assert len({trace_id(s) for s in (provision, attempt, client, server)}) == 1
    assert provision.parent is None
    assert parent_of(attempt) == span_id(provision)
    assert named(spans, "register_worker") == []  # provision_worker holds the attempts
    assert parent_of(client) == span_id(attempt)
    assert parent_of(server) == span_id(client)
    assert server.parent is not None and server.parent.is_remote  # it came in the call's metadata
    assert provision.attributes is not None and attempt.attributes is not None
    assert provision.attributes[tracing.WORKER_ID] == worker.worker_id == "traced-1"
    assert attempt.attributes[tracing.WORKER_ID] == "traced-1"
    assert attempt.attributes[tracing.ATTEMPT] == 1
    assert attempt.attributes[tracing.WORKER_TYPE] == worker.worker_type.value
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans.get_finished_spans())


async def test_retries_make_one_attempt_span_each_and_the_failed_ones_carry_error_status_and_backoff(
    spans: InMemorySpanExporter,
) -> None:
    async with FailingScheduler(2) as scheduler, SchedulerPortClient(scheduler.target) as port:
        await service(port).provision_worker(DynamicWorkerConfig(), worker_id="retried-1")

        servers = await until_spans(spans, REGISTER, 3, SpanKind.SERVER)
    [provision] = named(spans, "provision_worker")
    attempts = sorted(named(spans, "register_worker.attempt"), key=lambda s: s.start_time or 0)
    clients = named(spans, REGISTER, SpanKind.CLIENT)

    assert [s.attributes and s.attributes[tracing.ATTEMPT] for s in attempts] == [1, 2, 3]
    assert {parent_of(a) for a in attempts} == {span_id(provision)}
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    for failed in attempts[:2]:
        assert failed.attributes is not None
        assert failed.attributes[tracing.ERROR_CODE] == "UNAVAILABLE"
        assert failed.attributes[tracing.BACKOFF_S] == pytest.approx(0.001)
        assert [event.name for event in failed.events] == ["exception", "retry"]
    assert attempts[2].attributes is not None and tracing.BACKOFF_S not in attempts[2].attributes
    # Each attempt is the parent of its own client span, and each client span of one server span.
    assert sorted(parent_of(c) for c in clients) == sorted(span_id(a) for a in attempts)
    assert sorted(parent_of(s) for s in servers) == sorted(span_id(c) for c in clients)
    assert {trace_id(s) for s in [*attempts, *clients, *servers]} == {trace_id(provision)}
    failed_servers = [s for s in servers if s.status.status_code is StatusCode.ERROR]
    assert len(failed_servers) == 2


async def test_a_permanent_refusal_marks_the_attempt_and_provision_worker_spans_as_errors(
    spans: InMemorySpanExporter,
) -> None:
    refusing = FailingScheduler(0, refuse={"refused-1": ErrorCode.PERMISSION_DENIED})
    async with refusing as scheduler, SchedulerPortClient(scheduler.target) as port:
        with pytest.raises(ProvisioningError):
            await service(port).provision_worker(DynamicWorkerConfig(), worker_id="refused-1")

    [provision] = named(spans, "provision_worker")
    [attempt] = named(spans, "register_worker.attempt")
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.attributes is not None and attempt.attributes[tracing.ERROR_CODE] == "PERMISSION_DENIED"
    assert provision.status.status_code is StatusCode.ERROR
    assert "ProvisioningError" in (provision.status.description or "")


async def test_a_provisioned_batch_is_one_trace_down_to_each_batch_calls_server_span(
    spans: InMemorySpanExporter,
) -> None:
    config = RegistrationConfig(batch_size=3, batch_concurrency=2, registration_timeout=5.0)
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        adapter = WorkerRegistrationAdapter(port, config)
        results = await WorkerManagementService(MockWorkerProvider(), registration=adapter).provision_workers(
            7, DynamicWorkerConfig()
        )

        servers = await until_spans(spans, REGISTER_BATCH, 3, SpanKind.SERVER)
    assert all(r.ok for r in results)
    [provision] = named(spans, "provision_workers")
    calls = named(spans, "register_workers.attempt")
    clients = named(spans, REGISTER_BATCH, SpanKind.CLIENT)

    assert provision.attributes is not None and provision.attributes[tracing.WORKERS] == 7
    assert sorted(c.attributes[tracing.WORKERS] for c in calls if c.attributes) == [1, 3, 3]
    assert {parent_of(c) for c in calls} == {span_id(provision)}
    assert sorted(parent_of(c) for c in clients) == sorted(span_id(c) for c in calls)
    assert sorted(parent_of(s) for s in servers) == sorted(span_id(c) for c in clients)
    assert {trace_id(s) for s in spans.get_finished_spans()} == {trace_id(provision)}


# --- off -------------------------------------------------------------------------------------------------


class MetadataRecorder(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Remembers the invocation metadata keys of every call the scheduler receives."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        self.keys.append({key for key, _ in details.invocation_metadata or ()})
        return await continuation(details)


class SpanWatchingProvider(MockWorkerProvider):
    """Notes the span that is current while it provisions."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[trace.Span] = []

    async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
        self.spans.append(trace.get_current_span())
        return await super().provision(worker_id, config)


async def provision_through_a_recording_scheduler() -> tuple[MetadataRecorder, SpanWatchingProvider]:
    recorder, provider = MetadataRecorder(), SpanWatchingProvider()
    async with (
        EmbeddedScheduler(interceptors=[recorder]) as scheduler,
        SchedulerPortClient(scheduler.target) as port,
    ):
        adapter = WorkerRegistrationAdapter(port, NO_WAIT)
        await WorkerManagementService(provider, registration=adapter).provision_worker(DynamicWorkerConfig())
    return recorder, provider


async def test_without_configuration_nothing_is_traced_and_no_trace_context_is_sent() -> None:
    tracing.configure_tracing("hodei-tests", environ={})

    recorder, provider = await provision_through_a_recording_scheduler()

    assert tracing.tracer_provider() is None
    assert tracing.client_interceptors() == [] and tracing.server_interceptors() == []
    assert recorder.keys and all("traceparent" not in keys for keys in recorder.keys)
    [current] = provider.spans
    assert not current.is_recording()
    assert not current.get_span_context().is_valid


async def test_with_tracing_on_the_same_flow_sends_the_trace_context_and_records_spans(
    spans: InMemorySpanExporter,
) -> None:
    recorder, provider = await provision_through_a_recording_scheduler()

    assert recorder.keys and all("traceparent" in keys for keys in recorder.keys)
    [current] = provider.spans
    [provision] = named(spans, "provision_worker")
    assert current.get_span_context() == provision.context


def test_an_environment_without_an_exporter_leaves_tracing_off() -> None:
    for environ in (
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
    ):
        assert tracing.configure_tracing("hodei-tests", environ=environ) is None
        assert tracing.tracer_provider() is None


def test_an_unknown_exporter_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER=zipkin"):
        tracing.configure_tracing("hodei-tests", environ={"OTEL_TRACES_EXPORTER": "zipkin"})
    assert tracing.tracer_provider() is None


# --- across a process boundary ---------------------------------------------------------------------------


@pytest.fixture
async def traced_scheduler() -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``hodei scheduler serve`` exporting its spans to stdout (console exporter) and its logs (JSON) to
    stderr; killed at the end whatever happens."""
    target = f"127.0.0.1:{free_port()}"
    env = CLI_ENV | {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "scheduler-under-test"}
    process = await asyncio.create_subprocess_exec(
        HODEI, "scheduler", "serve", "--listen", target, "--store", "memory", "--log-level", "debug",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        await health_becomes_serving(target, SCHEDULER_SERVICE, timeout=20)
        yield process, target
    finally:
        await end(process)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_the_schedulers_server_span_in_another_process_continues_the_clients_trace(
    spans: InMemorySpanExporter, traced_scheduler: tuple[asyncio.subprocess.Process, str]
) -> None:
    process, target = traced_scheduler
    async with SchedulerPortClient(target) as port:
        await WorkerRegistrationAdapter(port, NO_WAIT).register_worker(make_worker("across-1"))
    process.send_signal(signal.SIGTERM)  # the scheduler flushes its spans as it exits
    stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, stderr.decode()

    [client] = named(spans, REGISTER, SpanKind.CLIENT)
    [attempt] = named(spans, "register_worker.attempt")
    [registration] = named(spans, "register_worker")  # the adapter alone: its own span holds the attempts
    assert registration.parent is None and parent_of(attempt) == span_id(registration)
    exported = [s for s in json_lines(stdout.decode()) if s["name"] == REGISTER]
    [server] = exported
    assert server["kind"] == "SpanKind.SERVER"
    assert server["context"]["trace_id"] == f"0x{trace_id(client):032x}" == f"0x{trace_id(attempt):032x}"
    assert server["parent_id"] == f"0x{span_id(client):016x}"
    assert server["resource"]["attributes"]["service.name"] == "scheduler-under-test"
    # The scheduler's log line of this registration carries the same trace, and its own span.
    [registered] = [e for e in json_lines(stderr.decode()) if e["event"] == "worker.registered"]
    assert registered["worker_id"] == "across-1"
    assert registered["trace_id"] == f"{trace_id(client):032x}"
    assert registered["span_id"] == server["context"]["span_id"].removeprefix("0x")


async def test_a_batch_registered_without_a_span_of_the_callers_is_held_by_one_batch_span(
    spans: InMemorySpanExporter,
) -> None:
    config = RegistrationConfig(batch_size=2, registration_timeout=5.0)
    async with FailingScheduler(1) as scheduler, SchedulerPortClient(scheduler.target) as port:
        adapter = WorkerRegistrationAdapter(port, config, sleep=lambda _: asyncio.sleep(0))
        results = await adapter.register_workers_batch([make_worker(f"b-{i}") for i in range(3)])

        await until_spans(spans, REGISTER_BATCH, 3, SpanKind.SERVER)
    assert all(r.ok for r in results)
    [batch] = named(spans, "register_workers_batch")
    calls = named(spans, "register_workers.attempt")
    assert batch.parent is None and {parent_of(c) for c in calls} == {span_id(batch)}
    assert [s.status.status_code for s in calls].count(StatusCode.ERROR) == 1  # the call that was failed
    assert [event.name for event in batch.events] == ["retry"]
    assert batch.attributes is not None and batch.attributes["hodei.failed_workers"] == 0


async def test_one_trace_runs_from_the_holders_acquire_to_the_agents_job(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    from hodei import Job, JobOutcome
    from hodei.agent import AgentConfig, WorkerAgent
    from hodei.pools import Requirements

    acquire = "/hodei.scheduler.v1.SchedulerService/AcquireWorker"
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        agent = WorkerAgent(
            AgentConfig(schedulers=(scheduler.target,), worker_id="traced-agent", work_dir=tmp_path)
        )
        running = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), 10)
            acquired = await port.acquire_worker("traced-job", Requirements(), job=Job(("true",)))
            view = await port.renew_assignment(acquired.assignment.assignment_id, wait=20)
            assert view.result is not None and view.result.outcome is JobOutcome.SUCCEEDED
            [job] = await until_spans(spans, "job.run", 1)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    [server] = named(spans, acquire, SpanKind.SERVER)
    [client] = named(spans, acquire, SpanKind.CLIENT)

    assert trace_id(job) == trace_id(server) == trace_id(client)
    assert parent_of(job) == span_id(server)  # handed over in the RunJobCommand, not in call metadata
    assert job.parent is not None and job.parent.is_remote
    assert job.attributes is not None
    assert (job.attributes["hodei.job_id"], job.attributes["hodei.job_outcome"]) == (
        "traced-job",
        "succeeded",
    )
    assert job.attributes[tracing.WORKER_ID] == "traced-agent"


async def test_without_tracing_the_job_carries_no_trace_context(tmp_path: Path) -> None:
    from hodei import Job
    from hodei.pools import Requirements
    from hodei.transport._stream import ConnectStream

    tracing.configure_tracing("hodei-tests", environ={})
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as port:
        stream = ConnectStream(scheduler.channel())
        await stream.open(
            DynamicWorker("untraced", WorkerType.PROCESS, DynamicWorkerConfig(), incarnation=1), timeout=10
        )
        commands = stream.commands()
        acquired = await port.acquire_worker("untraced-job", Requirements(), job=Job(("true",)))
        command = await asyncio.wait_for(anext(commands), 10)
        assert command.assignment is not None and dict(command.assignment.trace_context) == {}
        assert dict(acquired.assignment.trace_context) == {}
        stream.cancel()
