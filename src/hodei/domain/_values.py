"""The domain's plain values: worker types and statuses, capabilities, usage, a field violation, the clock."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "WORKER_TYPE_VALUES",
    "FieldViolation",
    "ResourceUsage",
    "WorkerCapabilities",
    "WorkerStatus",
    "WorkerType",
    "utcnow",
]


class WorkerType(enum.StrEnum):
    """How a worker is run."""

    DOCKER = "docker"
    PROCESS = "process"
    KUBERNETES = "kubernetes"
    STATIC = "static"
    MOCK = "mock"


class WorkerStatus(enum.StrEnum):
    """Lifecycle: PROVISIONING → REGISTERED → AVAILABLE ⇄ BUSY → DRAINING → UNREGISTERED → TERMINATED.

    ``REGISTERED`` is the control plane's view once the scheduler acknowledged the worker; ``AVAILABLE`` is the
    scheduler's. ``LOST`` means heartbeats stopped; ``FAILED`` that provisioning or registration failed.
    """

    PROVISIONING = "provisioning"
    REGISTERED = "registered"
    AVAILABLE = "available"
    BUSY = "busy"
    DRAINING = "draining"
    LOST = "lost"
    UNREGISTERED = "unregistered"
    TERMINATED = "terminated"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field, named by its path in the wire contract (``capabilities.cpu_cores``)."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


def utcnow() -> datetime:
    """The wall clock every default clock of hodei reads (tests inject their own)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What an agent reports with each heartbeat."""

    cpu_percent: float = 0.0
    memory_used_mb: int = 0
    running_jobs: int = 0


@dataclass(frozen=True, slots=True)
class WorkerCapabilities:
    """What a worker can run."""

    cpu_cores: int
    memory_mb: int
    disk_mb: int = 0
    gpu_count: int = 0


WORKER_TYPE_VALUES = frozenset(t.value for t in WorkerType)
