"""The control plane: provisioning, registration and decommissioning of workers."""

from hodei.management._config import WorkerManagementConfig
from hodei.management._reconciler import Reconciler, ReconcilerConfig, ReconcileReport
from hodei.management._service import DecommissionResult, ProvisionResult, WorkerManagementService
from hodei.management._static import StaticWorkerFileError, load_static_workers, static_worker

__all__ = [
    "DecommissionResult",
    "ProvisionResult",
    "ReconcileReport",
    "Reconciler",
    "ReconcilerConfig",
    "StaticWorkerFileError",
    "WorkerManagementConfig",
    "WorkerManagementService",
    "load_static_workers",
    "static_worker",
]
