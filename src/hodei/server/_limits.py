"""What one scheduler lets its callers take: message size, streams, pings, idle and half-open connections.

A client that opens connections and sends nothing, sends oversized messages, opens thousands of streams or
pings without end meets one of these limits, and the scheduler keeps its time for everyone else:

- ``max_message_bytes``: a larger request is refused by gRPC with ``RESOURCE_EXHAUSTED`` before it is decoded;
- ``max_concurrent_streams``: calls at once on one connection (HTTP/2 ``SETTINGS_MAX_CONCURRENT_STREAMS``; a
  client queues the rest);
- ``max_streams`` and ``max_streams_per_peer``: the long-lived streams (agents' ``Connect``, ``WatchWorkers``)
  open at once in all and from one IP address; beyond, ``RESOURCE_EXHAUSTED`` with a retry delay
  (:class:`StreamLimits`), counted in ``hodei_admission_rejections_total{method}``;
- ``min_ping_interval`` and ``max_ping_strikes``: a client pinging more often is sent ``GOAWAY`` (too many pings)
  after that many strikes;
- ``max_connection_idle``: a connection with no call for that long is closed (``GOAWAY``; a client dials again
  when it next calls);
- ``handshake_timeout``: a connection that has not finished its TLS and HTTP/2 handshake by then is closed (a
  socket that connects and sends nothing);
- ``max_connections``: connections held at once (gRPC's ``grpc.max_allowed_incoming_connections``): one beyond
  is closed as soon as it is accepted, so that the process never runs out of file descriptors (0: no quota;
  ``hodei scheduler serve`` derives it from its descriptor limit, :mod:`hodei.server._connections`).

Registrations and hellos are bounded by :mod:`hodei.server._bounds`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from hodei._settings import check_settings
from hodei.errors import SchedulerOverloaded
from hodei.observability._metrics import SchedulerMetrics
from hodei.server._interception import MethodInterceptor
from hodei.transport._status import abort_with

__all__ = ["STREAM_METHODS", "ServerLimits", "StreamLimits", "peer_host"]

STREAM_METHODS = frozenset({"Connect", "WatchWorkers"})

# The largest RegisterWorkers request that validation accepts (1,000 workers, each with 64 labels of the
# longest keys and values, and the longest id, pool, hostname and version) is 21.4 MB; the largest that the
# adapter sends by default (batch_size 250) a quarter of that. A batch of 1,000 plain workers is 0.1 MB.
DEFAULT_MAX_MESSAGE_BYTES = 24 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """The limits of the module docstring; times in seconds."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_streams: int = 1_000
    max_streams: int = 20_000
    max_streams_per_peer: int = 5_000
    min_ping_interval: float = 5.0
    max_ping_strikes: int = 2
    max_connection_idle: float = 600.0
    handshake_timeout: float = 10.0
    stream_retry_after: float = 1.0
    max_connections: int = 0

    def __post_init__(self) -> None:
        check_settings(
            self,
            {
                "max_message_bytes": (">= 1024", self.max_message_bytes >= 1024),
                "max_concurrent_streams": (">= 1", self.max_concurrent_streams >= 1),
                "max_streams": (">= 1", self.max_streams >= 1),
                "max_streams_per_peer": (
                    "between 1 and max_streams",
                    1 <= self.max_streams_per_peer <= self.max_streams,
                ),
                "min_ping_interval": (">= 0", self.min_ping_interval >= 0),
                "max_ping_strikes": (">= 0", self.max_ping_strikes >= 0),
                "max_connection_idle": ("> 0", self.max_connection_idle > 0),
                "handshake_timeout": ("> 0", self.handshake_timeout > 0),
                "stream_retry_after": (">= 0", self.stream_retry_after >= 0),
                "max_connections": (">= 0", self.max_connections >= 0),
            },
        )

    def options(self) -> tuple[tuple[str, Any], ...]:
        """The grpc.aio server options that enforce what gRPC itself can (all but the stream caps)."""
        quota = (
            (("grpc.max_allowed_incoming_connections", self.max_connections),) if self.max_connections else ()
        )
        return (
            *quota,
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(self.min_ping_interval)),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
            ("grpc.max_connection_idle_ms", _ms(self.max_connection_idle)),
            ("grpc.server_handshake_timeout_ms", _ms(self.handshake_timeout)),
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer (``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``, ``ipv6:[::1]:5`` -> ``::1``);
    anything else (a Unix socket) whole."""
    scheme, sep, rest = peer.partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return peer
    host, _, _ = rest.rpartition(":")
    return host.removeprefix("[").removesuffix("]") or rest


class StreamLimits(MethodInterceptor):
    """Caps the open ``Connect`` and ``WatchWorkers`` streams: ``max_streams`` in all, ``max_streams_per_peer``
    from one IP address; a stream beyond is refused with ``RESOURCE_EXHAUSTED`` and a retry delay.
    ``open`` and ``open_by_peer`` say what is open now, ``refused`` how many were refused."""

    def __init__(self, limits: ServerLimits, *, metrics: SchedulerMetrics | None = None) -> None:
        super().__init__(STREAM_METHODS)
        self.limits = limits
        self.open = 0
        self.open_by_peer: Counter[str] = Counter()
        self.refused = 0
        metrics = metrics or SchedulerMetrics()
        self._rejections = {m: metrics.admission_rejections.labels(m) for m in STREAM_METHODS}

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.request_streaming:
            return self._bounded_stream(handler, method)
        return self._bounded_watch(handler, method)

    async def _enter(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> str:
        peer = peer_host(context.peer())
        if self.open >= self.limits.max_streams:
            where = f"{self.open} streams are open, the scheduler's limit"
        elif self.open_by_peer[peer] >= self.limits.max_streams_per_peer:
            where = f"{self.open_by_peer[peer]} streams are open from {peer}, the limit for one address"
        else:
            self.open += 1
            self.open_by_peer[peer] += 1
            return peer
        self.refused += 1
        self._rejections[method].inc()
        await abort_with(
            context, SchedulerOverloaded(f"{where}; retry later", retry_after=self.limits.stream_retry_after)
        )

    def _leave(self, peer: str) -> None:
        self.open -= 1
        self.open_by_peer[peer] -= 1
        if not self.open_by_peer[peer]:
            del self.open_by_peer[peer]

    def _bounded_stream(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        serve = handler.stream_stream

        async def bounded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            peer = await self._enter(context, method)
            try:
                return await serve(requests, context)
            finally:
                self._leave(peer)

        return grpc.stream_stream_rpc_method_handler(
            bounded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _bounded_watch(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        serve = handler.unary_stream

        async def bounded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            peer = await self._enter(context, method)
            try:
                async for response in serve(request, context):
                    yield response
            finally:
                self._leave(peer)

        return grpc.unary_stream_rpc_method_handler(
            bounded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
