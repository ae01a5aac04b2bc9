"""The composition root: builds the scheduler and the control plane from their parts.

Every adapter comes in as a parameter; nothing here runs at import time. ``hodei scheduler serve``, ``hodei
demo`` and :class:`~hodei.testing.EmbeddedScheduler` all build their scheduler here (:func:`build_scheduler`
wires it, :class:`SchedulerHost` starts and stops it with its store, metrics endpoint and connection watch),
and the control plane comes from :func:`build_control_plane`, so that the object graph is wired in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypedDict, Unpack

from hodei._collector import tune_for_long_lived_objects
from hodei._environment import state_directory
from hodei.lifecycle import LivenessConfig
from hodei.management._config import WorkerManagementConfig
from hodei.management._pools import PoolAutoscaler, PoolAutoscalerConfig
from hodei.management._pools_file import PoolsFile
from hodei.management._service import WorkerManagementService
from hodei.observability._http import MetricsEndpoint
from hodei.observability._metrics import ControlPlaneMetrics, SchedulerMetrics
from hodei.ports import EventRelay, Leadership, PoolPort, RegistryStore, WorkerProvider
from hodei.registration._adapter import WorkerRegistrationAdapter
from hodei.registration._config import RegistrationConfig
from hodei.scheduler._core import Scheduler
from hodei.scheduler._registry import RegistrationVeto
from hodei.security._config import SchedulerSecurity
from hodei.security._tls import ClientTlsConfig, TlsConfig
from hodei.server._bounds import DEFAULT_MAX_HELLOS_IN_FLIGHT, HelloBound, RegistrationBound
from hodei.server._connections import ConnectionWatch
from hodei.server._interception import Interceptor
from hodei.server._limits import ServerLimits
from hodei.server._server import SchedulerServer
from hodei.stores._memory import MemoryRegistryStore
from hodei.transport._client import Credential, SchedulerPortClient

__all__ = [
    "HostOptions",
    "OpenedStore",
    "SchedulerHost",
    "SchedulerOptions",
    "build_control_plane",
    "build_pool_autoscaler",
    "build_scheduler",
    "default_store_url",
    "open_store",
]


def default_store_url() -> str:
    """The embedded default: a SQLite file in the user's state directory (``$XDG_STATE_HOME/hodei``)."""
    return f"sqlite:///{state_directory() / 'registry.db'}"


@dataclass(frozen=True, slots=True)
class OpenedStore:
    """A registry store opened from its URL, the leadership its replicas share, how to name it in logs, and
    the relay its replicas talk through."""

    store: RegistryStore
    leadership: Leadership | None
    shown: str
    relay: EventRelay | None = None


async def open_store(url: str) -> OpenedStore:
    """Open the registry store that ``url`` names; the caller closes ``opened.store``.

    - ``memory`` — in this process only, gone when it stops;
    - ``sqlite:///relative/file.db`` or ``sqlite:////absolute/file.db`` — one scheduler, durable;
    - ``postgresql://user:password@host:port/database`` — several scheduler replicas may share it; they elect
      one of them to run lease expiry, and relay events and agents' commands to each other (the password is
      never shown).
    """
    if url in ("memory", "memory://"):
        return OpenedStore(MemoryRegistryStore(), None, "memory")
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            raise ValueError(
                f"--store {url!r}: a SQLite store is sqlite:///relative/path or sqlite:////absolute/path"
            )
        from hodei.stores._sqlite import SqliteRegistryStore

        path = Path(url.removeprefix("sqlite:///"))
        return OpenedStore(await SqliteRegistryStore.open(path), None, f"sqlite:///{path}")
    if url.startswith(("postgresql://", "postgres://")):
        from hodei.stores import PostgresEventRelay, PostgresLeadership, PostgresRegistryStore

        store = await PostgresRegistryStore.open(url)
        return OpenedStore(store, PostgresLeadership(url), store.dsn, PostgresEventRelay(url))
    raise ValueError(f"--store {url!r}: expected memory, sqlite:///PATH or postgresql://…")


class SchedulerOptions(TypedDict, total=False):
    """What :func:`build_scheduler` takes beyond the store, its leadership and relay, and the metrics."""

    listen: str
    liveness: LivenessConfig | None
    veto: RegistrationVeto | None
    max_in_flight: int
    max_hellos_in_flight: int
    registration_bound: RegistrationBound | None
    hello_bound: HelloBound | None
    interceptors: Sequence[Interceptor]
    grace: float
    security: SchedulerSecurity | None
    limits: ServerLimits | None


