"""Every status code the scheduler can answer, mapped end to end to its SchedulerError kind and to the adapter's
verdict; a client's deadline reaches the server, and a call that expires or is cancelled stops the server's work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from hodei import (
    ErrorCode,
    MaxRetriesExceeded,
    RegistrationConfig,
    RegistrationFailed,
    SchedulerTimeout,
    WorkerRegistrationAdapter,
)
from hodei.server._interception import REGISTRATION_METHODS, MethodInterceptor, with_behaviour
from hodei.testing import EmbeddedScheduler, FailingScheduler
from tests.helpers import KIND_BY_CODE, AttemptRecordingClient, make_worker

pytestmark = pytest.mark.timeout(30)

# OK is not an error a server can abort with.
ERROR_CODES = [code for code in ErrorCode if code is not ErrorCode.OK]


@pytest.mark.parametrize("code", ERROR_CODES, ids=[c.name for c in ERROR_CODES])
async def test_each_status_code_from_the_server_reaches_the_caller_as_its_error_kind_with_code_and_message(
    code: ErrorCode,
) -> None:
    async with FailingScheduler(2, code=code, message=f"injected {code.name}") as scheduler:
        client = scheduler.client()
        with pytest.raises(KIND_BY_CODE[code]) as single:
            await client.register_worker(make_worker("w-1"), timeout=5)
        with pytest.raises(KIND_BY_CODE[code]) as batch:
            await client.register_workers([make_worker("w-1"), make_worker("w-2")], timeout=5)
    for caught in (single.value, batch.value):
        assert type(caught) is KIND_BY_CODE[code]
        assert (caught.code, caught.message) == (code, f"injected {code.name}")


@pytest.mark.parametrize("code", ERROR_CODES, ids=[c.name for c in ERROR_CODES])
async def test_the_adapter_retries_exactly_the_transient_codes_and_fails_the_others_at_the_first_attempt(
    code: ErrorCode,
) -> None:
    kind = KIND_BY_CODE[code]
    async with FailingScheduler(1, code=code) as scheduler:
        client = AttemptRecordingClient(scheduler.target)
        adapter = WorkerRegistrationAdapter(client, RegistrationConfig(max_retries=2, base_backoff=0.01))
        try:
            if kind.retryable:
                await adapter.register_worker(make_worker("w-1"))
                assert client.attempts == [code.name, "OK"]
                assert [r.worker_id for r in await scheduler.workers()] == ["w-1"]
            else:
                with pytest.raises(RegistrationFailed) as caught:
                    await adapter.register_worker(make_worker("w-1"))
                assert (type(caught.value.cause), caught.value.code, caught.value.attempts) == (kind, code, 1)
                assert client.attempts == [code.name]
                assert await scheduler.workers() == []
            scheduler.fail_next(1, code=code)
            [result] = await adapter.register_workers_batch([make_worker("w-2")])
        finally:
            await client.close()
    if kind.retryable:
        assert result.ok and result.attempts == 2
    else:
        assert isinstance(result.error, RegistrationFailed) and type(result.error.cause) is kind
        assert (result.error.code, result.attempts) == (code, 1)


def test_the_transient_codes_are_unavailable_deadline_exceeded_resource_exhausted_and_aborted() -> None:
    assert {code for code in ERROR_CODES if KIND_BY_CODE[code].retryable} == {
        ErrorCode.UNAVAILABLE,
        ErrorCode.DEADLINE_EXCEEDED,
        ErrorCode.RESOURCE_EXHAUSTED,
        ErrorCode.ABORTED,
    }


class Stall(MethodInterceptor):
    """Replaces the registration calls by a handler that notes the deadline it was given, then waits forever;
    ``cancelled`` is set when gRPC cancels it."""

    def __init__(self) -> None:
        super().__init__(REGISTRATION_METHODS)
        self.time_remaining: list[float | None] = []
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return with_behaviour(handler, self._stall)

    async def _stall(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.time_remaining.append(context.time_remaining())
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.finished.set()


@pytest.fixture
async def stall() -> AsyncIterator[tuple[EmbeddedScheduler, Stall]]:
    interceptor = Stall()
    async with EmbeddedScheduler(interceptors=[interceptor]) as scheduler:
        yield scheduler, interceptor


async def test_the_clients_deadline_reaches_the_server_as_the_time_remaining_of_the_call(
    stall: tuple[EmbeddedScheduler, Stall],
) -> None:
    scheduler, server = stall
    adapter = WorkerRegistrationAdapter(
        scheduler.client(), RegistrationConfig(max_retries=0, registration_timeout=1.5)
    )
    with pytest.raises(MaxRetriesExceeded) as caught:
        await adapter.register_worker(make_worker("w-1"))
    assert isinstance(caught.value.cause, SchedulerTimeout) and caught.value.attempts == 1
    [remaining] = server.time_remaining
    # The grpc-timeout header carries the deadline in whole units, rounded up (seen: 1.5048 s of 1.5 s), and
    # the server counts it from when it read the header: a few ms either way of the client's 1.5 s.
    assert remaining is not None and 1.0 < remaining <= 1.5 + 0.05
    no_deadline = await _remaining_without_deadline(scheduler, server)
    assert no_deadline is None


async def _remaining_without_deadline(scheduler: EmbeddedScheduler, server: Stall) -> float | None:
    server.started.clear()
    call = asyncio.create_task(scheduler.client().register_worker(make_worker("w-2"), timeout=None))
    await asyncio.wait_for(server.started.wait(), 5)
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    return server.time_remaining[-1]


async def test_a_call_whose_deadline_expires_has_its_server_handler_cancelled(
    stall: tuple[EmbeddedScheduler, Stall],
) -> None:
    scheduler, server = stall
    with pytest.raises(SchedulerTimeout):
        await scheduler.client().register_worker(make_worker("w-1"), timeout=0.3)
    await asyncio.wait_for(server.finished.wait(), 5)
    assert server.cancelled.is_set()


async def test_a_call_cancelled_by_the_client_has_its_server_handler_cancelled_long_before_its_deadline(
    stall: tuple[EmbeddedScheduler, Stall],
) -> None:
    scheduler, server = stall
    call = asyncio.create_task(scheduler.client().register_workers([make_worker("w-1")], timeout=60))
    await asyncio.wait_for(server.started.wait(), 5)
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    await asyncio.wait_for(server.finished.wait(), 5)
    assert server.cancelled.is_set()
    assert await scheduler.workers() == []


async def test_a_hanging_scheduler_times_each_attempt_out_at_the_registration_timeout_then_serves() -> None:
    async with FailingScheduler(2, hang=True) as scheduler:
        client = AttemptRecordingClient(scheduler.target)
        adapter = WorkerRegistrationAdapter(
            client, RegistrationConfig(max_retries=2, base_backoff=0.01, registration_timeout=0.2)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await adapter.register_worker(make_worker("w-1"))
        finally:
            await client.close()
        elapsed = loop.time() - started
    assert client.attempts == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "OK"]
    assert scheduler.failed_calls == 2 and 0.4 <= elapsed < 3
