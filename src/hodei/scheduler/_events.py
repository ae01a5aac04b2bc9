"""EventHub: lifecycle events, numbered and fanned out in order to every watcher.

Each watcher has a bounded queue; one that falls too far behind is cut off (its iteration raises
:class:`WatcherFellBehind`) rather than making the scheduler hold events for it without limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import datetime

from hodei.domain import WorkerRecord, utcnow
from hodei.errors import SchedulerOverloaded
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.pools import WaitingDemand

__all__ = ["EventHub", "Watcher", "WatcherFellBehind"]


class WatcherFellBehind(SchedulerOverloaded):
    """A watcher did not keep up with the events; it should watch again, with a snapshot."""


class Watcher:
    """One subscription, to every kind of event or to ``kinds`` only. Iterate it (as often as you like) for
    events; ``close()`` ends it after the events it already holds."""

    def __init__(self, hub: EventHub, limit: int, kinds: frozenset[WorkerEventKind] | None = None) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[WorkerEvent | None] = asyncio.Queue(limit)
        self.kinds = kinds
        self.fell_behind = False
        self.closed = False

    def wants(self, kind: WorkerEventKind) -> bool:
        return self.kinds is None or kind in self.kinds

    def _offer(self, event: WorkerEvent) -> bool:
        if not self.wants(event.kind):
            return True
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.fell_behind = True
            return False
        return True

    def close(self) -> None:
        self.closed = True
        self._hub._watchers.discard(self)
        if not self._queue.full():
            self._queue.put_nowait(None)  # wake a reader waiting on an empty queue

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> WorkerEvent:
        while True:
            if self._queue.empty():
                if self.fell_behind:
                    raise WatcherFellBehind("the watcher fell behind the events; watch again")
                if self.closed:
                    raise StopAsyncIteration
            event = await self._queue.get()
            if event is not None:
                return event


class EventHub:
    """Numbers lifecycle events and hands each, in order, to every watcher (a queue per watcher, read by a task)
    and to every listener (a function called as the event is published: it must be quick and must not raise).
    """

    def __init__(self, *, clock: Callable[[], datetime] = utcnow, watcher_queue: int = 10_000) -> None:
        self._clock = clock
        self._watcher_queue = watcher_queue
        self._watchers: set[Watcher] = set()
        self._listeners: list[Callable[[WorkerEvent], None]] = []
        self._relays = 0  # listeners that pass every event on to other replicas' watchers
        self.sequence = 0

    def publish(
        self,
        kind: WorkerEventKind,
        worker_id: str = "",
        record: WorkerRecord | None = None,
        reason: str = "",
        *,
        time: datetime | None = None,
        demand: tuple[WaitingDemand, ...] = (),
    ) -> WorkerEvent:
        """Number the event and hand it out; ``time`` (default: the record's update, else now) is when it
        happened (an event relayed from another replica keeps its own)."""
        self.sequence += 1
        if time is not None:
            moment = time
        elif record is not None and record.updated_at is not None:
            moment = record.updated_at
        else:
            moment = self._clock()
        event = WorkerEvent(self.sequence, kind, worker_id, record, reason, moment, demand)
        for watcher in list(self._watchers):
            if not watcher._offer(event):
                # Cut off: its reader drains what it has, then learns it fell behind.
                self._watchers.discard(watcher)
        for listener in self._listeners:
            listener(event)
        return event

    def snapshot_event(self, record: WorkerRecord) -> WorkerEvent:
        """A SNAPSHOT event for a current worker, numbered with the last published sequence."""
        return WorkerEvent(
            self.sequence, WorkerEventKind.SNAPSHOT, record.worker_id, record, "", self._clock()
        )

    def watch(self, kinds: Collection[WorkerEventKind] | None = None) -> Watcher:
        """A watcher of every event, or of ``kinds`` only."""
        watcher = Watcher(self, self._watcher_queue, None if kinds is None else frozenset(kinds))
        self._watchers.add(watcher)
        return watcher

    def listen(self, listener: Callable[[WorkerEvent], None], *, relay: bool = False) -> None:
        """Call ``listener`` with every event published from now on (the scheduler's event log does). Like
        watchers, listeners hear of registrations only while a watcher wants them (registrations are logged by
        the gRPC service, one line per call). A ``relay`` listener passes events on to the watchers of other
        replicas, which this hub cannot count: it counts as a watcher, for as long as the hub lives."""
        self._listeners.append(listener)
        if relay:
            self._relays += 1

    @property
    def watchers(self) -> int:
        """How many watch: this hub's watchers, and a relay to other replicas' (which may have some)."""
        return len(self._watchers) + self._relays

    def wants(self, kind: WorkerEventKind) -> bool:
        """Whether an event of ``kind`` would reach anyone: a watcher of that kind, or a relay. An event
        nobody wants need not be built (the autoscaler watches DEMAND only: registrations stay unannounced)."""
        return self._relays > 0 or any(watcher.wants(kind) for watcher in self._watchers)

    def close(self) -> None:
        """End every watcher's iteration."""
        for watcher in list(self._watchers):
            watcher.close()
