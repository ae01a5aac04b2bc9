"""Clients that misbehave against a real scheduler: oversized messages, too many streams, pings without end,
connections that say nothing or stay idle. Each meets its limit, and the scheduler serves everyone else."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei import ErrorCode, SchedulerError
from hodei.domain import MAX_LABEL_KEY_LENGTH, MAX_LABEL_VALUE_LENGTH, MAX_LABELS, MAX_WORKER_ID_LENGTH
from hodei.scheduler._registry import MAX_BATCH_SIZE
from hodei.server._limits import DEFAULT_MAX_MESSAGE_BYTES, ServerLimits
from hodei.testing import EmbeddedScheduler
from hodei.transport import _codec as codec
from hodei.transport._codec import pb, pb_grpc
from tests.helpers import make_worker, wait_until

OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


async def serving(scheduler: EmbeddedScheduler) -> bool:
    """The scheduler answers a health check and takes a registration."""
    response = await health_pb2_grpc.HealthStub(scheduler.channel()).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    receipt = await scheduler.client().register_worker(make_worker("healthy-after"), timeout=5)
    return response.status == health_pb2.HealthCheckResponse.SERVING and receipt.created


# --- message size ------------------------------------------------------------------------------------------


def largest_valid_entry(index: int) -> pb.RegisterWorkerRequest:
    """A registration as large as validation accepts: the longest id, 64 labels of the longest keys and values."""
    prefix = f"{index:07d}"
    labels = {
        prefix + "k" * (MAX_LABEL_KEY_LENGTH - len(prefix) - 2) + f"{j:02d}": "v" * MAX_LABEL_VALUE_LENGTH
        for j in range(MAX_LABELS)
    }
    worker = make_worker(prefix + "w" * (MAX_WORKER_ID_LENGTH - len(prefix)), labels=labels)
    return codec.worker_to_request(worker)


async def test_a_message_over_the_limit_is_resource_exhausted_and_the_scheduler_serves_on() -> None:
    async with EmbeddedScheduler(limits=ServerLimits(max_message_bytes=1024 * 1024)) as scheduler:
        request = pb.RegisterWorkersRequest(workers=[largest_valid_entry(i) for i in range(60)])  # 1.3 MB
        stub = pb_grpc.SchedulerServiceStub(scheduler.channel())  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RegisterWorkers(request, timeout=10)

        assert request.ByteSize() > 1024 * 1024
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await serving(scheduler)
        assert [w.worker_id for w in await scheduler.workers()] == ["healthy-after"]


async def test_the_default_limit_takes_the_largest_batch_that_validation_accepts() -> None:
    request = pb.RegisterWorkersRequest(workers=[largest_valid_entry(i) for i in range(MAX_BATCH_SIZE)])
    async with EmbeddedScheduler() as scheduler:
        stub = pb_grpc.SchedulerServiceStub(scheduler.channel())  # type: ignore[no-untyped-call]
        response = await stub.RegisterWorkers(request, timeout=60)
        registered = len(await scheduler.workers())

    print(f"\nthe largest valid batch: {request.ByteSize():,} bytes; the limit {DEFAULT_MAX_MESSAGE_BYTES:,}")
    assert request.ByteSize() < DEFAULT_MAX_MESSAGE_BYTES
    assert [r.status for r in response.results] == [pb.REGISTRATION_STATUS_SUCCESS] * MAX_BATCH_SIZE
    assert registered == MAX_BATCH_SIZE


# --- streams -----------------------------------------------------------------------------------------------


async def open_streams(channel: grpc.aio.Channel, count: int) -> list[Any]:
    """``count`` Connect streams that say nothing (the scheduler waits for their hello)."""
    stub = pb_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
    return [stub.Connect() for _ in range(count)]


async def test_streams_beyond_the_cap_for_one_address_are_resource_exhausted_until_one_closes() -> None:
    limits = ServerLimits(max_streams=10, max_streams_per_peer=3, stream_retry_after=0.5)
    async with EmbeddedScheduler(limits=limits) as scheduler:
        calls = await open_streams(scheduler.channel(), 5)
        await wait_until(lambda: len([c for c in calls if c.done()]) == 2)
        refused = [c for c in calls if c.done()]
        held = [c for c in calls if not c.done()]
        await wait_until(lambda: scheduler.stream_limits.open == 3)
        codes = [await c.code() for c in refused]
        details = await refused[0].details()
        held[0].cancel()
        await wait_until(lambda: scheduler.stream_limits.open == 2)
        [again] = await open_streams(scheduler.channel(), 1)
        await wait_until(lambda: scheduler.stream_limits.open == 3)
        for call in [*held, again]:
            call.cancel()
        await wait_until(lambda: scheduler.stream_limits.open == 0)

        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        assert "3 streams are open from 127.0.0.1, the limit for one address" in details
        assert scheduler.stream_limits.refused == 2
        assert scheduler.stream_limits.open_by_peer == {}
        assert await serving(scheduler)


async def test_watchers_count_among_the_streams_and_the_total_cap_holds() -> None:
    limits = ServerLimits(max_streams=2, max_streams_per_peer=2)
    async with EmbeddedScheduler(limits=limits) as scheduler:
        client = scheduler.client()
        watch = client.watch_workers()
        watching = asyncio.ensure_future(anext(watch))
        [stream] = await open_streams(scheduler.channel(), 1)
        await wait_until(lambda: scheduler.stream_limits.open == 2)
        with pytest.raises(SchedulerError) as raised:
            await anext(scheduler.client().watch_workers())
        stream.cancel()
        watching.cancel()
        await wait_until(lambda: scheduler.stream_limits.open == 0)

    assert raised.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert "2 streams are open, the scheduler's limit" in raised.value.message
    assert raised.value.retry_after == pytest.approx(1.0)


# --- pings, idle and half-open connections -------------------------------------------------------------------


async def test_a_client_that_pings_too_often_is_sent_away_and_others_are_served() -> None:
    async with EmbeddedScheduler(limits=ServerLimits(min_ping_interval=5.0, max_ping_strikes=2)) as scheduler:
        options = [
            OWN_CONNECTION,
            ("grpc.keepalive_time_ms", 100),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        async with grpc.aio.insecure_channel(scheduler.target, options=options) as pinger:
            call = pb_grpc.SchedulerServiceStub(pinger).WatchWorkers(pb.WatchWorkersRequest())  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await asyncio.wait_for(anext(aiter(call)), 30)

        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "Too many pings" in (raised.value.details() or "")
        assert await serving(scheduler)


async def test_a_connection_idle_beyond_the_limit_is_closed_and_the_client_dials_again() -> None:
    async with (
        EmbeddedScheduler(limits=ServerLimits(max_connection_idle=0.2)) as scheduler,
        grpc.aio.insecure_channel(scheduler.target, options=[OWN_CONNECTION]) as channel,
    ):
        stub = pb_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.ListWorkers(pb.ListWorkersRequest(), timeout=5)

        await wait_until(lambda: channel.get_state() is grpc.ChannelConnectivity.IDLE, timeout=10)
        again = await stub.ListWorkers(pb.ListWorkersRequest(), timeout=5)

    assert list(again.workers) == []


async def test_a_socket_that_connects_and_says_nothing_is_closed_after_the_handshake_timeout() -> None:
    async with EmbeddedScheduler(limits=ServerLimits(handshake_timeout=0.2)) as scheduler:
        reader, writer = await asyncio.open_connection("127.0.0.1", scheduler.port)
        started = time.monotonic()
        try:
            while await asyncio.wait_for(reader.read(4096), 10):  # the server's SETTINGS, then EOF
                pass
        finally:
            writer.close()
        closed_after = time.monotonic() - started

        assert closed_after < 2  # the configured 0.2 s, not the default 10 s
        assert await serving(scheduler)
