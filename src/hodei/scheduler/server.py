"""SchedulerServer: the registry served over grpc.aio, with health checking and server reflection."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hodei.scheduler.registry import WorkerRegistry
from hodei.scheduler.service import SchedulerServicer
from hodei.transport.codec import SERVICE_NAME, pb_grpc

__all__ = ["SchedulerServer"]


class _State(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPED = "stopped"


class SchedulerServer:
    """Serves a :class:`WorkerRegistry`. ``listen`` may use port 0; :attr:`address` is the bound address.

    ``async with SchedulerServer(registry) as server: ...`` starts it and stops it; a server cannot be
    started twice.
    """

    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        listen: str = "127.0.0.1:0",
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        grace: float = 2.0,
    ) -> None:
        self.registry = registry
        self._listen = listen
        self._interceptors = list(interceptors)
        self._options = list(options)
        self._grace = grace
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
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
        server = grpc.aio.server(interceptors=self._interceptors, options=self._options)
        pb_grpc.add_SchedulerServiceServicer_to_server(  # type: ignore[no-untyped-call]
            SchedulerServicer(self.registry), server
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
        self.port = server.add_insecure_port(self._listen)
        if self.port == 0:
            raise OSError(f"could not listen on {self._listen}")
        await server.start()
        self._server = server
        self._state = _State.SERVING
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        return self.address

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving: health turns NOT_SERVING, in-flight calls get ``grace`` seconds. Idempotent."""
        if self._state is not _State.SERVING or self._server is None:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPED
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._grace if grace is None else grace)

    async def __aenter__(self) -> SchedulerServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
