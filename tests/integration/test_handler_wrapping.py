"""The scheduler's own checks and any MethodInterceptor given to it wrap its handlers once, at start, in the order
interceptors would run: an undecodable request is refused first, the registration bound next, a given
MethodInterceptor innermost; a ``per_call`` one still decides on each call."""

from __future__ import annotations

import grpc
import pytest

from hodei import SchedulerPortClient
from hodei.server._interception import REGISTRATION_METHODS, MethodInterceptor, serve_wrapped
from hodei.testing import EmbeddedScheduler
from tests.helpers import make_worker

REGISTER = "/hodei.scheduler.v1.SchedulerService/RegisterWorker"


class Decisions(MethodInterceptor):
    """Counts the times it was asked to make a handler; serves each call unchanged."""

    def __init__(self, methods: frozenset[str], *, per_call: bool) -> None:
        super().__init__(methods)
        self.per_call = per_call
        self.asked: list[str] = []

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        self.asked.append(method)
        return handler


async def test_a_per_call_interceptor_is_asked_on_every_call_that_reaches_the_servicer() -> None:
    decisions = Decisions(REGISTRATION_METHODS, per_call=True)
    async with (
        EmbeddedScheduler(interceptors=[decisions]) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
    ):
        assert decisions.asked == []
        for n in range(3):
            await client.register_worker(make_worker(f"worker-{n}"))
        async with grpc.aio.insecure_channel(scheduler.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as undecodable:
                await channel.unary_unary(REGISTER)(b"\xff\xff\xff not a message", timeout=5)

    assert decisions.asked == ["RegisterWorker"] * 3
    assert undecodable.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert undecodable.value.details() == "request is not a valid hodei.scheduler.v1.RegisterWorkerRequest"


async def test_an_interceptor_that_decides_once_is_asked_once_per_method_at_start() -> None:
    decisions = Decisions(frozenset({"RegisterWorker", "GetWorker"}), per_call=False)
    async with (
        EmbeddedScheduler(interceptors=[decisions]) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
    ):
        at_start = sorted(decisions.asked)
        for n in range(3):
            await client.register_worker(make_worker(f"worker-{n}"))

    assert at_start == ["GetWorker", "RegisterWorker"]
    assert sorted(decisions.asked) == at_start


def test_a_per_call_interceptor_refuses_to_wrap_a_streaming_method() -> None:
    decisions = Decisions(frozenset({"Connect"}), per_call=True)
    streaming = grpc.stream_stream_rpc_method_handler(lambda requests, context: requests)

    with pytest.raises(ValueError, match="only a unary method can: Connect"):
        decisions.wrap(streaming, "Connect")


def test_a_method_not_among_the_interceptors_is_left_untouched() -> None:
    decisions = Decisions(REGISTRATION_METHODS, per_call=True)
    streaming = grpc.stream_stream_rpc_method_handler(lambda requests, context: requests)

    assert decisions.wrap(streaming, "Connect") is streaming
    assert decisions.asked == []


async def test_generated_code_that_registers_no_handler_by_method_is_refused_at_start() -> None:
    def generic_only(servicer: object, server: grpc.aio.Server) -> None:
        handlers = {"RegisterWorker": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hodei.Old", handlers),))

    with pytest.raises(RuntimeError, match=r"registered no method handlers of hodei\.Old by method"):
        serve_wrapped(grpc.aio.server(), "hodei.Old", generic_only, object(), [])
