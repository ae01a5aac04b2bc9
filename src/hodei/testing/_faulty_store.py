"""FaultyStore: a real registry store whose Nth write fails, or stalls until the test lets it through.

Writes (``upsert``, ``modify``, ``delete``, ``save_pools``) are numbered from 1 in the order they are asked; reads pass
straight through. A failed write raises before it reaches the store (nothing is written); a stalled write
waits, in a task of its own, until :meth:`FaultyStore.release` — and then commits even if the caller was
cancelled meanwhile, as a SQLite write already in its thread or a PostgreSQL commit already sent does.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from hodei.domain import UpsertOutcome, WorkerRecord, WorkerStatus
from hodei.errors import StoreUnavailable
from hodei.pools import Requirements
from hodei.ports import BoundJobs, PoolDefinitions, RegistryStore, WorkerFilter

__all__ = ["FaultyStore"]

T = TypeVar("T")


class FaultyStore:
    """Wraps ``inner`` (any :class:`~hodei.ports.RegistryStore` that is also :class:`~hodei.ports.BoundJobs` and
    :class:`~hodei.ports.PoolDefinitions`: memory, SQLite, PostgreSQL).

    ``fail_on=N`` makes the Nth write raise ``error`` (default: :class:`~hodei.errors.StoreUnavailable`);
    ``stall_on=N`` holds the Nth write until :meth:`release`. Both can be set again later with
    :meth:`fail_write` and :meth:`stall_write`. ``writes`` lists the writes asked so far, by method name.

    It is a store of one scheduler: the leases are not shared (even over PostgreSQL) and join tokens are not
    remembered, whatever ``inner`` can do.
    """

    def __init__(
        self,
        inner: RegistryStore,
        *,
        fail_on: int | None = None,
        stall_on: int | None = None,
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        self.inner = inner
        self.writes: list[str] = []
        self._fail_on = fail_on
        self._error = error or (lambda: StoreUnavailable("the registry store failed on purpose"))
        self._stall_on = stall_on
        self._released = asyncio.Event()
        self._stalled = asyncio.Event()
        self._in_flight: set[asyncio.Future[Any]] = set()

    # -- fault injection -------------------------------------------------------------------------------

    def fail_write(self, number: int, error: Callable[[], BaseException] | None = None) -> None:
        """Make write ``number`` (counted from the first write ever asked) raise ``error()``."""
        self._fail_on = number
        if error is not None:
            self._error = error

    def stall_write(self, number: int) -> None:
        """Hold write ``number`` until :meth:`release`."""
        self._stall_on = number
        self._released.clear()
        self._stalled.clear()

    async def stalled(self) -> None:
        """Return once the stalled write has been asked (and is waiting)."""
        await self._stalled.wait()

    def release(self) -> None:
        """Let the stalled write through."""
        self._released.set()

    async def settled(self) -> None:
        """Wait for every stalled write that was let through to be written."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))

    # -- the writes ------------------------------------------------------------------------------------

    async def _write(self, name: str, write: Callable[[], Awaitable[T]]) -> T:
        self.writes.append(name)
        number = len(self.writes)
        if number == self._fail_on:
            raise self._error()
        if number != self._stall_on:
            return await write()

        async def stalled_then_written() -> T:
            self._stalled.set()
            await self._released.wait()
            return await write()

        task = asyncio.ensure_future(stalled_then_written())
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        return await self._write("upsert", lambda: self.inner.upsert(records))

    async def modify(
        self, worker_id: str, change: Callable[[WorkerRecord], WorkerRecord | None]
    ) -> tuple[WorkerRecord, WorkerRecord] | None:
        return await self._write("modify", lambda: self.inner.modify(worker_id, change))

    async def modify_many(
        self, changes: Sequence[tuple[str, Callable[[WorkerRecord], WorkerRecord | None]]]
    ) -> list[tuple[WorkerRecord, WorkerRecord] | None]:
        return await self._write("modify", lambda: self.inner.modify_many(changes))

    async def delete(self, worker_id: str, *, only_if: Callable[[WorkerRecord], bool] | None = None) -> bool:
        return await self._write("delete", lambda: self.inner.delete(worker_id, only_if=only_if))

    async def save_pools(self, source: str, text: str) -> None:
        await self._write("save_pools", lambda: cast(PoolDefinitions, self.inner).save_pools(source, text))

    # -- the reads -------------------------------------------------------------------------------------

    async def get(self, worker_id: str) -> WorkerRecord | None:
        return await self.inner.get(worker_id)

    async def list(
        self, worker_filter: WorkerFilter, *, after: str = "", limit: int = 100
    ) -> list[WorkerRecord]:
        return await self.inner.list(worker_filter, after=after, limit=limit)

    async def count(self) -> int:
        return await self.inner.count()

    async def count_by_status(self) -> dict[WorkerStatus, int]:
        return await self.inner.count_by_status()

    async def leases(self) -> builtins.list[tuple[str, float, WorkerStatus]]:
        return await self.inner.leases()

    async def any_fitting(self, requirements: Requirements, *, with_lease: bool = False) -> bool:
        return await self.inner.any_fitting(requirements, with_lease=with_lease)

    async def count_by_pool(self) -> dict[str, dict[WorkerStatus, int]]:
        return await self.inner.count_by_pool()

    async def find_job(self, job_id: str) -> WorkerRecord | None:
        return await cast(BoundJobs, self.inner).find_job(job_id)

    async def bound(self) -> builtins.list[WorkerRecord]:
        return await cast(BoundJobs, self.inner).bound()

    async def find_assignment(self, assignment_id: str) -> WorkerRecord | None:
        return await cast(BoundJobs, self.inner).find_assignment(assignment_id)

    async def load_pools(self) -> tuple[str, str] | None:
        return await cast(PoolDefinitions, self.inner).load_pools()

    async def close(self) -> None:
        await self.inner.close()
