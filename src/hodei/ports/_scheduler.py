"""The scheduler as the control plane sees it (:class:`SchedulerPort`, with what its calls take and answer), and
how workers are created and destroyed (:class:`WorkerProvider`)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from hodei.domain import (
    DynamicWorker,
    DynamicWorkerConfig,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
)
from hodei.errors import SchedulerError

__all__ = [
    "DrainOutcome",
    "RegistrationReceipt",
    "SchedulerPort",
    "UnregistrationStatus",
    "WorkerFilter",
    "WorkerPage",
    "WorkerProvider",
]


class RegistrationReceipt:
    """The scheduler's acknowledgement of one registration: the record as registered, and whether it is new.

    ``record`` may be given as a function that makes it: a client decodes it only if somebody looks, which
    spares a batch of 10,000 the decoding of 10,000 records nobody reads. ``credential`` is the worker
    credential a scheduler with auth on hands a worker that registered itself (empty otherwise); it is a
    secret, so it is never shown by ``repr``.
    """

    __slots__ = ("_make", "_record", "created", "credential")

    def __init__(
        self, record: WorkerRecord | Callable[[], WorkerRecord], created: bool, *, credential: str = ""
    ) -> None:
        self._record: WorkerRecord | None = None if callable(record) else record
        self._make = record if callable(record) else None
        self.created = created
        self.credential = credential

    @property
    def record(self) -> WorkerRecord:
        if self._record is None:
            assert self._make is not None
            self._record, self._make = self._make(), None
        return self._record

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegistrationReceipt):
            return NotImplemented
        return (self.record, self.created) == (other.record, other.created)

    def __hash__(self) -> int:
        return hash((self.record, self.created))

    def __repr__(self) -> str:
        return f"RegistrationReceipt(record={self.record!r}, created={self.created!r})"


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    """The worker after a drain request, and whether the request reached a connected agent."""

    record: WorkerRecord
    delivered: bool


class UnregistrationStatus(enum.Enum):
    SUCCESS = "success"
    NOT_REGISTERED = "not_registered"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerFilter:
    """Which workers to list; an empty field does not filter."""

    statuses: frozenset[WorkerStatus] = frozenset()
    worker_type: WorkerType | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, record: WorkerRecord) -> bool:
        if self.statuses and record.status not in self.statuses:
            return False
        if self.worker_type is not None and record.worker_type is not self.worker_type:
            return False
        return all(record.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class WorkerPage:
    workers: Sequence[WorkerRecord]
    next_page_token: str = ""


@runtime_checkable
class SchedulerPort(Protocol):
    """The scheduler as the control plane sees it. Every method raises :class:`SchedulerError` kinds.

    ``timeout`` is the deadline of one call, in seconds (``None``: no deadline).
    """

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt: ...

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        """One entry per worker, in input order: its receipt, or the error that refused it."""
        ...

    async def unregister_worker(
        self,
        worker_id: str,
        *,
        reason: str = "",
        incarnation: int | None = None,
        timeout: float | None = None,
    ) -> UnregistrationStatus:
        """Remove the worker; ``reason`` goes with the UNREGISTERED event. With ``incarnation``, only if the
        registered incarnation is not newer (else :class:`~hodei.errors.StaleIncarnation`): an agent's farewell
        never removes its successor's registration."""
        ...

    async def get_worker(self, worker_id: str, *, timeout: float | None = None) -> WorkerRecord | None: ...

    async def list_workers(
        self,
        worker_filter: WorkerFilter | None = None,
        *,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> WorkerPage: ...

    async def drain_worker(
        self,
        worker_id: str,
        *,
        deadline: float = 0.0,
        reason: str = "",
        only_if_available: bool = False,
        timeout: float | None = None,
    ) -> DrainOutcome:
        """Mark the worker DRAINING and tell its agent; with ``only_if_available``, only a worker AVAILABLE and
        bound to no job, in the same write (else :class:`~hodei.errors.WorkerNotIdle`, nothing changed)."""
        ...

    async def report_orphan_removed(
        self, worker_id: str, *, reason: str = "", timeout: float | None = None
    ) -> None:
        """Announce (an ORPHAN_REMOVED event) that a machine of ``worker_id`` with no registration was destroyed."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class WorkerProvider(Protocol):
    """Creates and destroys the machines, containers or processes that workers run on.

    Raises :class:`hodei.errors.ProviderError`. ``destroy`` of an unknown worker is not an error.
    """

    async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker: ...

    async def status(self, worker_id: str) -> WorkerStatus | None: ...

    async def stop(self, worker_id: str, *, grace: float = 10.0) -> None: ...

    async def destroy(self, worker_id: str) -> None: ...

    async def list_workers(self) -> list[DynamicWorker]: ...
