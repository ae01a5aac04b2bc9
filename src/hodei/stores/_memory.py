"""An in-memory :class:`~hodei.ports.RegistryStore` (with :class:`~hodei.ports.BoundJobs` and
:class:`~hodei.ports.PoolDefinitions`): fast, and gone with the process."""

from __future__ import annotations

import bisect
import builtins
import collections
from collections.abc import Callable, Mapping, Sequence

from hodei.domain import UpsertOutcome, WorkerRecord, WorkerStatus, apply_change, merge_registrations
from hodei.pools import Requirements
from hodei.ports import WorkerFilter
from hodei.stores._bound import check_bindings, job_of, newly_bound

__all__ = ["MemoryRegistryStore"]


class MemoryRegistryStore:
    """A write that would bind a second record to a job raises :class:`~hodei.errors.JobAlreadyBound` and writes
    nothing: for ``upsert``, nothing of the whole call."""

    def __init__(self) -> None:
        self._records: dict[str, WorkerRecord] = {}
        self._sorted_ids: list[str] | None = []
        self._jobs: dict[str, str] = {}  # job id -> the worker bound to it
        self._pools: tuple[str, str] | None = None
        self.registration_transactions = 0  # each upsert is applied whole, as one transaction would be

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        current = {r.worker_id: self._records[r.worker_id] for r in records if r.worker_id in self._records}
        outcomes, written = merge_registrations(current, records)
        self._write(written)
        self.registration_transactions += 1
        return outcomes

    def _write(self, written: Mapping[str, WorkerRecord]) -> None:
        """Store ``written`` (by worker id) unless it would bind a job twice; keep the job index."""
        held = {worker_id: job_of(self._records.get(worker_id)) for worker_id in written}
        check_bindings(written, {j: self._jobs[j] for j in newly_bound(held, written) if j in self._jobs})
        for job in held.values():
            if job is not None:
                del self._jobs[job]
        for worker_id, record in written.items():
            if (job := job_of(record)) is not None:
                self._jobs[job] = worker_id
        if any(worker_id not in self._records for worker_id in written):
            self._sorted_ids = None
        self._records.update(written)

    async def modify(
        self, worker_id: str, change: Callable[[WorkerRecord], WorkerRecord | None]
    ) -> tuple[WorkerRecord, WorkerRecord] | None:
        [changed] = await self.modify_many([(worker_id, change)])
        return changed

    async def modify_many(
        self, changes: Sequence[tuple[str, Callable[[WorkerRecord], WorkerRecord | None]]]
    ) -> list[tuple[WorkerRecord, WorkerRecord] | None]:
        results: list[tuple[WorkerRecord, WorkerRecord] | None] = []
        for worker_id, change in changes:
            result, written = apply_change(self._records.get(worker_id), change)
            if written is not None:
                self._write({worker_id: written})
            results.append(result)
        return results

    async def get(self, worker_id: str) -> WorkerRecord | None:
        return self._records.get(worker_id)

    async def delete(self, worker_id: str, *, only_if: Callable[[WorkerRecord], bool] | None = None) -> bool:
        stored = self._records.get(worker_id)
        if stored is None or (only_if is not None and not only_if(stored)):
            return False
        del self._records[worker_id]
        if (job := job_of(stored)) is not None:
            del self._jobs[job]
        self._sorted_ids = None
        return True

    async def list(
        self, worker_filter: WorkerFilter, *, after: str = "", limit: int = 100
    ) -> list[WorkerRecord]:
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self._records)
        ids = self._sorted_ids
        found: list[WorkerRecord] = []
        for index in range(bisect.bisect_right(ids, after) if after else 0, len(ids)):
            record = self._records[ids[index]]
            if worker_filter.matches(record):
                found.append(record)
                if len(found) == limit:
                    break
        return found

    async def count(self) -> int:
        return len(self._records)

    async def count_by_status(self) -> dict[WorkerStatus, int]:
        return dict(collections.Counter(record.status for record in self._records.values()))

    async def leases(self) -> builtins.list[tuple[str, float, WorkerStatus]]:
        return sorted(
            (record.worker_id, record.lease_ttl, record.status)
            for record in self._records.values()
            if record.lease_ttl is not None
        )

    async def any_fitting(self, requirements: Requirements, *, with_lease: bool = False) -> bool:
        return any(
            requirements.fits(record) and (not with_lease or record.lease_ttl is not None)
            for record in self._records.values()
        )

    async def count_by_pool(self) -> dict[str, dict[WorkerStatus, int]]:
        counts: dict[str, dict[WorkerStatus, int]] = {}
        for (pool, status), count in collections.Counter(
            (record.pool, record.status) for record in self._records.values()
        ).items():
            counts.setdefault(pool, {})[status] = count
        return counts

    async def find_job(self, job_id: str) -> WorkerRecord | None:
        worker_id = self._jobs.get(job_id)
        return None if worker_id is None else self._records[worker_id]

    async def bound(self) -> builtins.list[WorkerRecord]:
        return [self._records[worker_id] for worker_id in sorted(self._jobs.values())]

    async def find_assignment(self, assignment_id: str) -> WorkerRecord | None:
        for worker_id in self._jobs.values():  # objects compared, nothing decoded (~0.1 ms per thousand)
            held = self._records[worker_id].assignment
            if held is not None and held.assignment_id == assignment_id:
                return self._records[worker_id]
        return None

    async def save_pools(self, source: str, text: str) -> None:
        self._pools = (source, text)

    async def load_pools(self) -> tuple[str, str] | None:
        return self._pools

    async def close(self) -> None:
        self._records.clear()
        self._jobs.clear()
        self._sorted_ids = []
        self._pools = None
