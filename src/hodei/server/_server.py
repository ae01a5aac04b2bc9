"""SchedulerServer: the scheduler served over grpc.aio, with health checking and server reflection.

Its :class:`~hodei.security.SchedulerSecurity` says whether callers must authenticate (tokens) and whether the
port speaks TLS; its :class:`~hodei.server._limits.ServerLimits` what a caller may take (message size,
streams, pings, idle connections).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hodei.errors import InvalidWorkerData
from hodei.observability import _tracing as tracing
from hodei.observability._logging import log_worker_event
from hodei.scheduler._core import Scheduler
from hodei.security._config import SchedulerSecurity
from hodei.server._authentication import Authentication
from hodei.server._bounds import HelloBound, RegistrationBound
from hodei.server._interception import HandlerWrapper, Interceptor, MethodInterceptor, serve_wrapped
from hodei.server._limits import ServerLimits, StreamLimits
from hodei.server._servicer import SchedulerServicer
from hodei.transport._codec import SERVICE_NAME, pb, pb_grpc
from hodei.transport._status import abort_with

__all__ = ["LEADER_HEALTH", "SERVER_OPTIONS", "SchedulerServer", "is_loopback", "server_options"]

log = logging.getLogger(__name__)

# The health of this service name is SERVING while this replica runs lease expiry for the registry.
LEADER_HEALTH = "hodei.scheduler.v1.LeaseLeader"

# Agents keep streams open for hours: let them ping (keepalive) so that dead peers are noticed on both sides.
# How often a client may ping, and the other limits on what a client may take, are ServerLimits'.
SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC core cancels (with CANCELLED, which nobody retries) the calls it holds beyond 1,000 (soft) or 3,000
    # (hard) before the server takes them; the registration bound, not silent cancellation, bounds the load.
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 200_000),
    # gRPC sets SO_REUSEPORT by default: a second scheduler on a port in use would then start too, and the
    # kernel would split connections between the two. One port, one scheduler.
    ("grpc.so_reuseport", 0),
)


class _Undecodable:
    """What a request deserializer yields for bytes that are not a message of its type."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidWorkerData) -> None:
        self.error = error


# The request message of each SchedulerService method, by its short name (RegisterWorker -> ...RegisterWorkerRequest).
_REQUEST_TYPES = {
    method.name: method.input_type.full_name
    for method in pb.DESCRIPTOR.services_by_name["SchedulerService"].methods
}


