"""The ports: the smallest contracts the core needs from the outside world.

- :class:`SchedulerPort` — how the control plane talks to the scheduler (``SchedulerPortClient`` over gRPC);
- :class:`WorkerProvider` — how workers are created and destroyed (process, Docker, ``MockWorkerProvider``);
- :class:`RegistryStore` — where the scheduler's registry keeps its records (memory; SQLite and PostgreSQL);
- :class:`EventRelay` — how scheduler replicas on one store pass each other events and agents' commands;
- :class:`PoolPort` — the scheduler's resource pools: acquiring a worker for a job, demand, pool definitions;
- :class:`BoundJobs` and :class:`PoolDefinitions` — what a registry store keeps of them.

They are :class:`typing.Protocol` s: fakes and third-party adapters satisfy them without inheriting.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from hodei.domain import (
    Assignment,
    DynamicWorker,
    DynamicWorkerConfig,
    Job,
    JobOutcome,
    JobResult,
    UpsertOutcome,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
)
from hodei.errors import SchedulerError
from hodei.lifecycle import WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.pools import PoolStatus, Requirements, ScaleEvent, WaitingDemand

__all__ = [
    "Acquired",
    "AssignmentView",
    "BoundJobs",
    "DrainOutcome",
    "EventRelay",
    "Leadership",
    "PoolDefinitions",
    "PoolPort",
    "RegistrationReceipt",
    "RegistryStore",
    "Relayed",
    "RelayedAck",
    "RelayedCommand",
    "RelayedEvent",
    "SchedulerPort",
    "SharedLeases",
    "SpentTokens",
    "TouchedLeases",
    "UnregistrationStatus",
    "UpsertOutcome",
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


@dataclass(frozen=True, slots=True)
class Acquired:
    """A worker bound to a job: the assignment, the worker as bound (BUSY), and whether this call bound it
    (False: a retry found the job's assignment already made)."""

    assignment: Assignment
    record: WorkerRecord
    created: bool = True


@dataclass(frozen=True, slots=True)
class AssignmentView:
    """An assignment as the scheduler knows it now: ``result`` is None while it holds, how it ended after."""

    assignment: Assignment
    result: JobResult | None = None
    record: WorkerRecord | None = None  # the worker now (after a release), if the scheduler said

    @property
    def ended(self) -> bool:
        return self.result is not None


class PoolPort(Protocol):
    """The scheduler's resource pools, as job runners and the control plane's autoscaler see them
    (``SchedulerPortClient`` over gRPC). Every method raises :class:`SchedulerError` kinds."""

    async def acquire_worker(
        self,
        job_id: str,
        requirements: Requirements,
        *,
        job: Job | None = None,
        priority: int = 0,
        wait: float = 0.0,
        lease_ttl: float = 0.0,
        timeout: float | None = None,
    ) -> Acquired:
        """Bind a worker that fits to ``job_id``, waiting up to ``wait`` seconds for one
        (:class:`~hodei.errors.SchedulerTimeout` after that, nothing bound). Idempotent by ``job_id``.
        ``lease_ttl`` 0: the scheduler's default. ``timeout`` defaults to ``wait`` plus a margin."""
        ...

    async def renew_assignment(
        self, assignment_id: str, *, wait: float = 0.0, timeout: float | None = None
    ) -> AssignmentView:
        """Keep the assignment for another lease; with ``wait``, answer early when it ends."""
        ...

    async def release_worker(
        self,
        assignment_id: str,
        *,
        outcome: JobOutcome = JobOutcome.SUCCEEDED,
        recycle: bool = False,
        reason: str = "",
        timeout: float | None = None,
    ) -> AssignmentView:
        """End the assignment: the worker is AVAILABLE again, or recycled (drained, to be replaced)."""
        ...

    async def get_demand(self, *, timeout: float | None = None) -> list[WaitingDemand]: ...

    async def apply_pools(self, source: str, text: str, *, timeout: float | None = None) -> list[PoolStatus]:
        """Replace the pool definitions with those of a pools file's text (``source`` names it in errors)."""
        ...

    async def list_pools(self, *, timeout: float | None = None) -> list[PoolStatus]: ...

    async def report_scale_event(self, event: ScaleEvent, *, timeout: float | None = None) -> None:
        """Tell the scheduler (its watchers, and ``list_pools``) what the autoscaler did to a pool."""
        ...

    def watch_workers(
        self, *, include_snapshot: bool = False, kinds: Collection[WorkerEventKind] | None = None
    ) -> AsyncIterator[WorkerEvent]:
        """The scheduler's lifecycle events as they happen (of ``kinds`` only, if given), among them a DEMAND
        event each time what waits changes (the autoscaler wakes on them rather than wait for its next tick)."""
        ...


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


@runtime_checkable
class RegistryStore(Protocol):
    """Where the registry's records live. Every write is atomic and durable before it returns.

    ``upsert`` applies :func:`hodei.domain.merge_registration` to each record against the stored one, in one
    transaction, and writes what it returns (nothing for ``STALE`` and ``KEPT``). ``modify`` is an atomic
    read-modify-write of one record: ``change`` (a pure function, which a store may call again when it lost a
    race) gets the stored record and returns the one to write, or ``None`` to leave it. ``delete`` removes a
    record, only when ``only_if`` (if given) holds for the stored one. Live fields (``connected``, ``usage``,
    ``last_heartbeat_at``) are not stored.
    """

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        """Write each record; return, per record in order, what happened and the record now stored."""
        ...

    async def modify(
        self, worker_id: str, change: Callable[[WorkerRecord], WorkerRecord | None]
    ) -> tuple[WorkerRecord, WorkerRecord] | None:
        """Apply ``change`` to the stored record atomically; ``(before, after)``, or ``None`` if not found."""
        ...

    async def modify_many(
        self, changes: Sequence[tuple[str, Callable[[WorkerRecord], WorkerRecord | None]]]
    ) -> list[tuple[WorkerRecord, WorkerRecord] | None]:
        """``modify`` of each ``(worker_id, change)`` in order, in one transaction (one commit); each result as
        ``modify``'s."""
        ...

    async def get(self, worker_id: str) -> WorkerRecord | None: ...

    async def delete(
        self, worker_id: str, *, only_if: Callable[[WorkerRecord], bool] | None = None
    ) -> bool: ...

    async def list(
        self, worker_filter: WorkerFilter, *, after: str = "", limit: int = 100
    ) -> list[WorkerRecord]:
        """Records matching the filter with ``worker_id > after``, ordered by ``worker_id``."""
        ...

    async def count(self) -> int: ...

    async def count_by_status(self) -> dict[WorkerStatus, int]:
        """How many records have each status (statuses nobody has may be left out)."""
        ...

    async def count_by_pool(self) -> dict[str, dict[WorkerStatus, int]]:
        """How many records each pool has in each status (counted by the store; pools and statuses nobody
        has may be left out)."""
        ...

    async def any_fitting(self, requirements: Requirements, *, with_lease: bool = False) -> bool:
        """Whether any record, in any status, fits ``requirements`` (with a lease: one an agent keeps, if
        ``with_lease``). Looked for by the store itself, never by reading every record into the caller."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class BoundJobs(Protocol):
    """A store's index of the jobs its workers are bound to (a record's ``assignment``): at most one worker per
    job id, in every store. Writing a record bound to a job another record holds raises
    :class:`~hodei.errors.JobAlreadyBound` and writes nothing (an ``upsert``: nothing of its whole call). What a
    write leaves stored is judged: a job moved from one record to another within one ``upsert`` is no conflict."""

    async def find_job(self, job_id: str) -> WorkerRecord | None:
        """The record bound to ``job_id``, or None."""
        ...

    async def bound(self) -> list[WorkerRecord]:
        """Every record bound to a job, ordered by worker id."""
        ...

    async def find_assignment(self, assignment_id: str) -> WorkerRecord | None:
        """The record whose assignment is ``assignment_id``, or None. Looked for by the store itself (its own
        thread or server), never by reading every bound record into the caller."""
        ...


@runtime_checkable
class PoolDefinitions(Protocol):
    """A store keeps the pool definitions the scheduler was last given (the pools file's text), so that a
    restart, and every replica, starts from them."""

    async def save_pools(self, source: str, text: str) -> None: ...

    async def load_pools(self) -> tuple[str, str] | None:
        """``(source, text)`` as last saved, or None."""
        ...


@dataclass(frozen=True, slots=True)
class TouchedLeases:
    """What a lease sync found of the workers it touched: those stored ``LOST``, and those no longer stored."""

    lost: Sequence[str] = ()
    gone: Sequence[str] = ()


@runtime_checkable
class SharedLeases(Protocol):
    """A store that several scheduler replicas share also shares the agents' leases.

    Each replica records when it last heard the agents connected to it (``touch``); the replica that runs
    expiry reads how long ago each leased worker was last heard of, by any replica (``lease_ages``).
    """

    async def touch(
        self, worker_ids: Sequence[str], *, stream_at: str = "", left: Sequence[str] = ()
    ) -> TouchedLeases:
        """Record that these workers were heard from now (by the replica ``stream_at``, if named: it holds their
        streams), and that the streams of ``left`` closed there (after they were heard: a worker in both is no
        longer connected there); say which of ``worker_ids`` are stored
        ``LOST``, and which are not stored at all (deleted under their agent's open stream, by another
        replica). Reads (``get``, ``list``) show where a worker's stream is as ``connected_via``."""
        ...

    async def lease_ages(self) -> list[tuple[str, float, float]]:
        """``(worker_id, lease_ttl, seconds since last heard)`` for every leased worker that is not LOST."""
        ...


@runtime_checkable
class SpentTokens(Protocol):
    """A durable store also remembers the single-use join tokens that were spent, so that a token used once is
    refused by every replica sharing the store, and after a restart, until it expires."""

    async def spend(self, token_id: str, expires_at: datetime, worker_id: str, incarnation: int) -> bool:
        """Record ``token_id`` as spent by ``worker_id``'s ``incarnation``; False when another registration
        (another worker, or another incarnation) spent it already. Spending it again for the same one is True:
        a write retried after an ambiguous commit, or a registration retried after its answer was lost, is not
        a replay. Ids past ``expires_at`` may be forgotten (their tokens are refused as expired anyway)."""
        ...


class Leadership(Protocol):
    """Who runs lease expiry and garbage collection: one replica at a time."""

    async def acquire(self) -> bool:
        """Try to be (or stay) the leader; True while this replica leads. Never blocks for long."""
        ...

    async def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """A lifecycle event published on another replica. Only ids, kinds and a short reason travel (no record):
    a watcher that wants the worker as it is now asks for it."""

    kind: WorkerEventKind
    worker_id: str
    reason: str
    time: datetime


@dataclass(frozen=True, slots=True)
class RelayedCommand:
    """A command for the agent of ``worker_id``, wherever its stream is. The replica that holds the stream
    delivers it and answers ``request`` with a :class:`RelayedAck`; only a stream of ``incarnation`` or older
    is told (None: any); ``close`` ends the stream after the command (the worker was unregistered)."""

    worker_id: str
    command: WorkerCommand
    request: str
    incarnation: int | None = None
    close: bool = False


@dataclass(frozen=True, slots=True)
class RelayedAck:
    """The stream of a :class:`RelayedCommand`'s worker was here, and the command went down it."""

    request: str


Relayed = RelayedEvent | RelayedCommand | RelayedAck


class EventRelay(Protocol):
    """Scheduler replicas sharing one store pass each other what one of them must hear from another.

    Best effort and at most once: a message published while the relay is cut off may be lost (the store stays
    the truth; a lease sync finds what a lost message would have said). Messages from one replica arrive
    everywhere in the order it published them; a replica never hears its own.
    """

    async def start(self, receive: Callable[[Relayed], None]) -> None:
        """Listen: ``receive`` (quick, never raising) is called with every other replica's messages in order.
        Returns once listening."""
        ...

    def publish(self, message: Relayed) -> None:
        """Send ``message`` to every other replica (queued, never blocking: a full queue drops the oldest)."""
        ...

    async def close(self) -> None: ...
