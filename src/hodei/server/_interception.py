"""Plumbing shared by the scheduler's server interceptors (the registration bound, the testing fault injector):
which calls are the scheduler's, and how a call's behaviour is replaced while its (de)serialisation is kept.

The scheduler's own checks (undecodable requests, the registration bound, the stream limits) wrap its
methods' handlers once, when the server is built (:func:`serve_wrapped`), not as gRPC interceptors: grpc.aio
runs every interceptor's ``intercept_service`` coroutine on every call of every method, which cost the server
about 13 µs of CPU per interceptor per call (measured: three pass-through interceptors, 286 → 325 µs per call of
a bare server). Interceptors remain for what must decide per call (tokens, tracing, the testing fault injector).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol

import grpc

from hodei.transport._codec import SERVICE_NAME

__all__ = [
    "REGISTRATION_METHODS",
    "Behaviour",
    "HandlerWrapper",
    "Interceptor",
    "MethodInterceptor",
    "scheduler_method",
    "serve_wrapped",
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


class HandlerWrapper(Protocol):
    """Makes, once per method, the handler that serves it in place of the servicer's own ``handler``."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler: ...


class _Handlers:
    """Stands in for the server while a generated ``add_XServicer_to_server`` hands it the method handlers."""

    def __init__(self) -> None:
        self.by_method: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The generated code registers the same handlers twice: generic, and by method (kept)."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.by_method.update(handlers)


def serve_wrapped(
    server: grpc.aio.Server,
    service: str,
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    wrappers: Sequence[HandlerWrapper],
) -> None:
    """Serve ``servicer`` (``add_to_server`` is its generated ``add_XServicer_to_server``) on ``server`` with
    each method's handler wrapped by ``wrappers``, the first outermost, as interceptors in that order would."""
    handlers = _Handlers()
    add_to_server(servicer, handlers)
    wrapped = dict(handlers.by_method)
    for wrapper in reversed(wrappers):
        wrapped = {method: wrapper.wrap(handler, method) for method, handler in wrapped.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
    server.add_registered_method_handlers(service, wrapped)


class MethodInterceptor:
    """Given to a :class:`~hodei.server.SchedulerServer` among its interceptors, wraps the handler of every
    SchedulerService method among ``methods`` (short names: ``RegisterWorkers``) with what :meth:`intercept`
    makes of it, once, at start, inside the scheduler's own checks; every other method (and health, reflection)
    is served untouched. Unless ``per_call`` says it decides afresh for each call that reaches it: then
    :meth:`intercept` is asked on each call (unary methods only)."""

    per_call = False

    def __init__(self, methods: Collection[str]) -> None:
        self.methods = frozenset(methods)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` as :meth:`intercept` makes it, for a method among ``methods``; any other untouched. For a
        ``per_call`` interceptor, a handler that asks :meth:`intercept` on each call (unary methods only)."""
        if method not in self.methods:
            return handler
        if not self.per_call:
            return self.intercept(handler, method)
        if handler.request_streaming or handler.response_streaming:
            raise ValueError(
                f"{type(self).__name__} decides per call, which only a unary method can: {method}"
            )

        async def decided(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await self.intercept(handler, method).unary_unary(request, context)

        return with_behaviour(handler, decided)

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


Interceptor = grpc.aio.ServerInterceptor | MethodInterceptor
"""What a SchedulerServer takes among its ``interceptors``: gRPC's own, or a :class:`MethodInterceptor`."""
