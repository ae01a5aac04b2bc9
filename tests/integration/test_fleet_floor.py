"""The fleet benchmark's floor server answers an agent's stream as the scheduler's service would, with nothing
behind it: the hello acknowledged, heartbeats read, the farewell accepted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from hodei.bench.fleet_floor import FloorServicer
from hodei.transport._codec import pb, pb_grpc


@pytest.fixture
async def floor() -> AsyncIterator[tuple[FloorServicer, pb_grpc.SchedulerServiceStub]]:
    servicer = FloorServicer(heartbeat_interval=2.5)
    server = grpc.aio.server()
    pb_grpc.add_SchedulerServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, pb_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
    await server.stop(None)


def _hello(worker_id: str) -> pb.ConnectRequest:
    return pb.ConnectRequest(
        hello=pb.WorkerHello(
            worker_id=worker_id,
            incarnation=3,
            capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=512),
            metadata=pb.WorkerMetadata(worker_type="static", hostname="h1"),
        )
    )


async def test_the_hello_is_acknowledged_with_the_interval_and_heartbeats_are_read(
    floor: tuple[FloorServicer, pb_grpc.SchedulerServiceStub],
) -> None:
    servicer, stub = floor
    call = stub.Connect()
    await call.write(_hello("w-1"))
    answer = await call.read()

    assert answer.WhichOneof("message") == "ack"
    assert (answer.ack.worker.worker_id, answer.ack.worker.incarnation) == ("w-1", 3)
    assert answer.ack.worker.status == pb.WORKER_STATUS_AVAILABLE
    assert (answer.ack.heartbeat_interval_ms, answer.ack.lease_ttl_ms) == (2500, 7500)
    for sequence in range(1, 4):
        await call.write(pb.ConnectRequest(heartbeat=pb.Heartbeat(sequence=sequence)))
    await call.write(pb.ConnectRequest(status_change=pb.StatusChange(status=pb.WORKER_STATUS_DRAINING)))
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    assert servicer.heartbeats == 3  # the handler has returned; the status change was read, not counted

    farewell = await stub.UnregisterWorker(pb.UnregisterWorkerRequest(worker_id="w-1", incarnation=3))
    assert farewell.status == pb.UNREGISTRATION_STATUS_SUCCESS


@pytest.mark.parametrize("first", [None, pb.ConnectRequest(heartbeat=pb.Heartbeat(sequence=1))])
async def test_a_stream_that_does_not_begin_with_a_hello_is_refused(
    floor: tuple[FloorServicer, pb_grpc.SchedulerServiceStub], first: pb.ConnectRequest | None
) -> None:
    servicer, stub = floor
    call = stub.Connect()
    if first is not None:
        await call.write(first)
    await call.done_writing()

    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in await call.details()
    assert servicer.heartbeats == 0
