"""An in-memory :class:`~hodei.ports.RegistryStore`: fast, and gone with the process."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Sequence

from hodei.domain import UpsertOutcome, WorkerRecord, WorkerStatus, merge_registrations, stored_form
from hodei.ports import WorkerFilter

__all__ = ["MemoryRegistryStore"]


class MemoryRegistryStore:
    def __init__(self) -> None:
        self._records: dict[str, WorkerRecord] = {}
        self._sorted_ids: list[str] | None = []

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        before = len(self._records)
        outcomes, _ = merge_registrations(self._records, records)
        if len(self._records) != before:
            self._sorted_ids = None
        return outcomes

    async def modify(
        self, worker_id: str, change: Callable[[WorkerRecord], WorkerRecord | None]
    ) -> tuple[WorkerRecord, WorkerRecord] | None:
        before = self._records.get(worker_id)
        if before is None:
            return None
        after = change(before)
        if after is None:
            return before, before
        self._records[worker_id] = after = stored_form(after)
        return before, after

    async def get(self, worker_id: str) -> WorkerRecord | None:
        return self._records.get(worker_id)

    async def delete(self, worker_id: str, *, only_if: Callable[[WorkerRecord], bool] | None = None) -> bool:
        stored = self._records.get(worker_id)
        if stored is None or (only_if is not None and not only_if(stored)):
            return False
        del self._records[worker_id]
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

    async def close(self) -> None:
        self._records.clear()
        self._sorted_ids = []