def build_scheduler(
    *,
    listen: str = "127.0.0.1:50051",
    store: RegistryStore | None = None,
    leadership: Leadership | None = None,
    liveness: LivenessConfig | None = None,
    veto: RegistrationVeto | None = None,
    max_in_flight: int = 1000,
    max_hellos_in_flight: int = DEFAULT_MAX_HELLOS_IN_FLIGHT,
    registration_bound: RegistrationBound | None = None,
    hello_bound: HelloBound | None = None,
    interceptors: Sequence[Interceptor] = (),
    grace: float = 2.0,
    metrics: SchedulerMetrics | None = None,
    security: SchedulerSecurity | None = None,
    limits: ServerLimits | None = None,
    relay: EventRelay | None = None,
) -> SchedulerServer:
    """A scheduler server over a registry on ``store`` (memory by default), not yet started.

    ``leadership`` elects the replica that expires leases when several share the store (default: this one).
    ``veto`` may refuse any registration (its error is the answer for that worker). ``max_in_flight`` registrations and
    ``max_hellos_in_flight`` agents' hellos are worked on at once (beyond, ``RESOURCE_EXHAUSTED`` with an
    advised retry delay), unless ``registration_bound`` and ``hello_bound`` are given whole.
    ``interceptors``: gRPC's own see each call after the token check, a
    :class:`~hodei.server._interception.MethodInterceptor` wraps the handlers inside the registration bound;
    in-flight calls get ``grace`` seconds on stop.
    ``metrics`` receives every metric of the scheduler, its bounds' included (default: a private
    registry's); serve its registry with :class:`hodei.observability._http.MetricsEndpoint`. ``security``
    requires tokens and serves TLS (default: neither, for local use); ``limits`` bound what one caller takes.
    ``relay`` joins the replicas sharing ``store``: drains and shutdowns reach agents on any of them, and
    watchers see every replica's events.
    """
    metrics = metrics or SchedulerMetrics()
    return SchedulerServer(
        Scheduler(
            store or MemoryRegistryStore(),
            veto=veto,
            liveness=liveness,
            leadership=leadership,
            metrics=metrics,
            relay=relay,
        ),
        listen=listen,
        interceptors=interceptors,
        registration_bound=registration_bound
        or RegistrationBound(max_in_flight=max_in_flight, metrics=metrics),
        hello_bound=hello_bound or HelloBound(max_in_flight=max_hellos_in_flight, metrics=metrics),
        grace=grace,
        security=security,
        limits=limits,
    )


class HostOptions(SchedulerOptions, total=False):
    """What :meth:`SchedulerHost.on_store` takes beyond the store."""

    metrics: SchedulerMetrics | None
    metrics_listen: str
    metrics_tls: TlsConfig | None
    max_connections: int
    tune_gc: bool


