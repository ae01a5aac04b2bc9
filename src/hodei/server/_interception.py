"""Plumbing shared by the scheduler's server interceptors (the registration bound, the testing fault injector):
which calls are the scheduler's, and how a call's behaviour is replaced while its (de)serialisation is kept."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc

from hodei.transport._codec import SERVICE_NAME

__all__ = [
    "REGISTRATION_METHODS",
    "Behaviour",
    "MethodInterceptor",
    "WrappedHandlers",
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


class WrappedHandlers:
    """The handler an interceptor made of each method's handler, made once rather than on every call: gRPC
    hands over the same handler object for a method each time, so its wrapper is kept until a different one
    comes (one entry per method, never more)."""

    __slots__ = ("_made",)

    def __init__(self) -> None:
        self._made: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(
        self, method: str, handler: grpc.RpcMethodHandler, make: Callable[[], grpc.RpcMethodHandler]
    ) -> grpc.RpcMethodHandler:
        made = self._made.get(method)
        if made is not None and made[0] is handler:
            return made[1]
        wrapped = make()
        self._made[method] = (handler, wrapped)
        return wrapped


class MethodInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Hands the handler of every SchedulerService call among ``methods`` to :meth:`intercept`, with the
    method's short name (``RegisterWorkers``); passes every other call (health, reflection, other methods)
    through untouched. What :meth:`intercept` makes is kept for the next call of the same method (it must not
    hold anything of one call), unless ``per_call`` says it decides afresh for each call."""

    per_call = False

    def __init__(self, methods: Collection[str]) -> None:
        self.methods = frozenset(methods)
        self._wrapped = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = scheduler_method(details)
        if handler is None or method not in self.methods:
            return handler
        if self.per_call:
            return self.intercept(handler, method)
        return self._wrapped.get(method, handler, lambda: self.intercept(handler, method))

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError
