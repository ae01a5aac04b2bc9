"""Where the scheduler's registry keeps its records (:class:`RegistryStore`), and what a store may also keep:
bound jobs, pool definitions, leases and spent join tokens shared by replicas."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from hodei.domain import (
    UpsertOutcome,
    WorkerRecord,
    WorkerStatus,
)
from hodei.pools import Requirements
from hodei.ports._scheduler import WorkerFilter

__all__ = [
    "BoundJobs",
    "CountedTransactions",
    "PoolDefinitions",
    "RegistryStore",
    "SharedLeases",
    "SpentTokens",
    "TouchedLeases",
]


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

    async def leases(self) -> builtins.list[tuple[str, float, WorkerStatus]]:
        """Every record with a lease (one an agent keeps), as its worker id, lease in seconds and status, in
        worker-id order: what a scheduler restores its leases from. Chosen by the store itself: workers
        without an agent are not read back."""
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
class CountedTransactions(Protocol):
    """A store that counts the transactions it committed registrations in. With group commit, registrations that
    arrive while one commits share the next: registrations over transactions is how many share one."""

    @property
    def registration_transactions(self) -> int:
        """Transactions that committed registrations so far (not those that failed)."""
        ...


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
