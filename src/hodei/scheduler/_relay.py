"""ReplicaRelay: scheduler replicas on one store behave as one scheduler, through an :class:`EventRelay`.

- Every event published on this replica goes to the other replicas, whose watchers see it; theirs come here
  and are published to this replica's watchers (never sent on again: no echo). Only ids, kinds and a short
  reason travel; a relayed event carries no record. Each replica's events arrive in the order it published
  them; two replicas' events about one worker arrive in the order they happened when one caused the other
  through the relay (a relayed drain and the agent's DRAINED), and may cross otherwise (a replica sends its
  events after it has answered the call that made them).
- A command for a worker whose agent's stream is not here (drain, shut down, the shutdown of an unregistration)
  is relayed; the replica holding the stream delivers it and acknowledges, and the asker waits for that
  acknowledgement (at most ``ack_timeout``) to tell whether the command reached an agent.
- A worker another replica expired is forgotten here too: an agent still streaming to this replica is told to
  register again (``forgotten``). One this replica finds gone under its stream before any word of it came is
  given ``ACK_TIMEOUT`` for that word: an unregistration's relayed shutdown ends its agent, never a
  REREGISTER (:meth:`AgentStreams.vanished`).

The core stays free of SQL: the PostgreSQL side is :class:`hodei.stores.PostgresEventRelay`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import replace

from hodei.lifecycle import WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.ports import EventRelay, Relayed, RelayedAck, RelayedCommand, RelayedEvent
from hodei.scheduler._events import EventHub

__all__ = ["ACK_TIMEOUT", "REASON_LIMIT", "ReplicaRelay", "short_reason"]

REASON_LIMIT = 200  # characters of a reason that travel to the other replicas
ACK_TIMEOUT = 1.0  # seconds a relayed message is given to arrive (a command waits this long for its ack)


def short_reason(reason: str) -> str:
    """``reason`` cut to :data:`REASON_LIMIT` characters (a relayed message stays well under NOTIFY's 8000
    bytes whatever a client sent)."""
    if len(reason) <= REASON_LIMIT:
        return reason
    return f"{reason[: REASON_LIMIT - 16]}… ({len(reason)} chars)"


class ReplicaRelay:
    """``deliver`` gives a relayed command to the local stream of its worker (False: no such stream here);
    ``forgotten`` is told of a worker another replica expired."""

    def __init__(
        self,
        relay: EventRelay,
        events: EventHub,
        *,
        deliver: Callable[[RelayedCommand], bool],
        forgotten: Callable[[str], None],
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self._relay = relay
        self._events = events
        self._deliver = deliver
        self._forgotten = forgotten
        self.ack_timeout = ack_timeout
        self._republishing = False
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        self._events.listen(self._published, relay=True)
        await self._relay.start(self._received)

    async def close(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        await self._relay.close()

    def _published(self, event: WorkerEvent) -> None:
        if self._republishing or event.kind is WorkerEventKind.SNAPSHOT:
            return  # an event another replica relayed goes no further
        self._relay.publish(RelayedEvent(event.kind, event.worker_id, short_reason(event.reason), event.time))

    def _received(self, message: Relayed) -> None:
        if isinstance(message, RelayedEvent):
            self._republishing = True
            try:
                self._events.publish(message.kind, message.worker_id, None, message.reason, time=message.time)
            finally:
                self._republishing = False
            if message.kind is WorkerEventKind.EXPIRED:
                self._forgotten(message.worker_id)
        elif isinstance(message, RelayedCommand):
            if self._deliver(message):
                self._relay.publish(RelayedAck(message.request))
        else:
            future = self._waiting.get(message.request)
            if future is not None and not future.done():
                future.set_result(None)

    async def command(
        self,
        worker_id: str,
        command: WorkerCommand,
        *,
        incarnation: int | None = None,
        close: bool = False,
        wait: bool = True,
    ) -> bool:
        """Relay ``command`` to the replica holding ``worker_id``'s stream; with ``wait``, whether one
        acknowledged it within ``ack_timeout`` (without, False at once)."""
        request = secrets.token_hex(8)
        relayed = RelayedCommand(
            worker_id, replace(command, reason=short_reason(command.reason)), request, incarnation, close
        )
        if not wait:
            self._relay.publish(relayed)
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        try:
            self._relay.publish(relayed)
            await asyncio.wait_for(future, self.ack_timeout)
        except TimeoutError:
            return False
        finally:
            del self._waiting[request]
        return True
