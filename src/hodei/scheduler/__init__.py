"""The scheduler's core: the worker registry, the agents' sessions, liveness and events — no gRPC below here.

The gRPC face that serves it is :mod:`hodei.server`.
"""

from hodei.scheduler._core import Scheduler
from hodei.scheduler._registry import WorkerRegistry

__all__ = ["Scheduler", "WorkerRegistry"]
