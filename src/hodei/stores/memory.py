"""An in-memory :class:`~hodei.ports.RegistryStore`: fast, and gone with the process."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace

from hodei.domain import WorkerRecord
from hodei.ports import UpsertOutcome, WorkerFilter

__all__ = ["MemoryRegistryStore"]


class MemoryRegistryStore:
    def __init__(self) -> None:
        self._records: dict[str, WorkerRecord] = {}
        self._sorted_ids: list[str] | None = []

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        outcomes: list[tuple[UpsertOutcome, WorkerRecord]] = []
        for record in records:
            stored = self._records.get(record.worker_id)
            if stored is None:
                self._records[record.worker_id] = record
                self._sorted_ids = None
                outcomes.append((UpsertOutcome.CREATED, record))
            elif record.incarnation < stored.incarnation:
                outcomes.append((UpsertOutcome.STALE, stored))
            else:
                record = replace(record, registered_at=stored.registered_at)
                self._records[record.worker_id] = record
                outcomes.append((UpsertOutcome.UPDATED, record))
        return outcomes

    async def get(self, worker_id: str) -> WorkerRecord | None:
        return self._records.get(worker_id)

    async def delete(self, worker_id: str) -> bool:
        if self._records.pop(worker_id, None) is None:
            return False
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

    async def close(self) -> None:
        self._records.clear()
        self._sorted_ids = []
