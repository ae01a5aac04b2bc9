"""What scheduler replicas on one store share besides it: who leads (:class:`Leadership`), and the messages they
pass each other (:class:`EventRelay`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from hodei.lifecycle import WorkerCommand, WorkerEventKind

__all__ = ["EventRelay", "Leadership", "Relayed", "RelayedAck", "RelayedCommand", "RelayedEvent"]


class Leadership(Protocol):
    """Who runs lease expiry and garbage collection: one replica at a time."""

    async def acquire(self) -> bool:
        """Try to be (or stay) the leader; True while this replica leads. Never blocks for long."""
        ...

    async def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """A lifecycle event published on another replica. Only ids, kinds and a short reason travel (no record):
    a watcher that wants the worker as it is now asks for it."""

    kind: WorkerEventKind
    worker_id: str
    reason: str
    time: datetime


@dataclass(frozen=True, slots=True)
class RelayedCommand:
    """A command for the agent of ``worker_id``, wherever its stream is. The replica that holds the stream
    delivers it and answers ``request`` with a :class:`RelayedAck`; only a stream of ``incarnation`` or older
    is told (None: any); ``close`` ends the stream after the command (the worker was unregistered)."""

    worker_id: str
    command: WorkerCommand
    request: str
    incarnation: int | None = None
    close: bool = False


@dataclass(frozen=True, slots=True)
class RelayedAck:
    """The stream of a :class:`RelayedCommand`'s worker was here, and the command went down it."""

    request: str


Relayed = RelayedEvent | RelayedCommand | RelayedAck


class EventRelay(Protocol):
    """Scheduler replicas sharing one store pass each other what one of them must hear from another.

    Best effort and at most once: a message published while the relay is cut off may be lost (the store stays
    the truth; a lease sync finds what a lost message would have said). Messages from one replica arrive
    everywhere in the order it published them; a replica never hears its own.
    """

    async def start(self, receive: Callable[[Relayed], None]) -> None:
        """Listen: ``receive`` (quick, never raising) is called with every other replica's messages in order.
        Returns once listening."""
        ...

    def publish(self, message: Relayed) -> None:
        """Send ``message`` to every other replica (queued, never blocking: a full queue drops the oldest)."""
        ...

    async def close(self) -> None: ...
