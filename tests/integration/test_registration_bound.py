"""The registration bound: beyond it the scheduler refuses with RetryInfo, and the adapter waits as advised."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hodei import RegistrationConfig, SchedulerOverloaded, SchedulerPortClient, WorkerRegistrationAdapter
from hodei.server._bounds import RegistrationBound
from hodei.testing import EmbeddedScheduler, FailingScheduler
from hodei.transport._codec import pb, pb_grpc
from tests.helpers import make_worker, wait_for


class SlowScheduler(FailingScheduler):
    """Every registration takes 300 ms, behind a registration bound of 2."""

    def __init__(self) -> None:
        super().__init__(
            0,
            delay=0.3,
            registration_bound=RegistrationBound(max_in_flight=2, retry_after=0.2, random=lambda: 0.5),
        )


async def _true(value: bool) -> bool:
    return value


async def test_registrations_beyond_the_bound_are_refused_with_retry_info() -> None:
    async with SlowScheduler() as scheduler, grpc.aio.insecure_channel(scheduler.target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        request = pb.RegisterWorkerRequest(
            worker_id="w-x",
            capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=1),
            metadata=pb.WorkerMetadata(worker_type="docker"),
        )

        async def register() -> object:
            return await stub.RegisterWorker(request)

        admitted = [asyncio.create_task(register()) for _ in range(2)]
        await wait_for(lambda: _true(scheduler.registration_bound.in_flight == 2))

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RegisterWorker(request)
        await asyncio.gather(*admitted)

    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(raised.value)
    assert status is not None
    [detail] = status.details
    retry = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 200  # retry_after 0.2 s x (0.5 + 0.5)
    assert (
        scheduler.registration_bound.admitted,
        scheduler.registration_bound.rejected,
        scheduler.registration_bound.in_flight,
    ) == (
        2,
        1,
        0,
    )


async def test_the_adapter_waits_the_advised_delay_and_every_worker_ends_registered() -> None:
    async with SlowScheduler() as scheduler, SchedulerPortClient(scheduler.target) as client:
        sleeps: list[float] = []

        async def recorded_sleep(seconds: float) -> None:
            sleeps.append(seconds)
            await asyncio.sleep(seconds)

        adapter = WorkerRegistrationAdapter(
            client, RegistrationConfig(max_retries=10, base_backoff=0.01), sleep=recorded_sleep
        )
        started = time.monotonic()
        await asyncio.gather(*(adapter.register_worker(make_worker(f"w-{i}")) for i in range(6)))
        elapsed = time.monotonic() - started

        assert sorted(w.worker_id for w in await scheduler.workers()) == [f"w-{i}" for i in range(6)]
        assert scheduler.registration_bound.rejected >= 4
        assert sleeps and set(sleeps) == {0.2}  # the advice, never the 10 ms backoff
        assert elapsed >= 0.9  # three rounds of two, 300 ms each


async def test_calls_other_than_registrations_are_never_refused() -> None:
    # The advised delay is retry_after (0.1 s) times 0.5 + a random draw: drawn 0.25 here, so exactly 0.075 s
    # (a draw near 1 advised 0.15 s once the wire had rounded it, which a bound of < 0.15 refused).
    full = RegistrationBound(max_in_flight=1, random=lambda: 0.25)
    async with (
        EmbeddedScheduler(registration_bound=full) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
    ):
        full.in_flight = 1  # as if one registration were being worked on

        assert await client.get_worker("nobody") is None
        assert (await client.list_workers()).workers == []
        with pytest.raises(SchedulerOverloaded) as refused:
            await client.register_worker(make_worker())

    assert refused.value.retry_after == pytest.approx(0.075)
    assert full.rejected == 1


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        RegistrationBound(max_in_flight=0)


async def test_calls_whose_body_cannot_be_decoded_are_never_counted_in_flight() -> None:
    bound = RegistrationBound(max_in_flight=2)
    async with EmbeddedScheduler(registration_bound=bound) as scheduler:
        async with grpc.aio.insecure_channel(scheduler.target) as channel:
            raw = channel.unary_unary("/hodei.scheduler.v1.SchedulerService/RegisterWorker")
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError):
                    await raw(b"\xff\xff\xff not a message", timeout=5)
        async with SchedulerPortClient(scheduler.target) as client:
            receipt = await client.register_worker(make_worker())

    assert (bound.in_flight, bound.rejected) == (0, 0)
    assert receipt.created
