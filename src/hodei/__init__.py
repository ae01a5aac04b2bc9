"""hodei: workers that register themselves with a CI/CD scheduler, and a registry that stays true.

The public API, re-exported from the modules that define it::

    from hodei import (DynamicWorker, DynamicWorkerConfig, WorkerType, WorkerStatus, RegistrationConfig,
                       WorkerRegistrationAdapter, RegistrationError, MaxRetriesExceeded, SchedulerPortClient,
                       WorkerManagementService, WorkerManagementConfig)

Each sub-package has a face of its own for the rest (``hodei.scheduler``, ``hodei.server``, ``hodei.agent``,
``hodei.stores``, ``hodei.providers``, ``hodei.security``, ``hodei.observability``, ``hodei.testing``, …); the
modules with a leading underscore are not an API.
"""

from typing import TYPE_CHECKING

from hodei._lazy import lazy_names
from hodei.domain import (
    Assignment,
    DynamicWorker,
    DynamicWorkerConfig,
    FieldViolation,
    Job,
    JobOutcome,
    JobResult,
    ResourceUsage,
    UpsertOutcome,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
)
from hodei.errors import (
    AccessDenied,
    ErrorCode,
    HodeiError,
    InvalidWorkerData,
    JobAlreadyBound,
    MaxRetriesExceeded,
    NoWorkerFits,
    ProviderError,
    ProvisioningError,
    RegistrationCancelled,
    RegistrationError,
    RegistrationFailed,
    SchedulerConflict,
    SchedulerError,
    SchedulerInternalError,
    SchedulerOverloaded,
    SchedulerTimeout,
    SchedulerUnavailable,
    StaleIncarnation,
    StoreError,
    StoreRefusedData,
    StoreUnavailable,
    WorkerAlreadyExists,
    WorkerNotFound,
    WorkerNotIdle,
)

if TYPE_CHECKING:
    from hodei._bootstrap import OpenedStore, build_control_plane, build_scheduler, open_store
    from hodei.lifecycle import WorkerEvent, WorkerEventKind
    from hodei.management import (
        DecommissionResult,
        ProvisionResult,
        StaticWorkerFileError,
        WorkerManagementConfig,
        WorkerManagementService,
        load_static_workers,
        static_worker,
    )
    from hodei.ports import (
        Acquired,
        AssignmentView,
        DrainOutcome,
        PoolPort,
        RegistrationReceipt,
        RegistryStore,
        SchedulerPort,
        UnregistrationStatus,
        WorkerFilter,
        WorkerPage,
        WorkerProvider,
    )
    from hodei.registration import (
        BatchRegistrationResult,
        DrainResult,
        RegistrationConfig,
        WorkerRegistrationAdapter,
    )
    from hodei.transport import SchedulerPortClient

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Acquired",
    "Assignment",
    "AssignmentView",
    "BatchRegistrationResult",
    "DecommissionResult",
    "DrainOutcome",
    "DrainResult",
    "DynamicWorker",
    "DynamicWorkerConfig",
    "ErrorCode",
    "FieldViolation",
    "HodeiError",
    "InvalidWorkerData",
    "Job",
    "JobAlreadyBound",
    "JobOutcome",
    "JobResult",
    "MaxRetriesExceeded",
    "NoWorkerFits",
    "OpenedStore",
    "PoolPort",
    "ProviderError",
    "ProvisionResult",
    "ProvisioningError",
    "RegistrationCancelled",
    "RegistrationConfig",
    "RegistrationError",
    "RegistrationFailed",
    "RegistrationReceipt",
    "RegistryStore",
    "ResourceUsage",
    "SchedulerConflict",
    "SchedulerError",
    "SchedulerInternalError",
    "SchedulerOverloaded",
    "SchedulerPort",
    "SchedulerPortClient",
    "SchedulerTimeout",
    "SchedulerUnavailable",
    "StaleIncarnation",
    "StaticWorkerFileError",
    "StoreError",
    "StoreRefusedData",
    "StoreUnavailable",
    "UnregistrationStatus",
    "UpsertOutcome",
    "WorkerAlreadyExists",
    "WorkerCapabilities",
    "WorkerEvent",
    "WorkerEventKind",
    "WorkerFilter",
    "WorkerManagementConfig",
    "WorkerManagementService",
    "WorkerNotFound",
    "WorkerNotIdle",
    "WorkerPage",
    "WorkerProvider",
    "WorkerRecord",
    "WorkerRegistrationAdapter",
    "WorkerStatus",
    "WorkerType",
    "__version__",
    "build_control_plane",
    "build_scheduler",
    "load_static_workers",
    "open_store",
    "static_worker",
]

# What the control plane and the port client need (the registration adapter, the gRPC channel, the management
# service, the ports) and the composition root are imported on first use: ``import hodei`` (and so every ``hodei``
# command, agent and scheduler process) loads only the vocabulary — the domain and its errors — until asked for more.
_LAZY = {
    "WorkerEvent": "hodei.lifecycle",
    "WorkerEventKind": "hodei.lifecycle",
    "DecommissionResult": "hodei.management",
    "ProvisionResult": "hodei.management",
    "StaticWorkerFileError": "hodei.management",
    "WorkerManagementConfig": "hodei.management",
    "WorkerManagementService": "hodei.management",
    "load_static_workers": "hodei.management",
    "static_worker": "hodei.management",
    "Acquired": "hodei.ports",
    "AssignmentView": "hodei.ports",
    "DrainOutcome": "hodei.ports",
    "PoolPort": "hodei.ports",
    "RegistrationReceipt": "hodei.ports",
    "RegistryStore": "hodei.ports",
    "SchedulerPort": "hodei.ports",
    "UnregistrationStatus": "hodei.ports",
    "WorkerFilter": "hodei.ports",
    "WorkerPage": "hodei.ports",
    "WorkerProvider": "hodei.ports",
    "BatchRegistrationResult": "hodei.registration",
    "DrainResult": "hodei.registration",
    "RegistrationConfig": "hodei.registration",
    "WorkerRegistrationAdapter": "hodei.registration",
    "SchedulerPortClient": "hodei.transport",
    "OpenedStore": "hodei._bootstrap",
    "build_control_plane": "hodei._bootstrap",
    "build_scheduler": "hodei._bootstrap",
    "open_store": "hodei._bootstrap",
}
__getattr__ = lazy_names(__name__, _LAZY)