class _RejectUndecodable:
    """Answers a SchedulerService call with one request (unary or server-streaming) whose request does not parse
    with ``INVALID_ARGUMENT`` ("request is not a valid hodei.scheduler.v1.X"), as the gRPC status-code spec
    prescribes; left to itself, grpc.aio answers ``UNKNOWN`` for a deserializer that raises. The servicer, and
    the checks inside this one, never see such a call."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return handler if handler.request_streaming else self._wrap(handler, method)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        message = _REQUEST_TYPES[method]
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except DecodeError:
                return _Undecodable(InvalidWorkerData(f"request is not a valid {message}"))

        if handler.response_streaming:
            serve_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await abort_with(context, request.error)
                async for response in serve_stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=deserialize, response_serializer=handler.response_serializer
            )
        serve = handler.unary_unary

        async def behaviour(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Undecodable):
                await abort_with(context, request.error)
            return await serve(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=deserialize, response_serializer=handler.response_serializer
        )


def is_loopback(listen: str) -> bool:
    """Whether ``HOST:PORT`` listens on loopback only (``127.0.0.1``, ``[::1]``, ``localhost``)."""
    host = listen.rsplit(":", 1)[0].removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse_unbindable(listen: str) -> None:
    """Raise OSError saying why, if ``listen`` is taken by another socket, or none of its addresses can be bound
    here: gRPC's own failure says only "Failed to bind", and logs the reason raw on stderr."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        return  # gRPC says what is wrong with it
    try:
        found = socket.getaddrinfo(
            host.removeprefix("[").removesuffix("]") or None,
            int(port),
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except OSError:
        return  # gRPC says why it cannot resolve it
    refusals: list[OSError] = []
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC binds: past connections in TIME_WAIT do not hold the port, a listening socket does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise OSError(
                        error.errno, f"cannot listen on {listen}: the address is in use (another scheduler?)"
                    ) from None
                refusals.append(error)
    if refusals and len(refusals) == len(found):
        raise OSError(refusals[0].errno, f"cannot listen on {listen}: {refusals[0].strerror}")


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPED = "stopped"


def server_options(
    limits: ServerLimits, options: Sequence[tuple[str, Any]] = SERVER_OPTIONS
) -> list[tuple[str, Any]]:
    """The grpc.aio server options of a scheduler with ``limits``: theirs, then ``options`` (which replace those of
    the same name)."""
    return list({**dict(limits.options()), **dict(options)}.items())


class SchedulerServer:
    r"""Serves a :class:`Scheduler`. ``listen`` may use port 0; :attr:`address` is the bound address.

    ``async with SchedulerServer(scheduler) as server: ...`` starts it (and its liveness sweeps) and stops it; a
    server cannot be started twice. ``security`` (default: no auth, plaintext) and ``limits`` are described in
    the module docstring; ``options`` are more grpc.aio server options, which replace those of the same name.
    ``registration_bound`` bounds the registrations worked on at once, ``hello_bound`` the agents' hellos.
    ``interceptors`` see each call after the token check; those that are
    :class:`~hodei.server._interception.MethodInterceptor`\ s wrap the handlers inside the scheduler's own checks
    (undecodable requests, the registration bound, the stream limits), which wrap them once, at start.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        listen: str = "127.0.0.1:0",
        interceptors: Sequence[Interceptor] = (),
        registration_bound: RegistrationBound | None = None,
        hello_bound: HelloBound | None = None,
        options: Sequence[tuple[str, Any]] = SERVER_OPTIONS,
        grace: float = 2.0,
        security: SchedulerSecurity | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.security = security or SchedulerSecurity()
        self.limits = limits or ServerLimits()
        self.registration_bound = registration_bound or RegistrationBound(metrics=scheduler.metrics)
        self.streams = StreamLimits(self.limits, metrics=scheduler.metrics)
        self.hellos = hello_bound or HelloBound(metrics=scheduler.metrics)
        # Agents on their way back keep the scheduler's recovery window open: those this server told to come back
        # later, and those whose hellos it is working on.
        scheduler.monitor.returning = lambda: self.hellos.waiting + self.hellos.in_flight
        self._listen = listen
        self._interceptors = [i for i in interceptors if not isinstance(i, MethodInterceptor)]
        self._wrappers: list[HandlerWrapper] = [
            _RejectUndecodable(),
            self.registration_bound,
            self.streams,
            *(i for i in interceptors if isinstance(i, MethodInterceptor)),
        ]
        self._options = server_options(self.limits, options)
        self._grace = grace
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._health_updates: set[asyncio.Task[None]] = set()
        self._state = _State.NEW
        self.port = 0

    @property
    def address(self) -> str:
        """``host:port`` that clients dial."""
        host = self._listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> str:
        if self._state is not _State.NEW:
            raise RuntimeError(f"a {self._state.value} SchedulerServer cannot be started")
        self._state = _State.SERVING
        # The server span comes first, so that it covers every call, those refused by the registration bound too;
        # a caller without a valid token is refused next, before its request is read; then the given
        # interceptors. Inside them, the scheduler's own checks wrap its handlers: an undecodable request is
        # refused before the registration bound, the stream limits or a given MethodInterceptor see it.
        traced = tracing.server_interceptors()
        access = self.security.access
        authentication = [] if access is None else [Authentication(access)]
        interceptors = [*traced, *authentication, *self._interceptors]
        server = grpc.aio.server(interceptors=interceptors, options=self._options)
        serve_wrapped(
            server,
            SERVICE_NAME,
            pb_grpc.add_SchedulerServiceServicer_to_server,
            SchedulerServicer(self.scheduler, access=access, hellos=self.hellos),
            self._wrappers,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        tls = self.security.tls
        try:
            _refuse_unbindable(self._listen)
        except OSError:
            self._state = _State.STOPPED
            raise
        reason = "the address is not available"
        try:
            if tls is None:
                self.port = server.add_insecure_port(self._listen)
            else:
                self.port = server.add_secure_port(self._listen, tls.server_credentials())
        except RuntimeError as error:  # gRPC's "Failed to bind to address"
            self.port, reason = 0, str(error)
        if self.port == 0:
            self._state = _State.STOPPED
            raise OSError(f"cannot listen on {self._listen}: {reason}")
        self.scheduler.rounds.on_unhealthy = self._unhealthy
        self.scheduler.rounds.on_leadership = self._leadership
        self.scheduler.events.listen(log_worker_event)
        self.scheduler.address = self.address  # the replica agents stream to, as other replicas show it
        await self._health.set(LEADER_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.scheduler.start()
        await server.start()
        self._server = server
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "scheduler.started",
            extra={
                "address": self.address,
                "traced": bool(traced),
                "access_control": "on" if self.security.auth else "off",
                "tls": self.security.tls_mode,
            },
        )
        self._warn_if_exposed()
        return self.address

    def _warn_if_exposed(self) -> None:
        """Say loudly when a port beyond loopback lets anyone in, or carries tokens in plaintext."""
        if is_loopback(self._listen):
            return
        if self.security.access is None:
            log.warning(
                "scheduler.auth_off",
                extra={
                    "address": self.address,
                    "reason": "auth is off on a port beyond loopback: anyone who can reach it can register, "
                    "unregister or impersonate any worker (give the scheduler a token key: --auth-key)",
                },
            )
        elif self.security.tls is None:
            log.warning(
                "scheduler.plaintext",
                extra={
                    "address": self.address,
                    "reason": "tokens travel in plaintext on a port beyond loopback: anyone on the path can "
                    "read and replay them (give the scheduler a certificate: --tls-cert, --tls-key)",
                },
            )

    def _set_health(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        """Set ``service``'s health from a synchronous callback: in a task kept until it ends, and awaited on
        :meth:`stop`."""
        task = asyncio.get_running_loop().create_task(self._health.set(service, status), name="hodei-health")
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    def _unhealthy(self) -> None:
        self._set_health(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _leadership(self, leading: bool) -> None:
        serving = (
            health_pb2.HealthCheckResponse.SERVING if leading else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self._set_health(LEADER_HEALTH, serving)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving: health turns NOT_SERVING, streams end, in-flight calls get ``grace`` s. Idempotent."""
        server, self._server = self._server, None
        self._state = _State.STOPPED
        if server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self.scheduler.stop()  # ends agents' and watchers' streams, so that they do not hold the grace
        await asyncio.gather(*self._health_updates)
        await server.stop(self._grace if grace is None else grace)
        log.info("scheduler.stopped", extra={"address": self.address})

    async def __aenter__(self) -> SchedulerServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
