"""The scheduler's worker registry: the authority on which workers exist and in what state.

It validates every registration (the same rules the client applies before sending), keeps registration an
idempotent upsert fenced by incarnation (:func:`hodei.domain.merge_registration`), pages through its records
in worker-id order, and publishes an event for every change it makes. How a registered worker's record moves
afterwards (drained, lost, bound to a job and released) is :mod:`hodei.scheduler._moves`.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from hodei._quoting import quote_short
from hodei.domain import (
    WORKER_TYPE_VALUES,
    DynamicWorker,
    FieldViolation,
    UpsertOutcome,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
    holds_control_characters,
    record_of,
    utcnow,
    wire_size,
)
from hodei.errors import InvalidWorkerData, SchedulerError, StaleIncarnation
from hodei.lifecycle import WorkerEventKind
from hodei.observability._metrics import SCHEDULER_REGISTRATION_RESULTS, UNKNOWN_WORKER_TYPE, SchedulerMetrics
from hodei.ports import RegistrationReceipt, RegistryStore, UnregistrationStatus, WorkerFilter, WorkerPage
from hodei.scheduler._events import EventHub
from hodei.scheduler._moves import WorkerMoves
from hodei.scheduler._paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_BYTES,
    MAX_PAGE_SIZE,
    decode_page_token,
    encode_page_token,
)

__all__ = [
    "MAX_BATCH_SIZE",
    "RegistrationVeto",
    "WorkerRegistry",
]

MAX_BATCH_SIZE = 1000


RegistrationVeto = Callable[[WorkerRecord], SchedulerError | None]
"""Asked before each registration is written; an error refuses that worker (and only that one)."""

# A registration's event: a new worker, or one refreshed (a kept one is no news).
_ANNOUNCED = {
    UpsertOutcome.CREATED: WorkerEventKind.REGISTERED,
    UpsertOutcome.UPDATED: WorkerEventKind.UPDATED,
}


class WorkerRegistry(WorkerMoves):
    """Registers, removes and lists workers; how a registered one's record moves (its status, its binding to a
    job) it has from :class:`~hodei.scheduler._moves.WorkerMoves`."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        events: EventHub | None = None,
        clock: Callable[[], datetime] = utcnow,
        veto: RegistrationVeto | None = None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        super().__init__(store, events or EventHub(clock=clock), clock)
        self._veto = veto
        # Told of every record a registration wrote (the allocator keeps its free workers by them).
        self.written: builtins.list[Callable[[WorkerRecord], None]] = []
        self.metrics = metrics or SchedulerMetrics()
        # Keyed by (result, worker type); a WorkerType is a str, so either finds its series.
        self._results = {
            (result, worker_type): self.metrics.registrations.labels(result, worker_type)
            for result in SCHEDULER_REGISTRATION_RESULTS
            for worker_type in (*(t.value for t in WorkerType), UNKNOWN_WORKER_TYPE)
        }

    @property
    def store(self) -> RegistryStore:
        return self._store

    def now(self) -> datetime:
        """The registry's clock."""
        return self._clock()

    def _record(
        self,
        worker: DynamicWorker,
        lease_ttl: float | None,
        status: WorkerStatus,
        running_jobs: Sequence[str] = (),
    ) -> WorkerRecord:
        return record_of(
            worker,
            status=status,
            registered_at=self._clock(),
            lease_ttl=lease_ttl,
            running_jobs=tuple(running_jobs),
        )

    def _count(self, result: str, worker_type: str, count: int = 1) -> None:
        self._results[result, worker_type].inc(count)

    def count_invalid(self, worker_type: str) -> None:
        """Count a registration refused as invalid before it became a record (the servicer could not decode
        it, or an agent's hello was malformed): every registration the scheduler answers counts once."""
        known = worker_type in WORKER_TYPE_VALUES
        self._count("invalid", worker_type if known else UNKNOWN_WORKER_TYPE)

    def check(self, record: WorkerRecord | DynamicWorker) -> None:
        """Raise the refusal of ``record`` (or of a worker's registration), if any (counted): what
        :meth:`register_record` would refuse before writing, said before anything is done for it (a join
        token is spent only on a registration that passes)."""
        if isinstance(record, DynamicWorker):
            record = self._record(record, None, WorkerStatus.AVAILABLE)
        refusal = self._refusal(record)
        if refusal is not None:
            result, error = refusal
            self._count(result, record.worker_type)
            raise error

    def _refusal(self, record: WorkerRecord) -> tuple[str, SchedulerError] | None:
        """Why ``record`` may not be registered, as its ``result`` label and its error; None if it may.

        The one place the scheduler validates a registration, whatever way it came (RegisterWorker,
        RegisterWorkers, an agent's hello, a call in process): the record's verdict, found once however often
        it is asked (a join token's spending asks first), and shared by the records of a batch made in one
        shape (:func:`hodei.domain.record_in_shape`).
        """
        violations = record.verdict
        if violations:
            invalid = InvalidWorkerData(
                f"worker {quote_short(record.worker_id)} is invalid",
                worker_id=record.worker_id,
                violations=violations,
            )
            return "invalid", invalid
        if self._veto is not None and (refusal := self._veto(record)) is not None:
            return "refused", refusal
        return None

    def _announce(
        self, outcome: UpsertOutcome, stored: WorkerRecord, incarnation: int
    ) -> RegistrationReceipt:
        if outcome is UpsertOutcome.STALE:
            raise StaleIncarnation(
                f"worker {stored.worker_id!r}: incarnation {incarnation} is older than the registered "
                f"incarnation {stored.incarnation}",
                worker_id=stored.worker_id,
            )
        if outcome is not UpsertOutcome.KEPT:
            for written in self.written:
                written(stored)
        kind = _ANNOUNCED.get(outcome)
        # Nobody to tell (no watcher of this kind): a batch of 10,000 need not build 10,000 events for nobody.
        if kind is not None and self.events.wants(kind):
            self.events.publish(kind, stored.worker_id, stored)
        return RegistrationReceipt(stored, created=outcome is UpsertOutcome.CREATED)

    async def register(
        self,
        worker: DynamicWorker,
        *,
        lease_ttl: float | None = None,
        status: WorkerStatus = WorkerStatus.AVAILABLE,
        running_jobs: Sequence[str] = (),
    ) -> RegistrationReceipt:
        """Register (or refresh) one worker; it is ``AVAILABLE`` once this returns.

        ``lease_ttl`` is set for workers whose agent holds a lease; push registrations have none.
        ``running_jobs``: the assignments its agent says it runs (one it is bound to stays bound).
        """
        return await self.register_record(self._record(worker, lease_ttl, status, running_jobs))

    async def register_record(self, record: WorkerRecord) -> RegistrationReceipt:
        """Register one record built by the caller (validated and vetted here); raises the refusal."""
        self.check(record)
        [(outcome, stored)] = await self._store.upsert([record])
        self._count(outcome.value, record.worker_type)
        return self._announce(outcome, stored, record.incarnation)

    async def register_many(
        self, workers: Sequence[DynamicWorker]
    ) -> list[RegistrationReceipt | SchedulerError]:
        """Register a batch in one store write; one entry per worker, in input order."""
        return await self.register_records([self._record(w, None, WorkerStatus.AVAILABLE) for w in workers])

    async def register_records(
        self, records: Sequence[WorkerRecord]
    ) -> builtins.list[RegistrationReceipt | SchedulerError]:
        """Register records built by the caller (the servicer builds them straight from the wire): each is
        validated and vetted here, then all are written in one store call. One entry per record, in order."""
        results: builtins.list[RegistrationReceipt | SchedulerError | None] = [None] * len(records)
        accepted: builtins.list[tuple[int, WorkerRecord]] = []
        # Counted by (result, worker type) once the batch is written: a batch the store refused is not
        # answered with these results.
        tally: dict[tuple[str, str], int] = {}
        for index, record in enumerate(records):
            refusal = self._refusal(record)
            if refusal is None:
                accepted.append((index, record))
            else:
                key = (refusal[0], record.worker_type)
                tally[key] = tally.get(key, 0) + 1
                results[index] = refusal[1]
        if accepted:
            written = await self._store.upsert([record for _, record in accepted])
            for (index, record), (outcome, stored) in zip(accepted, written, strict=True):
                key = (outcome.value, record.worker_type)
                tally[key] = tally.get(key, 0) + 1
                try:
                    results[index] = self._announce(outcome, stored, record.incarnation)
                except StaleIncarnation as stale:
                    results[index] = stale
        for (result, worker_type), count in tally.items():
            self._count(result, worker_type, count)
        return [r for r in results if r is not None]

    async def unregister(
        self, worker_id: str, *, reason: str = "", incarnation: int | None = None
    ) -> UnregistrationStatus:
        """Remove a worker; with ``incarnation``, only if the registered one is not newer (else
        :class:`StaleIncarnation`, and nothing changes)."""
        newer: list[int] = []  # the registered incarnation, when the fence refused

        def not_newer(stored: WorkerRecord) -> bool:
            if incarnation is not None and stored.incarnation > incarnation:
                newer.append(stored.incarnation)
                return False
            return True

        if not await self._store.delete(worker_id, only_if=None if incarnation is None else not_newer):
            if newer:
                raise StaleIncarnation(
                    f"worker {worker_id!r}: incarnation {incarnation} is older than the registered "
                    f"incarnation {newer[-1]}; it was not unregistered",
                    worker_id=worker_id,
                )
            return UnregistrationStatus.NOT_REGISTERED
        self.events.publish(WorkerEventKind.UNREGISTERED, worker_id, None, reason)
        return UnregistrationStatus.SUCCESS

    async def expire(self, worker_id: str, *, reason: str) -> bool:
        """Remove a worker that stayed LOST past its grace. False if it is gone or no longer LOST."""
        if not await self._store.delete(worker_id, only_if=lambda stored: stored.status is WorkerStatus.LOST):
            return False
        self.events.publish(WorkerEventKind.EXPIRED, worker_id, None, reason)
        return True

    async def get(self, worker_id: str) -> WorkerRecord | None:
        return await self._store.get(worker_id)

    async def list(
        self, worker_filter: WorkerFilter | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> WorkerPage:
        if page_size < 0:
            raise InvalidWorkerData(
                "page_size must not be negative",
                violations=[FieldViolation("page_size", f"must not be negative, got {page_size}")],
            )
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token)
        worker_filter = worker_filter or WorkerFilter()
        if any(holds_control_characters(k + v) for k, v in worker_filter.labels.items()):
            # No worker holds one (validation refuses them), and PostgreSQL's jsonb cannot even hold a NUL.
            return WorkerPage([])
        # One extra record tells whether another page follows.
        found = await self._store.list(worker_filter, after=after, limit=limit + 1)
        size = 0
        for index, record in enumerate(found[:limit]):
            size += wire_size(record)
            if size > MAX_PAGE_BYTES and index > 0:  # full by bytes before it is by count
                return WorkerPage(found[:index], encode_page_token(found[index - 1].worker_id))
        if len(found) > limit:
            return WorkerPage(found[:limit], encode_page_token(found[limit - 1].worker_id))
        return WorkerPage(found)

    async def records(self, worker_filter: WorkerFilter | None = None) -> AsyncIterator[WorkerRecord]:
        """Every record the filter matches, in worker-id order, read from the store a page at a time."""
        after = ""
        while batch := await self._store.list(
            worker_filter or WorkerFilter(), after=after, limit=MAX_PAGE_SIZE
        ):
            for record in batch:
                yield record
            after = batch[-1].worker_id

    async def all_records(self) -> builtins.list[WorkerRecord]:
        """Every record, in worker-id order (start-up recovery, snapshots)."""
        return [record async for record in self.records()]

    async def count(self) -> int:
        return await self._store.count()

    async def leases(self) -> builtins.list[tuple[str, float, WorkerStatus]]:
        """Every leased worker's id, lease and status, in worker-id order (read by the store)."""
        return await self._store.leases()
