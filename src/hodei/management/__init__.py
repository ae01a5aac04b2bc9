"""The control plane: provisioning, registration and decommissioning of workers."""

from hodei.management.config import WorkerManagementConfig
from hodei.management.reconciler import Reconciler, ReconcilerConfig, ReconcileReport
from hodei.management.service import DecommissionResult, ProvisionResult, WorkerManagementService
from hodei.management.static import StaticWorkerFileError, load_static_workers, static_worker

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
