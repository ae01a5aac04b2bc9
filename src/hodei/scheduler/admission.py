"""AdmissionControl: a bound on the registrations the scheduler works on at once.

Beyond ``max_in_flight``, a registration call is answered at once with ``RESOURCE_EXHAUSTED`` and a
``google.rpc.RetryInfo`` delay (spread by jitter so that the refused do not all return together); the
registration adapter waits that delay instead of its own backoff. Refusing is cheap, so under a storm the
scheduler keeps time for everything else — health checks, heartbeats, the workers it did admit.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc

from hodei.errors import SchedulerOverloaded
from hodei.transport.codec import SERVICE_NAME
from hodei.transport.status import grpc_code, status_trailer

__all__ = ["ADMITTED_METHODS", "AdmissionControl"]

ADMITTED_METHODS = frozenset({"RegisterWorker", "RegisterWorkers"})


class AdmissionControl(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """``in_flight``, ``admitted`` and ``rejected`` say what it did; ``retry_after`` is the mean advised delay."""

    def __init__(
        self,
        *,
        max_in_flight: int = 1000,
        retry_after: float = 0.1,
        methods: Collection[str] = ADMITTED_METHODS,
        random: Callable[[], float] = random.random,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self._methods = frozenset(methods)
        self._random = random
        self.in_flight = 0
        self.admitted = 0
        self.rejected = 0

    def advice(self) -> float:
        """The delay to advise: ``retry_after`` scaled by a random factor in [0.5, 1.5)."""
        return self.retry_after * (0.5 + self._random())

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service, _, method = details.method.lstrip("/").partition("/")
        if handler is None or service != SERVICE_NAME or method not in self._methods:
            return handler
        return self._bounded(handler)

    def _bounded(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        serve = handler.unary_unary

        # Counted inside the handler, so that a call gRPC never hands over (an undecodable body, a client that
        # went away first) is never counted either.
        async def bounded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self.in_flight >= self.max_in_flight:
                self.rejected += 1
                error = SchedulerOverloaded(
                    f"the scheduler is working on {self.in_flight} registrations, its limit; retry later",
                    retry_after=self.advice(),
                )
                await context.abort(
                    grpc_code(error.code), error.message, trailing_metadata=status_trailer(error)
                )
            self.admitted += 1
            self.in_flight += 1
            try:
                return await serve(request, context)
            finally:
                self.in_flight -= 1

        return grpc.unary_unary_rpc_method_handler(
            bounded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
