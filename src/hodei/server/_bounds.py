"""Bounds on the registrations (:class:`RegistrationBound`) and on the agents' hellos
(:class:`HelloBound`) the scheduler works on at once.

Beyond ``max_in_flight``, a registration call is answered at once with ``RESOURCE_EXHAUSTED`` and a
``google.rpc.RetryInfo`` delay (spread by jitter so that the refused do not all return together); the
registration adapter waits that delay instead of its own backoff. Refusing is cheap, so under a storm the
scheduler keeps time for everything else — health checks, heartbeats, the workers it did admit.

A hello is the same beyond its own bound, with a delay that spreads the refused agents over a window that grows
with how many are already waiting: after a restart, the whole fleet comes back at about the rate the scheduler
admits hellos, instead of all at once.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import grpc

from hodei.errors import SchedulerOverloaded
from hodei.observability._metrics import SchedulerMetrics
from hodei.server._interception import REGISTRATION_METHODS, MethodInterceptor, with_behaviour
from hodei.transport._status import abort_with

__all__ = ["HelloBound", "RegistrationBound"]


class RegistrationBound(MethodInterceptor):
    """``in_flight``, ``admitted`` and ``rejected`` say what it did; ``retry_after`` is the mean advised delay.

    Each refused call counts in ``hodei_admission_rejections_total{method}`` of ``metrics`` (default: a private
    registry's; the server's own bound shares its scheduler's).
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


# Refusals whose return time is remembered (to count the agents waiting); beyond, the delay is the longest.
MAX_WAITING_TRACKED = 200_000
# Hello durations the rate of hellos let in is estimated from.
DURATIONS_KEPT = 256


DEFAULT_MAX_HELLOS_IN_FLIGHT = 2000
"""Hellos worked on at once by default. Measured with 10,000 agents killed and restarted together (SQLite, 2 cores):
500 brought them all back in 28 s, 2,000 in 24.5 s with fewer refusals, both with connections at the fleet's size
and none LOST; hellos are cheap with group commit, the bound is there to keep a storm from taking the loop."""


class HelloBound:
    """A bound on the agents' hellos the scheduler works on at once: from the hello read to the acknowledgement
    written (the registration, its store write and the answer).

    :meth:`admitted` lets a hello in, and tells the agent so at once (the stream's headers: the agent counts its
    hello timeout from then, never from dialing); beyond ``max_in_flight`` it refuses the stream with
    ``RESOURCE_EXHAUSTED`` and a ``google.rpc.RetryInfo`` delay of ``base_delay + (waiting + u) / rate``
    (``u`` uniform in [0, 1)), at most ``max_delay`` (beyond, uniform over [``base_delay``, ``max_delay``]):
    ``waiting`` is the number of agents refused whose advised delay has not run out, ``rate`` the hellos it can
    admit per second (``max_in_flight`` over the mean time of the last hellos, ``expected_hello`` before
    any; or the hellos acknowledged in the last second, if more). So each refused agent comes back after those
    refused before it, and the fleet returns at about the rate the scheduler admits it. ``max_delay`` keeps the
    longest wait well inside the scheduler's recovery window after a restart (30 s by default): an agent that
    comes back too early is refused again, cheaply, and told a new delay.

    ``in_flight``, ``waiting`` and ``rejected`` say what it does; refusals count in
    ``hodei_hello_rejections_total`` of ``metrics``, and ``hodei_hellos_in_flight`` and ``hodei_hellos_waiting``
    read the first two.
    """

    def __init__(
        self,
        *,
        max_in_flight: int = DEFAULT_MAX_HELLOS_IN_FLIGHT,
        base_delay: float = 0.25,
        max_delay: float = 10.0,
        expected_hello: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if not 0 <= base_delay <= max_delay:
            raise ValueError(f"need 0 <= base_delay <= max_delay, got {base_delay} and {max_delay}")
        if expected_hello <= 0:
            raise ValueError(f"expected_hello must be > 0, got {expected_hello}")
        self.max_in_flight = max_in_flight
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.expected_hello = expected_hello
        self._clock = clock
        self._random = random
        self._working: set[object] = set()
        self._returns: list[float] = []  # a heap: when each refused agent was told to come back
        self._durations: deque[float] = deque(maxlen=DURATIONS_KEPT)
        self._finished: deque[float] = deque()  # when the hellos of the last second were acknowledged
        self.rejected = 0
        self.metrics = metrics or SchedulerMetrics()
        self.metrics.hellos_in_flight.set_function(lambda: self.in_flight)
        self.metrics.hellos_waiting.set_function(lambda: self.waiting)

    @property
    def in_flight(self) -> int:
        return len(self._working)

    @property
    def waiting(self) -> int:
        """Agents refused whose advised delay has not yet run out."""
        now = self._clock()
        while self._returns and self._returns[0] <= now:
            heapq.heappop(self._returns)
        return len(self._returns)

    def rate(self) -> float:
        """Hellos admitted per second: by Little's law at the bound, or as many as were in the last second if
        more (a loop slowed by a flood of connections makes every hello slow, not fewer of them done)."""
        mean = sum(self._durations) / len(self._durations) if self._durations else self.expected_hello
        now = self._clock()
        while self._finished and self._finished[0] <= now - 1.0:
            self._finished.popleft()
        return max(self.max_in_flight / max(mean, 1e-3), float(len(self._finished)))

    def advice(self) -> float:
        """The delay to advise a refused agent (and count it among the waiting until then)."""
        waiting, share = self.waiting, self._random()
        delay = self.base_delay + (waiting + share) / self.rate()
        if delay > self.max_delay or waiting >= MAX_WAITING_TRACKED:
            delay = self.base_delay + share * (self.max_delay - self.base_delay)
        if waiting < MAX_WAITING_TRACKED:
            heapq.heappush(self._returns, self._clock() + delay)
        return delay

    @contextlib.asynccontextmanager
    async def admitted(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Work on one hello inside, or refuse the stream (``RESOURCE_EXHAUSTED``, RetryInfo) beyond the bound.
        Admitted, the agent hears so at once (the stream's headers)."""
        if self.in_flight >= self.max_in_flight:
            self.rejected += 1
            self.metrics.hello_rejections.inc()
            await abort_with(
                context,
                SchedulerOverloaded(
                    f"the scheduler is working on {self.in_flight} hellos, its limit; retry later",
                    retry_after=self.advice(),
                ),
            )
        hello = object()
        started = self._clock()
        self._working.add(hello)
        try:
            await context.send_initial_metadata(())
            yield
            finished = self._clock()
            self._durations.append(finished - started)
            self._finished.append(finished)
        finally:
            self._working.discard(hello)