class SchedulerHost:
    """A scheduler with what it runs beside, started and stopped as one: the :class:`SchedulerServer` that
    :func:`build_scheduler` wires, the registry store (closed on stop if the host opened it), the metrics
    endpoint and the connection watch (if asked for), and the garbage collector's tuning (if asked for).

    ``async with await SchedulerHost.open(url, ...) as host:`` for a store named by its URL (the demo; the
    CLI opens it with :func:`open_store` first, to tell a store that cannot be opened apart, and calls
    :meth:`on_store`); ``SchedulerHost(build_scheduler(...))`` for a server over a store the caller keeps
    (:class:`~hodei.testing.EmbeddedScheduler`).
    Every task it starts, it ends on :meth:`stop`.
    """

    def __init__(
        self,
        server: SchedulerServer,
        *,
        shown: str = "memory",
        owned_store: RegistryStore | None = None,
        endpoint: MetricsEndpoint | None = None,
        watch: ConnectionWatch | None = None,
        tune_gc: bool = False,
    ) -> None:
        self.server = server
        self.scheduler = server.scheduler
        self.shown = shown
        self.endpoint = endpoint
        self.watch = watch
        self._owned_store = owned_store
        self._tune_gc = tune_gc

    @classmethod
    async def open(cls, url: str, **options: Unpack[HostOptions]) -> SchedulerHost:
        """:meth:`on_store` over the store ``url`` names, opened here (see :func:`open_store`, whose errors are
        raised)."""
        return await cls.on_store(await open_store(url), **options)

    @classmethod
    async def on_store(
        cls,
        opened: OpenedStore,
        *,
        metrics: SchedulerMetrics | None = None,
        metrics_listen: str = "",
        metrics_tls: TlsConfig | None = None,
        max_connections: int = 0,
        tune_gc: bool = False,
        **options: Unpack[SchedulerOptions],
    ) -> SchedulerHost:
        """A scheduler on an opened store, with its leadership and relay; the host owns the store from now on
        (closed on :meth:`stop`, or at once if the scheduler cannot be built). ``metrics_listen`` serves
        ``metrics``' registry (over TLS with ``metrics_tls``); ``max_connections`` (if not 0) is watched against
        the sockets open; ``tune_gc`` freezes what start-up made and collects young objects less often (for a
        long-running process)."""
        metrics = metrics or SchedulerMetrics()
        try:
            endpoint = (
                MetricsEndpoint(metrics.registry, metrics_listen, tls=metrics_tls) if metrics_listen else None
            )
            server = build_scheduler(
                store=opened.store,
                leadership=opened.leadership,
                relay=opened.relay,
                metrics=metrics,
                **options,
            )
        except BaseException:
            await opened.store.close()
            raise
        watch = ConnectionWatch(max_connections, metrics.registry) if max_connections else None
        return cls(
            server,
            shown=opened.shown,
            owned_store=opened.store,
            endpoint=endpoint,
            watch=watch,
            tune_gc=tune_gc,
        )

    @property
    def address(self) -> str:
        """``host:port`` that clients dial."""
        return self.server.address

    def own_processes(self) -> set[int]:
        """The PIDs of the processes the scheduler runs for itself (a SQLite store's writer), while they run."""
        from hodei.stores._sqlite import SqliteRegistryStore

        store = self._owned_store
        writer = store.writer_pid if isinstance(store, SqliteRegistryStore) else None
        return set() if writer is None else {writer}

    @property
    def metrics_url(self) -> str:
        """Where the metrics are served (empty without a metrics endpoint)."""
        return "" if self.endpoint is None else self.endpoint.url

    async def start(self) -> str:
        """Serve metrics, then the scheduler; the address it listens on. Raises OSError, saying which address
        could not be bound (the caller still calls :meth:`stop`)."""
        if self._tune_gc:  # the registry holds many long-lived objects
            tune_for_long_lived_objects()
        if self.endpoint is not None:
            try:
                self.endpoint.start()
            except OSError as error:
                raise OSError(
                    error.errno, f"cannot serve metrics on {self.endpoint.listen}: {error}"
                ) from error
        address = await self.server.start()
        if self.watch is not None:
            self.watch.start()
        return address

    async def stop(self) -> None:
        """Stop what runs, close the store if the host opened it. Idempotent."""
        if self.watch is not None:
            await self.watch.stop()
        await self.server.stop()
        if self.endpoint is not None:
            self.endpoint.stop()
        store, self._owned_store = self._owned_store, None
        if store is not None:
            await store.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def build_control_plane(
    provider: WorkerProvider,
    *,
    scheduler: str | Sequence[str] | SchedulerPortClient,
    registration: RegistrationConfig | None = None,
    management: WorkerManagementConfig | None = None,
    metrics: ControlPlaneMetrics | None = None,
    credential: Credential | None = None,
    tls: ClientTlsConfig | None = None,
) -> WorkerManagementService:
    """A management service that provisions through ``provider`` and registers with ``scheduler``: a client,
    or the address of a scheduler, or of several replicas (``"HOST:PORT,HOST:PORT"`` or a sequence), which
    the client fails over between; given addresses, the client presents ``credential`` (an operator token) and
    speaks TLS with ``tls``.

    Use it as ``async with build_control_plane(...) as service:`` (or ``await service.aclose()``): given
    addresses, the service owns the client it makes and closes it; a client given stays the caller's to close,
    as does ``provider``. ``metrics`` receives the adapter's and the service's metrics (default: a private
    registry's).
    """
    if isinstance(scheduler, SchedulerPortClient):
        port, owns_port = scheduler, False
    else:
        port, owns_port = SchedulerPortClient(scheduler, credential=credential, tls=tls), True
    metrics = metrics or ControlPlaneMetrics()
    adapter = WorkerRegistrationAdapter(port, registration, metrics=metrics)
    return WorkerManagementService(
        provider, registration=adapter, config=management, metrics=metrics, owns_port=owns_port
    )


def build_pool_autoscaler(
    service: WorkerManagementService,
    *,
    pools: PoolPort | None = None,
    pools_file: str | Path | None = None,
    config: PoolAutoscalerConfig | None = None,
) -> PoolAutoscaler:
    """The autoscaler of the pools the scheduler knows, provisioning and retiring through ``service`` (from
    :func:`build_control_plane`). It reads the pools from ``pools`` (default: the service's scheduler client)
    and, given ``pools_file``, applies that file at its first tick and again whenever it changes."""
    if pools is None:
        port = service.registration.port if service.registration is not None else None
        if not isinstance(port, SchedulerPortClient):
            raise ValueError("give the scheduler's pools (a PoolPort): the service has no scheduler client")
        pools = port
    config = config or PoolAutoscalerConfig()
    synced = (
        PoolsFile(pools_file, pools, call_timeout=config.call_timeout) if pools_file is not None else None
    )
    return PoolAutoscaler(service, pools, config=config, pools_file=synced)
