"""EmbeddedScheduler: a real scheduler (grpc.aio server + registry) on a free loopback port, in-process."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

import grpc

from hodei._bootstrap import SchedulerHost, build_scheduler
from hodei.domain import DynamicWorker, WorkerRecord
from hodei.lifecycle import LivenessConfig
from hodei.observability._metrics import SchedulerMetrics
from hodei.ports import RegistryStore
from hodei.scheduler._registry import RegistrationVeto
from hodei.security._config import SchedulerSecurity
from hodei.security._tls import ClientTlsConfig
from hodei.server._bounds import HelloBound, RegistrationBound
from hodei.server._interception import Interceptor
from hodei.server._limits import ServerLimits
from hodei.transport._channel import open_channel
from hodei.transport._client import Credential, SchedulerPortClient

__all__ = ["EmbeddedScheduler"]


class EmbeddedScheduler:
    """``async with EmbeddedScheduler() as scheduler:`` — then dial ``scheduler.target``.

    It runs the real scheduler (in memory unless a store is given; leases as ``liveness`` says) behind the real
    gRPC service, so that what a test sees is what a deployment does. ``get_worker`` and ``add_worker`` reach
    the registry directly; ``scheduler.events.watch()`` follows its events. ``metrics`` (default: a private
    registry's) receives the scheduler's metrics, its bounds' included (``registration_bound`` and
    ``hello_bound`` bound the registrations and the agents' hellos worked on at once); ``veto`` may refuse any
    registration (its error is the answer for that worker). ``security`` turns on tokens
    and TLS as a deployment would (default: neither); ``limits`` are the server's
    (:class:`~hodei.server._limits.ServerLimits`).
    """

    def __init__(
        self,
        *,
        store: RegistryStore | None = None,
        veto: RegistrationVeto | None = None,
        liveness: LivenessConfig | None = None,
        registration_bound: RegistrationBound | None = None,
        hello_bound: HelloBound | None = None,
        interceptors: Sequence[Interceptor] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        metrics: SchedulerMetrics | None = None,
        security: SchedulerSecurity | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self._host = SchedulerHost(
            build_scheduler(
                listen=f"{host}:{port}",
                store=store,
                veto=veto,
                liveness=liveness,
                registration_bound=registration_bound,
                hello_bound=hello_bound,
                interceptors=interceptors,
                grace=0.5,
                metrics=metrics,
                security=security,
                limits=limits,
            )
        )
        self._server = self._host.server
        self.scheduler = self._host.scheduler
        self.metrics = self.scheduler.metrics
        self.registry = self.scheduler.registry
        self.registration_bound = self._server.registration_bound
        self.hello_bound = self._server.hellos
        self.stream_limits = self._server.streams
        self._channels: list[grpc.aio.Channel] = []

    @classmethod
    async def new(cls, **options: object) -> EmbeddedScheduler:
        """Build and start one (the story's ``EmbeddedScheduler::new().await``); stop it with :meth:`stop`."""
        return await cls(**options).start()  # type: ignore[arg-type]

    @property
    def target(self) -> str:
        """The address to dial, ``127.0.0.1:<port>``."""
        return self._server.address

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> Self:
        await self._host.start()
        return self

    async def stop(self) -> None:
        """Close the channels it handed out and stop the server. Idempotent."""
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()
        await self._host.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def channel(self, *, tls: ClientTlsConfig | None = None) -> grpc.aio.Channel:
        """A new channel to this scheduler, closed when the scheduler stops (traced if tracing is on); over TLS
        with ``tls``."""
        channel = open_channel(self.target, tls=tls)
        self._channels.append(channel)
        return channel

    def client(
        self, *, credential: Credential | None = None, tls: ClientTlsConfig | None = None
    ) -> SchedulerPortClient:
        """A :class:`SchedulerPortClient` on a channel closed when the scheduler stops, presenting
        ``credential`` (with auth on), over TLS with ``tls``."""
        return SchedulerPortClient(self.channel(tls=tls), credential=credential)

    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        return await self.scheduler.get(worker_id)

    async def add_worker(self, worker: DynamicWorker) -> WorkerRecord:
        """Register a worker directly in the registry, as if it had registered itself."""
        return (await self.registry.register(worker)).record

    async def workers(self) -> list[WorkerRecord]:
        """Every registered worker, in worker-id order."""
        return [self.scheduler.view(r) for r in await self.registry.all_records()]
