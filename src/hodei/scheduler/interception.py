"""Plumbing shared by the scheduler's server interceptors (admission control, the testing fault injector):
which calls are the scheduler's, and how a call's behaviour is replaced while its (de)serialisation is kept."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc

from hodei.transport.codec import SERVICE_NAME

__all__ = [
    "REGISTRATION_METHODS",
    "Behaviour",
    "MethodInterceptor",
    "scheduler_method",
    "with_behaviour",
]

REGISTRATION_METHODS = frozenset({"RegisterWorker", "RegisterWorkers"})

Behaviour = Callable[[Any, Any], Awaitable[Any]]
"""A unary call's behaviour: ``(request, context) -> response``."""


def scheduler_method(details: grpc.HandlerCallDetails) -> str | None:
    """The short name (``RegisterWorker``) of a SchedulerService call; None for any other service's."""
    service, _, method = details.method.lstrip("/").partition("/")
    return method if service == SERVICE_NAME else None


def with_behaviour(handler: grpc.RpcMethodHandler, behaviour: Behaviour) -> grpc.RpcMethodHandler:
    """``handler`` with ``behaviour`` in place of its own, decoding and encoding as before."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class MethodInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Hands the handler of every SchedulerService call among ``methods`` to :meth:`intercept`, with the
    method's short name (``RegisterWorkers``); passes every other call (health, reflection, other methods)
    through untouched."""

    def __init__(self, methods: Collection[str]) -> None:
        self.methods = frozenset(methods)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = scheduler_method(details)
        if handler is None or method not in self.methods:
            return handler
        return self.intercept(handler, method)

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError
