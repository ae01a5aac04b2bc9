"""Group commit: registrations that arrive while a commit is in progress are written together in the next one.

Databases and consensus logs do this to share one fsync among many writers. Each caller hands in its records
and is answered only once the transaction that holds them has committed, with its own outcomes, in its own
order. The first write on an idle store starts at once (no added wait); while ``in_flight`` commits are
running, later writes queue, and the next group takes as many of them as its bounds allow (``max_records``
records and ``max_bytes`` of estimated size, but always at least one caller's whole write).

A store whose transaction costs much whatever its size (a hand-over to the store's writer process, or
PostgreSQL's round trips on the event loop) may ``gather``: when writes are waiting as a commit ends (the store
is under load), the next group waits up to ``gather`` seconds for ``gather_records`` records before it starts.
That adds up to ``gather`` to those writes' wait, for fewer, larger transactions. The first write on an idle
store never waits.

With ``gather_as_last``, a group waits instead for the records waiting as the last commit ended and as many
again as that commit answered (at most ``gather_records``): the callers it answered are likely to send their
next records soon. Two callers taking turns are gathered as a pair, as soon as the second is back, not after
``gather`` seconds; hundreds are gathered into ever larger groups, until ``gather`` seconds or
``gather_records`` bound them.

A group whose transaction fails is not a failure of everyone in it: when it held several callers' writes,
each caller's write is tried again on its own, so that only the caller whose write is at fault is told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hodei.errors import StoreUnavailable

__all__ = ["GroupCommit"]

R = TypeVar("R")
O = TypeVar("O")  # noqa: E741 - the outcome type


@dataclass(eq=False, slots=True)
class _Write(Generic[R, O]):
    records: Sequence[R]
    size: int
    done: asyncio.Future[list[O]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommit(Generic[R, O]):
    """``commit(records) -> outcomes`` (one outcome per record, in order) is the store's own transaction.

    ``size(record)`` estimates a record's bytes, for the ``max_bytes`` bound."""

    def __init__(
        self,
        commit: Callable[[list[R]], Awaitable[list[O]]],
        *,
        size: Callable[[R], int],
        max_records: int = 2000,
        max_bytes: int = 4 * 2**20,
        in_flight: int = 1,
        gather: float = 0.0,
        gather_records: int = 64,
        gather_as_last: bool = False,
    ) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        self._commit = commit
        self._size = size
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._in_flight = in_flight
        self._gather = gather
        self._gather_records = gather_records
        self._gather_as_last = gather_as_last
        self._wanted = gather_records  # records that end a gather
        self._queue: deque[_Write[R, O]] = deque()
        self._committers: set[asyncio.Task[None]] = set()
        self._gathering: list[asyncio.Future[None]] = []  # committers waiting for more records
        self.groups = 0  # transactions tried so far (a failed group, then each of its callers alone, count)
        self.commits = 0  # transactions committed so far

    async def write(self, records: Sequence[R]) -> list[O]:
        """Write ``records`` in the next group; their outcomes once that group's transaction committed."""
        if not records:  # nothing to write, nor to count towards a gather
            return []
        write: _Write[R, O] = _Write(records, sum(self._size(r) for r in records))
        self._queue.append(write)
        if self._gathering and self._queued_records() >= self._wanted:
            for enough in self._gathering:
                _resolve(enough)
            self._gathering.clear()  # told: later writes need not count again
        if len(self._committers) < self._in_flight:
            self._committers.add(asyncio.create_task(self._drain(), name="hodei-group-commit"))
        return await write.done

    def _next_group(self) -> list[_Write[R, O]]:
        group = [self._queue.popleft()]
        records, size = len(group[0].records), group[0].size
        while self._queue:
            following = self._queue[0]
            records += len(following.records)
            size += following.size
            if records > self._max_records or size > self._max_bytes:
                break
            group.append(self._queue.popleft())
        return group

    def _queued_records(self) -> int:
        return _records_in(self._queue)

    async def _gathered(self) -> None:
        """Wait up to ``gather`` seconds for the records wanted to be queued."""
        if self._queued_records() >= self._wanted:
            return
        loop = asyncio.get_running_loop()
        enough: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self._gather, _resolve, enough)
        self._gathering.append(enough)
        try:
            await enough
        finally:
            timer.cancel()
            if enough in self._gathering:
                self._gathering.remove(enough)

    async def _drain(self) -> None:
        under_load = False  # writes were waiting as this committer's last commit ended
        try:
            while self._queue:
                group: list[_Write[R, O]] = []
                try:
                    if under_load and self._gather:
                        await self._gathered()
                        if not self._queue:  # another committer took them meanwhile
                            break
                    group = self._next_group()
                    under_load = await self._run(group)
                    if self._gather_as_last:
                        # Those waiting now, and as many again as this group answered: they are likely back soon.
                        # Always more than are queued now (or the cap, which a gatherer was already told of):
                        # a committer gathering meanwhile is told by the next write that reaches it.
                        self._wanted = min(self._gather_records, self._queued_records() + _records_in(group))
                except asyncio.CancelledError:
                    # The store is closing under us: nobody in this group, or still queued, is left waiting.
                    for write in [*group, *self._queue]:
                        if not write.done.done():
                            write.done.cancel()
                    self._queue.clear()
                    raise
        finally:
            # In the same step as the empty queue was seen (no await between): a write that comes next finds
            # this committer gone and starts another, never one that has stopped looking.
            task = asyncio.current_task()
            if task is not None:
                self._committers.discard(task)

    async def _run(self, group: list[_Write[R, O]]) -> bool:
        """Commit ``group``'s writes whose callers still wait; whether there were any."""
        live = [write for write in group if not write.done.cancelled()]
        if not live:
            return False
        self.groups += 1
        try:
            outcomes = await self._commit([record for write in live for record in write.records])
        except Exception as error:
            if len(live) == 1 or isinstance(error, StoreUnavailable):
                # One caller, or a store nobody can write now: the same answer for everyone in the group.
                for write in live:
                    _settle(write, error=error)
                return True
            # One caller's write may be what failed the group: each is tried alone, and answered for itself.
            for write in live:
                self.groups += 1
                try:
                    alone_outcomes = await self._commit(list(write.records))
                except Exception as alone:
                    _settle(write, error=alone)
                else:
                    self.commits += 1
                    _settle(write, outcomes=alone_outcomes)
            return True
        self.commits += 1
        start = 0
        for write in live:
            end = start + len(write.records)
            _settle(write, outcomes=outcomes[start:end])
            start = end
        return True

    async def aclose(self) -> None:
        """Stop committing; writes still queued are cancelled."""
        for task in list(self._committers):
            task.cancel()
        for task in list(self._committers):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _records_in(writes: Iterable[_Write[R, O]]) -> int:
    return sum(len(write.records) for write in writes)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(
    write: _Write[R, O], *, outcomes: list[O] | None = None, error: BaseException | None = None
) -> None:
    if write.done.done():  # the caller was cancelled meanwhile: its write stands, nobody is told
        return
    if error is not None:
        write.done.set_exception(error)
    else:
        assert outcomes is not None
        write.done.set_result(outcomes)
