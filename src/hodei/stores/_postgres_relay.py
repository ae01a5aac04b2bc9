"""PostgresEventRelay: the :class:`~hodei.ports.EventRelay` of replicas sharing one PostgreSQL database.

Messages go out with ``NOTIFY`` on one channel of the database and come in through ``LISTEN`` (asyncpg's
``add_listener``); no other infrastructure. Each replica sends from one connection, one ``pg_notify`` at a
time, from a queue, so its messages reach every listener in the order it published them (PostgreSQL delivers
notifications in commit order). Several messages share one notification, up to :data:`PAYLOAD_LIMIT` bytes
(NOTIFY refuses 8000); each payload names its sender, and a replica skips its own.

The payload is JSON: ``{"o": origin, "m": [item, ...]}`` with each item a list —
``["r", kind, reason, time, [worker_id, ...]]`` (a run of events of one kind, reason and moment, as a batch of
registrations makes: each worker's id is all it adds), ``["c", worker_id, kind, reason, deadline, request,
incarnation, close]`` or ``["a", request]``. A replica of the version before runs sent each event as
``["e", kind, worker_id, reason, time]``, which is still read; it skips runs as unreadable (logged), so while
replicas of both versions run, the older ones miss the newer ones' events.

Best effort: the queue is bounded (the oldest are dropped, and counted, when it is full); a send that fails
is tried again on a new connection; a listening connection that breaks is reopened, and what was notified
meanwhile is missed (the store stays the truth).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import asyncpg

from hodei._waiting import wait_until_set
from hodei.errors import StoreUnavailable
from hodei.lifecycle import CommandKind, WorkerCommand, WorkerEventKind
from hodei.ports import Relayed, RelayedAck, RelayedCommand, RelayedEvent
from hodei.stores._postgres_errors import TROUBLE

__all__ = ["CHANNEL", "PAYLOAD_LIMIT", "PostgresEventRelay", "decode", "encode"]

log = logging.getLogger(__name__)

CHANNEL = "hodei_relay"
PAYLOAD_LIMIT = 7_900  # bytes; PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
QUEUE_LIMIT = 10_000
MOST_PER_PAYLOAD = 1_000  # messages tried in one payload at most (an event in a run adds only its quoted id)


def encode(messages: Iterable[Relayed]) -> list[list[Any]]:
    """The items of a payload carrying ``messages``, in order: consecutive events of one kind, reason and moment
    go as one run."""
    items: list[list[Any]] = []
    run: list[str] = []
    last: RelayedEvent | None = None  # the event that began the current run
    for message in messages:
        if isinstance(message, RelayedEvent):
            if (
                last is None
                or message.time != last.time
                or message.kind is not last.kind
                or message.reason != last.reason
            ):
                last, run = message, []
                items.append(["r", message.kind.value, message.reason, message.time.isoformat(), run])
            run.append(message.worker_id)
        else:
            last = None
            items.append(_encode_one(message))
    return items


def _encode_one(message: RelayedCommand | RelayedAck) -> list[Any]:
    if isinstance(message, RelayedCommand):
        command = message.command
        return [
            "c",
            message.worker_id,
            command.kind.value,
            command.reason,
            command.deadline,
            message.request,
            message.incarnation,
            message.close,
        ]
    return ["a", message.request]


def decode(item: list[Any]) -> list[Relayed]:
    """The messages an item carries. Raises ValueError (or KeyError, TypeError, IndexError) for what no replica
    sent."""
    if item[0] == "r":
        kind, reason, time = WorkerEventKind(item[1]), str(item[2]), datetime.fromisoformat(item[3])
        ids = item[4]
        if not isinstance(ids, list) or not all(
            isinstance(worker_id, str) and worker_id for worker_id in ids
        ):
            raise TypeError("a run's ids are not a list of worker ids")
        return [RelayedEvent(kind, worker_id, reason, time) for worker_id in ids]
    if item[0] == "e":  # a replica of the version before runs
        return [
            RelayedEvent(
                WorkerEventKind(item[1]), str(item[2]), str(item[3]), datetime.fromisoformat(item[4])
            )
        ]
    if item[0] == "c":
        incarnation = None if item[6] is None else int(item[6])
        command = WorkerCommand(CommandKind(item[2]), str(item[3]), float(item[4]))
        return [RelayedCommand(str(item[1]), command, str(item[5]), incarnation, bool(item[7]))]
    if item[0] == "a":
        return [RelayedAck(str(item[1]))]
    raise ValueError(f"unknown message type {str(item[0])[:16]!r}")


class PostgresEventRelay:
    """``PostgresEventRelay(dsn)``; the scheduler starts and closes it. ``origin`` names this replica in its
    messages; ``dropped`` counts the messages a full queue (or an oversized message) lost."""

    def __init__(
        self,
        dsn: str,
        *,
        channel: str = CHANNEL,
        queue_limit: int = QUEUE_LIMIT,
        retry_delay: float = 0.5,
        connect_timeout: float = 2.0,
    ) -> None:
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be at least 1, got {queue_limit}")
        self._dsn = dsn
        self._channel = channel
        self._retry_delay = retry_delay
        self._connect_timeout = connect_timeout
        self.origin = secrets.token_hex(6)
        self._queue: deque[Relayed] = deque(maxlen=queue_limit)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing waits to be sent
        self._idle.set()
        self._cut = asyncio.Event()
        self._receive: Callable[[Relayed], None] | None = None
        self._listening: asyncpg.Connection | None = None
        self._sending: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        empty = _payload(self.origin, [])
        self._own = empty.removesuffix('"m":[]}')  # how every payload of this replica starts
        self._head = len(empty)
        self._fits = 1  # messages the next payload is tried with: as many as the last one's suggest would fit
        self.dropped = 0
        self.closed = False

    async def start(self, receive: Callable[[Relayed], None]) -> None:
        if self._receive is not None:
            raise RuntimeError("the relay was started already")
        self._receive = receive
        try:
            await self._listen()
        except TROUBLE as error:
            raise StoreUnavailable(f"the relay could not listen on the registry database: {error}") from error
        self._tasks = [
            asyncio.create_task(self._keep_listening(), name="hodei-relay-listen"),
            asyncio.create_task(self._send(), name="hodei-relay-send"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # The replicas no longer hear from this one (or it from them): say so where an operator looks.
        log.critical("relay.stopped", extra={"task": task.get_name()}, exc_info=task.exception())

    def publish(self, message: Relayed) -> None:
        if self.closed:
            return
        queue = self._queue
        # The sender was told when the queue stopped being empty, and looks at it again before it waits.
        if queue:
            if len(queue) == queue.maxlen:
                self.dropped += 1  # the deque drops the oldest
            queue.append(message)
            return
        queue.append(message)
        self._idle.clear()
        self._wake.set()

    async def close(self, *, flush: float = 1.0) -> None:
        """Send what is queued (for at most ``flush`` seconds), then stop listening and sending."""
        if self.closed:
            return
        self.closed = True
        if self._tasks:
            await wait_until_set(self._idle, flush)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for db in (self._listening, self._sending):
            if db is not None:
                db.terminate()
        self._listening = self._sending = None

    # -- listening -------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        db = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        try:
            db.add_termination_listener(lambda _db: self._cut.set())
            await db.add_listener(self._channel, self._heard)
        except BaseException:
            db.terminate()
            raise
        self._listening = db

    async def _keep_listening(self) -> None:
        while True:
            await self._cut.wait()
            self._cut.clear()
            log.warning("relay.cut", extra={"channel": self._channel})
            while True:
                await asyncio.sleep(self._retry_delay)
                try:
                    await self._listen()
                except TROUBLE:
                    continue
                log.info("relay.listening_again", extra={"channel": self._channel})
                break

    def _heard(self, _db: object, _pid: int, _channel: str, notified: object) -> None:
        payload = str(notified)
        if payload.startswith(self._own):
            return  # its own, heard back: not even parsed
        try:
            parsed = json.loads(payload)
            # Another replica's: every payload names its sender.
            _sender, items = parsed["o"], list(parsed["m"])
        except (ValueError, KeyError, TypeError, RecursionError) as error:  # RecursionError: nested too deep
            log.warning("relay.unreadable", extra={"error": str(error)[:200], "payload_bytes": len(payload)})
            return
        assert self._receive is not None
        for item in items:
            try:
                messages = decode(item)
            except (ValueError, KeyError, TypeError, IndexError) as error:  # a newer replica's, or garbage
                log.warning(
                    "relay.unreadable", extra={"error": str(error)[:200], "payload_bytes": len(payload)}
                )
                continue
            for message in messages:
                self._receive(message)

    # -- sending ---------------------------------------------------------------------------------------

    def _pack(self) -> tuple[str, int]:
        """The next payload, and how many queued messages it carries (a message too large for any payload
        is dropped).

        One ``json.dumps`` makes a payload: it is tried with as many messages as the last payload's suggest
        would fit, and with proportionally fewer while it is too large. When fewer turn out to fill less than
        half a payload (short messages ahead of long ones), the count is looked for between the two."""
        count = min(len(self._queue), self._fits)
        fitting: tuple[str, int] | None = None  # the payload of the most messages found to fit
        too_many = 0  # the fewest messages found too many for a payload (0: none yet)
        while True:
            payload = _payload(self.origin, encode(itertools.islice(self._queue, count)))
            if len(payload) <= PAYLOAD_LIMIT:
                fitting = (payload, count)
            elif count == 1:
                self._queue.popleft()
                self.dropped += 1
                log.warning("relay.message_too_large", extra={"channel": self._channel})
                return "", 0
            else:
                too_many = count
            if fitting is None:
                count = max(1, count * (PAYLOAD_LIMIT - self._head) // (len(payload) - self._head))
            elif not too_many or too_many - fitting[1] == 1 or 2 * len(fitting[0]) >= PAYLOAD_LIMIT:
                break
            else:
                count = (fitting[1] + too_many) // 2
        payload, count = fitting
        # Each message's share of this payload (its comma included) says how many the next one can hold.
        each = (len(payload) - self._head + 1) / count
        self._fits = max(1, min(MOST_PER_PAYLOAD, int((PAYLOAD_LIMIT - self._head + 1) / each)))
        return payload, count

    async def _send(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                self._idle.set()
                await self._wake.wait()
                continue
            payload, count = self._pack()
            if not count:
                continue
            sent = [self._queue.popleft() for _ in range(count)]
            try:
                if self._sending is None or self._sending.is_closed():
                    self._sending = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                await self._sending.execute("SELECT pg_notify($1, $2)", self._channel, payload)
            except TROUBLE as error:
                log.warning("relay.send_failed", extra={"channel": self._channel, "error": str(error)[:200]})
                if self._sending is not None:
                    self._sending.terminate()
                    self._sending = None
                # Sent again first, in order; what came meanwhile beyond the queue's bound falls off its end.
                before = len(self._queue) + len(sent)
                self._queue.extendleft(reversed(sent))
                self.dropped += before - len(self._queue)
                await asyncio.sleep(self._retry_delay)


def _payload(origin: str, items: list[list[Any]]) -> str:
    return json.dumps({"o": origin, "m": items}, separators=(",", ":"))
