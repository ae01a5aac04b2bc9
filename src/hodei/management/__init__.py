"""The control plane: provisioning, registration and decommissioning of workers, and the pools' autoscaler."""

from hodei.management._config import WorkerManagementConfig
from hodei.management._pool_census import PoolTick
from hodei.management._pools import PoolAutoscaler, PoolAutoscalerConfig
from hodei.management._pools_file import PoolsFile
from hodei.management._reconciler import Reconciler, ReconcilerConfig, ReconcileReport
from hodei.management._service import DecommissionResult, ProvisionResult, WorkerManagementService
from hodei.management._static import StaticWorkerFileError, load_static_workers, static_worker

__all__ = [
    "DecommissionResult",
    "PoolAutoscaler",
    "PoolAutoscalerConfig",
    "PoolTick",
    "PoolsFile",
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
