"""hodei: workers that register themselves with a CI/CD scheduler, and a registry that stays true.

The public API, re-exported from the modules that define it::

    from hodei import (DynamicWorker, DynamicWorkerConfig, WorkerType, WorkerStatus, RegistrationConfig,
                       WorkerRegistrationAdapter, RegistrationError, MaxRetriesExceeded, SchedulerPortClient,
                       WorkerManagementService, WorkerManagementConfig)
"""

from hodei.domain import (
    DynamicWorker,
    DynamicWorkerConfig,
    FieldViolation,
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
    MaxRetriesExceeded,
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
    StoreUnavailable,
    WorkerAlreadyExists,
    WorkerNotFound,
)
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
    RegistrationReceipt,
    RegistryStore,
    SchedulerPort,
    UnregistrationStatus,
    WorkerFilter,
    WorkerPage,
    WorkerProvider,
)
from hodei.registration import BatchRegistrationResult, RegistrationConfig, WorkerRegistrationAdapter
from hodei.transport import SchedulerPortClient

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "BatchRegistrationResult",
    "DecommissionResult",
    "DynamicWorker",
    "DynamicWorkerConfig",
    "ErrorCode",
    "FieldViolation",
    "HodeiError",
    "InvalidWorkerData",
    "MaxRetriesExceeded",
    "ProviderError",
    "ProvisionResult",
    "ProvisioningError",
    "RegistrationCancelled",
    "RegistrationConfig",
    "RegistrationError",
    "RegistrationFailed",
    "RegistrationReceipt",
    "RegistryStore",
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
    "StoreUnavailable",
    "UnregistrationStatus",
    "WorkerAlreadyExists",
    "WorkerCapabilities",
    "WorkerFilter",
    "WorkerManagementConfig",
    "WorkerManagementService",
    "WorkerNotFound",
    "WorkerPage",
    "WorkerProvider",
    "WorkerRecord",
    "WorkerRegistrationAdapter",
    "WorkerStatus",
    "WorkerType",
    "__version__",
    "load_static_workers",
    "static_worker",
]
