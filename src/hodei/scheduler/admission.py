"""AdmissionControl: a bound on the registrations the scheduler works on at once.

Beyond ``max_in_flight``, a registration call is answered at once with ``RESOURCE_EXHAUSTED`` and a
``google.rpc.RetryInfo`` delay (spread by jitter so that the refused do not all return together); the
registration adapter waits that delay instead of its own backoff. Refusing is cheap, so under a storm the
scheduler keeps time for everything else — health checks, heartbeats, the workers it did admit.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from typing import Any

import grpc

from hodei.errors import SchedulerOverloaded
from hodei.observability.metrics import SchedulerMetrics
from hodei.scheduler.interception import REGISTRATION_METHODS, MethodInterceptor, with_behaviour
from hodei.transport.status import abort_with

__all__ = ["AdmissionControl"]


class AdmissionControl(MethodInterceptor):
    """``in_flight``, ``admitted`` and ``rejected`` say what it did; ``retry_after`` is the mean advised delay.

    Each refused call counts in ``hodei_admission_rejections_total{method}`` of ``metrics`` (default: a private
    registry's; the server's own admission control shares its scheduler's).
    """

    def __init__(
        self,
        *,
        max_in_flight: int = 1000,
        retry_after: float = 0.1,
        methods: Collection[str] = REGISTRATION_METHODS,
        random: Callable[[], float] = random.random,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        super().__init__(methods)
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self._random = random
        self.in_flight = 0
        self.admitted = 0
        self.rejected = 0
        self.metrics = metrics or SchedulerMetrics()
        # Every method's series exists from the start, at 0.
        self._rejections = {m: self.metrics.admission_rejections.labels(m) for m in self.methods}

    def advice(self) -> float:
        """The delay to advise: ``retry_after`` scaled by a random factor in [0.5, 1.5)."""
        return self.retry_after * (0.5 + self._random())

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        serve = handler.unary_unary
        rejections = self._rejections[method]

        # Counted inside the handler, so that a call gRPC never hands over (an undecodable body, a client that
        # went away first) is never counted either.
        async def bounded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self.in_flight >= self.max_in_flight:
                self.rejected += 1
                rejections.inc()
                await abort_with(
                    context,
                    SchedulerOverloaded(
                        f"the scheduler is working on {self.in_flight} registrations, its limit; retry later",
                        retry_after=self.advice(),
                    ),
                )
            self.admitted += 1
            self.in_flight += 1
            try:
                return await serve(request, context)
            finally:
                self.in_flight -= 1

        return with_behaviour(handler, bounded)
