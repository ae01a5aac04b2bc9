"""An in-memory :class:`~hodei.ports.RegistryStore`: fast, and gone with the process."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace

from hodei.domain import UpsertOutcome, WorkerRecord, merge_registration
from hodei.ports import WorkerFilter

__all__ = ["MemoryRegistryStore"]


def _stored_form(record: WorkerRecord) -> WorkerRecord:
    """The record without its live fields, as every store keeps it."""
    if record.connected or record.usage is not None or record.last_heartbeat_at is not None:
        return replace(record, connected=False, usage=None, last_heartbeat_at=None)
    return record


class MemoryRegistryStore:
    def __init__(self) -> None:
        self._records: dict[str, WorkerRecord] = {}
        self._sorted_ids: list[str] | None = []

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        outcomes: list[tuple[UpsertOutcome, WorkerRecord]] = []
        for record in records:
            stored = self._records.get(record.worker_id)
            outcome, written = merge_registration(stored, _stored_form(record))
            if outcome is UpsertOutcome.CREATED:
                self._sorted_ids = None
            if outcome in (UpsertOutcome.CREATED, UpsertOutcome.UPDATED):
                self._records[record.worker_id] = written
            outcomes.append((outcome, written))
        return outcomes

    async def update(self, records: Sequence[WorkerRecord]) -> list[str]:
        missing: list[str] = []
        for record in records:
            if record.worker_id in self._records:
                self._records[record.worker_id] = _stored_form(record)
            else:
                missing.append(record.worker_id)
        return missing

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
