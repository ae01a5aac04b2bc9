"""The free workers — AVAILABLE and bound to nothing — as the allocator knows them between two reads of the store.

Kept from every record the registry writes (its events, and registrations even while nobody watches events),
and read whole from the store again every FREE_RELIST seconds: what another replica changed, or anything missed.
A worker wrongly thought free costs only a bind the store refuses; a free worker missed waits at most until the
next read.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable

from hodei.domain import WorkerRecord, WorkerStatus

__all__ = ["FREE_RELIST", "FreeWorkers"]

FREE_RELIST = 1.0
"""Seconds between two whole reads of the free workers from the store."""


def is_free(record: WorkerRecord) -> bool:
    return record.status is WorkerStatus.AVAILABLE and record.assignment is None


class FreeWorkers:
    """``read`` gives every AVAILABLE record of the store (a fresh async iteration each call)."""

    def __init__(
        self, read: Callable[[], AsyncIterable[WorkerRecord]], *, relist: float = FREE_RELIST
    ) -> None:
        self._read = read
        self._relist = relist
        self._free: dict[str, WorkerRecord] = {}
        self._read_at: float | None = None
        self._noted_meanwhile: list[WorkerRecord] | None = None

    def note(self, record: WorkerRecord) -> None:
        """A record as the registry just wrote it."""
        _note_in(self._free, record)
        if self._noted_meanwhile is not None:
            self._noted_meanwhile.append(record)

    def gone(self, worker_id: str) -> None:
        """Removed, bound, or found taken: not free."""
        self._free.pop(worker_id, None)

    def known(self) -> list[WorkerRecord]:
        """The free workers as known now, without reading the store."""
        return list(self._free.values())

    async def current(self, now: float) -> list[WorkerRecord]:
        """The free workers, read whole from the store first if the last read is ``relist`` seconds old."""
        if self._read_at is None or now - self._read_at >= self._relist:
            self._noted_meanwhile = []
            try:
                fresh = {record.worker_id: record async for record in self._read() if is_free(record)}
                for record in self._noted_meanwhile:  # heard of while the store was read: newer than the read
                    _note_in(fresh, record)
            finally:
                self._noted_meanwhile = None
            self._free, self._read_at = fresh, now
        return list(self._free.values())


def _note_in(free: dict[str, WorkerRecord], record: WorkerRecord) -> None:
    if is_free(record):
        free[record.worker_id] = record
    else:
        free.pop(record.worker_id, None)
