"""The composition root: builds the scheduler and the control plane from their parts.

Every adapter comes in as a parameter; nothing here runs at import time. The CLI and the demo call these
functions, so that the object graph is wired in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from hodei.lifecycle import LivenessConfig
from hodei.management.config import WorkerManagementConfig
from hodei.management.service import WorkerManagementService
from hodei.ports import RegistryStore, WorkerProvider
from hodei.registration.adapter import WorkerRegistrationAdapter
from hodei.registration.config import RegistrationConfig
from hodei.scheduler.admission import AdmissionControl
from hodei.scheduler.core import Scheduler
from hodei.scheduler.server import SchedulerServer
from hodei.stores.memory import MemoryRegistryStore
from hodei.transport.client import SchedulerPortClient

__all__ = ["build_control_plane", "build_scheduler"]


def build_scheduler(
    *,
    listen: str = "127.0.0.1:50051",
    store: RegistryStore | None = None,
    liveness: LivenessConfig | None = None,
    max_in_flight: int = 1000,
) -> SchedulerServer:
    """A scheduler server over a registry on ``store`` (memory by default), not yet started."""
    return SchedulerServer(
        Scheduler(store or MemoryRegistryStore(), liveness=liveness),
        listen=listen,
        admission_control=AdmissionControl(max_in_flight=max_in_flight),
    )


def build_control_plane(
    provider: WorkerProvider,
    *,
    scheduler: str | Sequence[str] | SchedulerPortClient,
    registration: RegistrationConfig | None = None,
    management: WorkerManagementConfig | None = None,
) -> WorkerManagementService:
    """A management service that provisions through ``provider`` and registers with ``scheduler``: a client,
    or the address of a scheduler, or of several replicas (``"HOST:PORT,HOST:PORT"`` or a sequence), which
    the client fails over between.

    Close it with ``await service.registration.port.close()`` (the CLI does).
    """
    port = scheduler if isinstance(scheduler, SchedulerPortClient) else SchedulerPortClient(scheduler)
    adapter = WorkerRegistrationAdapter(port, registration)
    return WorkerManagementService(provider, registration=adapter, config=management)
