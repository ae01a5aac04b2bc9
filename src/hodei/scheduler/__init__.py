"""The scheduler side: the worker registry and the gRPC server around it."""

from hodei.scheduler.registry import WorkerRegistry
from hodei.scheduler.server import SchedulerServer

__all__ = ["SchedulerServer", "WorkerRegistry"]
