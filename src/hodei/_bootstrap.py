"""The composition root: builds the scheduler and the control plane from their parts.

Every adapter comes in as a parameter; nothing here runs at import time. The CLI and the demo call these
functions, so that the object graph is wired in one place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hodei.lifecycle import LivenessConfig
from hodei.management._config import WorkerManagementConfig
from hodei.management._service import WorkerManagementService
from hodei.observability._metrics import ControlPlaneMetrics, SchedulerMetrics
from hodei.ports import EventRelay, Leadership, RegistryStore, WorkerProvider
from hodei.registration._adapter import WorkerRegistrationAdapter
from hodei.registration._config import RegistrationConfig
from hodei.scheduler._core import Scheduler
from hodei.security._config import SchedulerSecurity
from hodei.security._tls import ClientTlsConfig
from hodei.server._admission import DEFAULT_MAX_HELLOS_IN_FLIGHT, AdmissionControl, HelloAdmission
from hodei.server._limits import ServerLimits
from hodei.server._server import SchedulerServer
from hodei.stores._memory import MemoryRegistryStore
from hodei.transport._client import Credential, SchedulerPortClient

__all__ = ["OpenedStore", "build_control_plane", "build_scheduler", "default_store_url", "open_store"]


def default_store_url() -> str:
    """The embedded default: a SQLite file in the user's state directory (``$XDG_STATE_HOME/hodei``)."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return f"sqlite:///{(state / 'hodei' / 'registry.db').absolute()}"


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


def build_scheduler(
    *,
    listen: str = "127.0.0.1:50051",
    store: RegistryStore | None = None,
    leadership: Leadership | None = None,
    liveness: LivenessConfig | None = None,
    max_in_flight: int = 1000,
    max_hellos_in_flight: int = DEFAULT_MAX_HELLOS_IN_FLIGHT,
    metrics: SchedulerMetrics | None = None,
    security: SchedulerSecurity | None = None,
    limits: ServerLimits | None = None,
    relay: EventRelay | None = None,
) -> SchedulerServer:
    """A scheduler server over a registry on ``store`` (memory by default), not yet started.

    ``leadership`` elects the replica that expires leases when several share the store (default: this one).
    ``max_in_flight`` registrations and ``max_hellos_in_flight`` agents' hellos are worked on at once (beyond,
    ``RESOURCE_EXHAUSTED`` with an advised retry delay).
    ``metrics`` receives every metric of the scheduler, admission control's included (default: a private
    registry's); serve its registry with :class:`hodei.observability._http.MetricsEndpoint`. ``security``
    requires tokens and serves TLS (default: neither, for local use); ``limits`` bound what one caller takes.
    ``relay`` joins the replicas sharing ``store``: drains and shutdowns reach agents on any of them, and
    watchers see every replica's events.
    """
    metrics = metrics or SchedulerMetrics()
    return SchedulerServer(
        Scheduler(
            store or MemoryRegistryStore(),
            liveness=liveness,
            leadership=leadership,
            metrics=metrics,
            relay=relay,
        ),
        listen=listen,
        admission_control=AdmissionControl(max_in_flight=max_in_flight, metrics=metrics),
        hello_admission=HelloAdmission(max_in_flight=max_hellos_in_flight, metrics=metrics),
        security=security,
        limits=limits,
    )


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

    Close it with ``await service.registration.port.close()`` (the CLI does). ``metrics`` receives the
    adapter's and the service's metrics (default: a private registry's).
    """
    if isinstance(scheduler, SchedulerPortClient):
        port = scheduler
    else:
        port = SchedulerPortClient(scheduler, credential=credential, tls=tls)
    metrics = metrics or ControlPlaneMetrics()
    adapter = WorkerRegistrationAdapter(port, registration, metrics=metrics)
    return WorkerManagementService(provider, registration=adapter, config=management, metrics=metrics)
