"""The gRPC contract, checked with the generated stub and standard gRPC tooling (no hodei client in between)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from hodei.testing import EmbeddedScheduler
from hodei.transport._codec import SERVICE_NAME, pb, pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def request(worker_id: str = "contract-test-worker", **overrides: object) -> pb.RegisterWorkerRequest:
    fields: dict[str, object] = {
        "worker_id": worker_id,
        "capabilities": pb.WorkerCapabilities(cpu_cores=4, memory_mb=8192),
        "metadata": pb.WorkerMetadata(worker_type="docker", labels={}),
    }
    fields.update(overrides)
    return pb.RegisterWorkerRequest(**fields)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def channel(scheduler: EmbeddedScheduler) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(scheduler.target) as opened:
        yield opened


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.SchedulerServiceStub:
    return pb_grpc.SchedulerServiceStub(channel)


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry a google.rpc.Status with details"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [v.field for v in bad_request.field_violations]
    return fields


async def test_register_then_unregister_with_the_raw_stub(stub: pb_grpc.SchedulerServiceStub) -> None:
    response = await stub.RegisterWorker(request())

    assert response.status == pb.REGISTRATION_STATUS_SUCCESS
    assert response.created is True
    assert response.worker.status == pb.WORKER_STATUS_AVAILABLE
    assert response.worker.registered_at.seconds > 0

    unregister_response = await stub.UnregisterWorker(
        pb.UnregisterWorkerRequest(worker_id="contract-test-worker")
    )
    assert unregister_response.status == pb.UNREGISTRATION_STATUS_SUCCESS

    again = await stub.UnregisterWorker(pb.UnregisterWorkerRequest(worker_id="contract-test-worker"))
    assert again.status == pb.UNREGISTRATION_STATUS_NOT_REGISTERED


async def test_registering_twice_is_idempotent(
    stub: pb_grpc.SchedulerServiceStub, scheduler: EmbeddedScheduler
) -> None:
    first = await stub.RegisterWorker(request())
    second = await stub.RegisterWorker(request())

    assert (first.created, second.created) == (True, False)
    assert second.worker.registered_at == first.worker.registered_at
    assert len(await scheduler.workers()) == 1


async def test_empty_worker_id_is_invalid_argument_naming_the_field(
    stub: pb_grpc.SchedulerServiceStub, scheduler: EmbeddedScheduler
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RegisterWorker(pb.RegisterWorkerRequest(worker_id=""))

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == ["worker_id", "capabilities", "metadata.worker_type"]
    assert await scheduler.workers() == []


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"worker_id": "a" * 129}, ["worker_id"]),
        ({"worker_id": "no spaces"}, ["worker_id"]),
        ({"capabilities": pb.WorkerCapabilities(cpu_cores=0, memory_mb=1)}, ["capabilities.cpu_cores"]),
        (
            {"capabilities": pb.WorkerCapabilities(cpu_cores=-2, memory_mb=-1)},
            ["capabilities.cpu_cores", "capabilities.memory_mb"],
        ),
        ({"metadata": pb.WorkerMetadata(worker_type="vm")}, ["metadata.worker_type"]),
        (
            {"metadata": pb.WorkerMetadata(worker_type="docker", labels={f"k{i}": "v" for i in range(65)})},
            ["metadata.labels"],
        ),
        (
            {"metadata": pb.WorkerMetadata(worker_type="docker", labels={"-bad": "v"})},
            ["metadata.labels['-bad']"],
        ),
        ({"metadata": pb.WorkerMetadata(worker_type="docker", pool="bad pool")}, ["metadata.pool"]),
    ],
)
async def test_each_invalid_field_is_named_in_bad_request(
    stub: pb_grpc.SchedulerServiceStub,
    scheduler: EmbeddedScheduler,
    overrides: dict[str, object],
    fields: list[str],
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RegisterWorker(request(**overrides))

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == fields
    assert await scheduler.workers() == []


async def test_older_incarnation_is_failed_precondition_and_keeps_the_newer(
    stub: pb_grpc.SchedulerServiceStub, scheduler: EmbeddedScheduler
) -> None:
    await stub.RegisterWorker(request(incarnation=5))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RegisterWorker(request(incarnation=4))

    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    record = await scheduler.get_worker("contract-test-worker")
    assert record is not None and record.incarnation == 5


async def test_get_worker_of_unknown_id_is_not_found(stub: pb_grpc.SchedulerServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetWorker(pb.GetWorkerRequest(worker_id="nobody"))

    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert "nobody" in (raised.value.details() or "")


async def test_batch_answers_one_result_per_worker_in_input_order(
    stub: pb_grpc.SchedulerServiceStub, scheduler: EmbeddedScheduler
) -> None:
    response = await stub.RegisterWorkers(
        pb.RegisterWorkersRequest(
            workers=[
                request("b-1"),
                request("", metadata=pb.WorkerMetadata(worker_type="nope")),
                request("b-2", capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=0)),
                request("b-0"),
            ]
        )
    )

    assert [r.worker_id for r in response.results] == ["b-1", "", "b-2", "b-0"]
    assert [r.status for r in response.results] == [
        pb.REGISTRATION_STATUS_SUCCESS,
        pb.REGISTRATION_STATUS_FAILED,
        pb.REGISTRATION_STATUS_FAILED,
        pb.REGISTRATION_STATUS_SUCCESS,
    ]
    assert [r.error.code for r in response.results] == [0, 3, 3, 0]  # google.rpc.Code INVALID_ARGUMENT
    assert [v.field for v in response.results[1].error.field_violations] == [
        "worker_id",
        "metadata.worker_type",
    ]
    assert [v.field for v in response.results[2].error.field_violations] == ["capabilities.memory_mb"]
    assert sorted(r.worker_id for r in await scheduler.workers()) == ["b-0", "b-1"]


async def test_batch_over_1000_workers_is_refused_whole(
    stub: pb_grpc.SchedulerServiceStub, scheduler: EmbeddedScheduler
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RegisterWorkers(
            pb.RegisterWorkersRequest(workers=[request(f"w-{i}") for i in range(1001)])
        )

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == ["workers"]
    assert await scheduler.workers() == []


async def test_list_workers_filters_and_pages(stub: pb_grpc.SchedulerServiceStub) -> None:
    for i in range(5):
        labels = {"zone": "a" if i % 2 == 0 else "b"}
        await stub.RegisterWorker(
            request(f"w-{i}", metadata=pb.WorkerMetadata(worker_type="docker", labels=labels))
        )
    await stub.RegisterWorker(request("p-0", metadata=pb.WorkerMetadata(worker_type="process")))

    first = await stub.ListWorkers(pb.ListWorkersRequest(page_size=4))
    second = await stub.ListWorkers(pb.ListWorkersRequest(page_size=4, page_token=first.next_page_token))
    zone_a = await stub.ListWorkers(pb.ListWorkersRequest(labels={"zone": "a"}, worker_type="docker"))
    process = await stub.ListWorkers(
        pb.ListWorkersRequest(worker_type="process", statuses=[pb.WORKER_STATUS_AVAILABLE])
    )
    lost = await stub.ListWorkers(pb.ListWorkersRequest(statuses=[pb.WORKER_STATUS_LOST]))

    assert [w.worker_id for w in first.workers] == ["p-0", "w-0", "w-1", "w-2"]
    assert [w.worker_id for w in second.workers] == ["w-3", "w-4"]
    assert second.next_page_token == ""
    assert [w.worker_id for w in zone_a.workers] == ["w-0", "w-2", "w-4"]
    assert [w.worker_id for w in process.workers] == ["p-0"]
    assert list(lost.workers) == []


@pytest.mark.parametrize(
    ("list_request", "field"),
    [
        (pb.ListWorkersRequest(page_token="%%%"), "page_token"),
        (pb.ListWorkersRequest(page_size=-1), "page_size"),
        (pb.ListWorkersRequest(worker_type="vm"), "worker_type"),
        (pb.ListWorkersRequest(statuses=[42]), "statuses"),
    ],
)
async def test_bad_list_requests_are_invalid_argument_naming_the_field(
    stub: pb_grpc.SchedulerServiceStub, list_request: pb.ListWorkersRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListWorkers(list_request)

    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(raised.value) == [field]


async def test_health_service_reports_serving_for_the_server_and_the_scheduler_service(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
    scheduler_service = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))

    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert scheduler_service.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_scheduler_health_and_reflection_services(
    channel: grpc.aio.Channel,
) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    responses = [r async for r in reflection.ServerReflectionInfo(one_request())]

    names = sorted(s.name for s in responses[0].list_services_response.service)
    assert names == ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", SERVICE_NAME]


async def test_reflection_serves_the_contract_file(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)

    responses = [r async for r in reflection.ServerReflectionInfo(one_request())]

    assert responses[0].file_descriptor_response.file_descriptor_proto, "no descriptor served"


async def test_deadline_shorter_than_the_call_is_deadline_exceeded() -> None:
    from hodei.testing import FailingScheduler

    async with (
        FailingScheduler(0, delay=0.5) as scheduler,
        grpc.aio.insecure_channel(scheduler.target) as chan,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await pb_grpc.SchedulerServiceStub(chan).RegisterWorker(request(), timeout=0.1)

    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_generated_code_is_up_to_date_with_the_proto() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "genproto.py"), "--check"], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stdout + result.stderr


async def test_batch_answers_leave_out_only_what_the_request_already_said(
    stub: pb_grpc.SchedulerServiceStub,
) -> None:
    await stub.RegisterWorker(request("agent-managed", incarnation=5))

    response = await stub.RegisterWorkers(
        pb.RegisterWorkersRequest(workers=[request("fresh"), request("agent-managed", incarnation=0)])
    )

    fresh, kept = response.results
    assert not fresh.worker.HasField("metadata") and not fresh.worker.HasField("capabilities")
    assert (fresh.worker.worker_id, fresh.worker.status, fresh.created) == (
        "fresh",
        pb.WORKER_STATUS_AVAILABLE,
        True,
    )
    # The agent's registration (incarnation 5) was kept: the answer says what is actually registered.
    assert kept.worker.HasField("metadata") and kept.worker.incarnation == 5 and not kept.created


async def test_a_single_answer_is_slim_only_when_asked_and_written_from_the_request(
    stub: pb_grpc.SchedulerServiceStub,
) -> None:
    await stub.RegisterWorker(request("agent-managed", incarnation=5))

    full = await stub.RegisterWorker(request("plain"))
    slim = await stub.RegisterWorker(request("asked", slim_answer=True))
    refreshed = await stub.RegisterWorker(request("asked", slim_answer=True))
    kept = await stub.RegisterWorker(request("agent-managed", incarnation=0, slim_answer=True))

    # An old client, which never asks, gets the whole worker, as before the field existed.
    assert full.worker.HasField("metadata") and full.worker.HasField("capabilities")
    assert (full.worker.metadata.worker_type, full.worker.capabilities.cpu_cores) == ("docker", 4)
    for answer, created in ((slim, True), (refreshed, False)):
        assert not answer.worker.HasField("metadata") and not answer.worker.HasField("capabilities")
        assert (answer.worker.worker_id, answer.worker.status, answer.created) == (
            "asked",
            pb.WORKER_STATUS_AVAILABLE,
            created,
        )
        assert answer.worker.HasField("registered_at") and answer.worker.HasField("updated_at")
    # The agent's registration (incarnation 5) was kept: the answer says what is actually registered.
    assert kept.worker.HasField("metadata") and kept.worker.incarnation == 5 and not kept.created


@pytest.mark.parametrize(
    ("worker_id", "reason", "fields"),
    [
        ("", "removed", ["worker_id"]),
        ("bad id!", "removed", ["worker_id"]),
        ("orphan-1", "x" * 1025, ["reason"]),
        ("", "x" * 1025, ["worker_id", "reason"]),
    ],
)
async def test_a_bad_orphan_report_is_invalid_argument_naming_each_field_and_publishes_nothing(
    scheduler: EmbeddedScheduler,
    stub: pb_grpc.SchedulerServiceStub,
    worker_id: str,
    reason: str,
    fields: list[str],
) -> None:
    before = scheduler.scheduler.events.sequence
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReportOrphanRemoved(
            pb.ReportOrphanRemovedRequest(worker_id=worker_id, reason=reason), timeout=5
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == fields
    assert scheduler.scheduler.events.sequence == before


async def test_an_orphan_report_publishes_one_event_and_leaves_the_registry_alone(
    scheduler: EmbeddedScheduler, stub: pb_grpc.SchedulerServiceStub
) -> None:
    await stub.RegisterWorker(request("kept-1"), timeout=5)
    watcher = scheduler.scheduler.events.watch()
    await stub.ReportOrphanRemoved(
        pb.ReportOrphanRemovedRequest(worker_id="orphan-1", reason="container hodei-orphan-1 removed"),
        timeout=5,
    )
    event = await anext(aiter(watcher))
    assert (event.kind.value, event.worker_id, event.reason, event.record) == (
        "orphan_removed",
        "orphan-1",
        "container hodei-orphan-1 removed",
        None,
    )
    watcher.close()
    assert [r.worker_id for r in await scheduler.workers()] == ["kept-1"]


async def test_an_unregistration_reason_over_1024_characters_is_refused_and_the_worker_stays(
    scheduler: EmbeddedScheduler, stub: pb_grpc.SchedulerServiceStub
) -> None:
    await stub.RegisterWorker(request("kept-2"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UnregisterWorker(
            pb.UnregisterWorkerRequest(worker_id="kept-2", reason="x" * 1025), timeout=5
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["reason"]
    assert [r.worker_id for r in await scheduler.workers()] == ["kept-2"]
