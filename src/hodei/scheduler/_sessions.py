"""AgentStreams: the agents' open Connect streams on this replica, and what they say (hello, heartbeats, status
reports, goodbye) and hear (commands).

What a worker is known to be doing when it comes back is decided once (:func:`status_on_return`): at a hello, at
the first heartbeat after it was found LOST, and when another replica found it LOST while it streamed here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from hodei.domain import DynamicWorker, FieldViolation, ResourceUsage, WorkerRecord, WorkerStatus
from hodei.errors import InvalidWorkerData, WorkerNotFound
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEventKind
from hodei.observability._metrics import STREAM_CONNECT_KINDS, SchedulerMetrics
from hodei.ports import RegistrationReceipt, RelayedCommand
from hodei.scheduler._liveness import LivenessMonitor
from hodei.scheduler._registry import WorkerRegistry

__all__ = [
    "AGENT_STATUSES",
    "AgentSession",
    "AgentStreams",
    "CommandQueue",
    "once_committed",
    "status_on_return",
]

AGENT_STATUSES = frozenset({WorkerStatus.AVAILABLE, WorkerStatus.BUSY, WorkerStatus.DRAINING})


def status_on_return(*, draining: bool, running_jobs: bool) -> WorkerStatus:
    """The status of a worker heard again (a new stream, or heartbeats after silence): a worker told to drain
    stays DRAINING (a reconnect must not put it back to work); one running jobs is BUSY; else AVAILABLE."""
    if draining:
        return WorkerStatus.DRAINING
    return WorkerStatus.BUSY if running_jobs else WorkerStatus.AVAILABLE


class CommandQueue:
    """The commands waiting for one agent's stream, for one reader: ``asyncio.Queue``'s ``get``,
    ``get_nowait``, ``put_nowait``, ``qsize`` and ``empty`` at a fraction of its memory. A Queue holds four
    deques and an Event (3.4 KB); most agents never get a command, so the deque is made by the first."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[WorkerCommand | None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: WorkerCommand | None) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> WorkerCommand | None:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> WorkerCommand | None:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items


@dataclass(eq=False, slots=True)
class AgentSession:
    """One open Connect stream. ``commands`` feeds the stream's writer; ``None`` ends it."""

    worker_id: str
    incarnation: int
    heartbeat_interval: float = 5.0  # what this agent was told at its hello (LivenessConfig.pace)
    lease_ttl: float = 15.0
    commands: CommandQueue = field(default_factory=CommandQueue)
    usage: ResourceUsage | None = None
    last_heartbeat_at: datetime | None = None
    closed: bool = False
    ended: bool = False  # goodbye was said: no longer counted among the open streams
    draining: bool = False  # told to drain, or said it drains: it stays DRAINING whatever happens

    def push(self, command: WorkerCommand) -> None:
        if command.kind is CommandKind.DRAIN:
            self.draining = True
        self.commands.put_nowait(command)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.commands.put_nowait(None)


class AgentStreams:
    """The sessions of the agents streaming to this replica (``sessions``, by worker id), over the registry;
    each agent that speaks is heard by the liveness ``monitor``."""

    def __init__(
        self,
        registry: WorkerRegistry,
        monitor: LivenessMonitor,
        liveness: LivenessConfig,
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        metrics: SchedulerMetrics,
        relayed_within: float = 0.0,
    ) -> None:
        """``relayed_within``: the seconds another replica's word takes to arrive here (0: no replicas relay)."""
        self.sessions: dict[str, AgentSession] = {}
        self._relayed_within = relayed_within
        self._vanishing: dict[str, asyncio.TimerHandle] = {}  # found gone, waiting for another replica's word
        self._registry = registry
        self._monitor = monitor
        self._liveness = liveness
        self._clock = clock
        self._monotonic = monotonic
        self._metrics = metrics
        self._connects = {kind: metrics.stream_connects.labels(kind) for kind in STREAM_CONNECT_KINDS}

    async def hello(
        self, worker: DynamicWorker, running_jobs: Sequence[str] = ()
    ) -> tuple[RegistrationReceipt, AgentSession]:
        others = len(self.sessions) - (worker.worker_id in self.sessions)
        interval, ttl = self._liveness.pace(others + 1)
        stored = await self._registry.get(worker.worker_id)
        # A worker asked to drain stays draining across its agent's reconnections (each a new incarnation),
        # and the new stream hears the drain again.
        draining = stored is not None and stored.status is WorkerStatus.DRAINING
        status = status_on_return(draining=draining, running_jobs=bool(running_jobs))
        write = asyncio.ensure_future(
            self._registry.register(worker, lease_ttl=ttl, status=status, running_jobs=running_jobs)
        )
        try:
            receipt = await asyncio.shield(write)
        except asyncio.CancelledError:
            # The agent went away, but its registration may still commit (a SQLite write already in its
            # thread, a PostgreSQL commit already sent). If it does, the worker gets a lease and no session:
            # it is found LOST unless its agent comes back, never left AVAILABLE with nobody there.
            once_committed(write, lambda: self._leased_without_session(worker.worker_id, ttl))
            raise
        previous = self.sessions.get(worker.worker_id)
        if previous is not None:
            previous.close()
        self._stop_waiting(worker.worker_id)  # a wait for word about the previous stream ends with it
        session = AgentSession(worker.worker_id, worker.incarnation, interval, ttl)
        self._connects["first" if receipt.created else "reconnect"].inc()
        self._metrics.streams_open.inc()
        if draining:
            session.push(WorkerCommand(CommandKind.DRAIN, "still draining"))
        bound = receipt.record.assignment
        for assignment_id in running_jobs:
            if bound is None or bound.assignment_id != assignment_id:
                # Its holder was told it ended (the worker went LOST, the holder let go): it runs elsewhere now.
                reason = "the assignment ended while the agent was away"
                session.push(WorkerCommand(CommandKind.CANCEL_JOB, reason, assignment_id=assignment_id))
        self.sessions[worker.worker_id] = session
        self._monitor.connected(worker.worker_id, ttl, self._monotonic())
        self._registry.events.publish(
            WorkerEventKind.CONNECTED, worker.worker_id, None, f"incarnation {worker.incarnation}"
        )
        return RegistrationReceipt(self.view(receipt.record), receipt.created), session

    def _leased_without_session(self, worker_id: str, ttl: float) -> None:
        self._monitor.heard(worker_id, ttl, self._monotonic())
        self._monitor.forget(worker_id)

    def _current(self, session: AgentSession) -> bool:
        return self.sessions.get(session.worker_id) is session

    async def heartbeat(self, session: AgentSession, usage: ResourceUsage) -> None:
        if not self._current(session):
            return
        lag = self._monitor.beat(session.worker_id, session.lease_ttl, self._monotonic())
        if lag is not None:
            self._metrics.heartbeat_lag.observe(lag)
        session.usage = usage
        session.last_heartbeat_at = self._clock()
        if self._monitor.is_lost(session.worker_id):
            before = self._monitor.status_before_lost(session.worker_id)
            status = status_on_return(
                draining=before is WorkerStatus.DRAINING, running_jobs=bool(usage.running_jobs)
            )
            # Forgotten as LOST only once the store says it is back: a failed write is tried again at the
            # next heartbeat.
            await self._registry.transition(session.worker_id, status, reason="heartbeats resumed")
            self._monitor.forget(session.worker_id)

    async def report_status(
        self, session: AgentSession, status: WorkerStatus, *, drained: bool, reason: str
    ) -> None:
        if status not in AGENT_STATUSES:
            allowed = ", ".join(sorted(s.value for s in AGENT_STATUSES))
            raise InvalidWorkerData(
                f"an agent may report {allowed}, not {status.value}",
                worker_id=session.worker_id,
                violations=[FieldViolation("status_change.status", f"must be one of {allowed}")],
            )
        if self._current(session):
            session.draining = session.draining or status is WorkerStatus.DRAINING
            # An agent that speaks is alive: a report renews its lease as a heartbeat would.
            self._monitor.heard(session.worker_id, session.lease_ttl, self._monotonic())
            await self._registry.transition(session.worker_id, status, drained=drained, reason=reason)
            self._monitor.forget(session.worker_id)

    def goodbye(self, session: AgentSession) -> None:
        session.close()
        self._end(session)
        if self._current(session):
            del self.sessions[session.worker_id]
            self._stop_waiting(session.worker_id)
            self._monitor.disconnected(session.worker_id)
            self._registry.events.publish(WorkerEventKind.DISCONNECTED, session.worker_id)

    def _end(self, session: AgentSession) -> None:
        """The session's stream is no longer open (counted once, whoever ends it first)."""
        if not session.ended:
            session.ended = True
            self._metrics.streams_open.dec()

    def close_all(self) -> None:
        for handle in self._vanishing.values():
            handle.cancel()
        self._vanishing.clear()
        for session in list(self.sessions.values()):
            session.close()
            self._end(session)
        self.sessions.clear()

    def view(self, record: WorkerRecord) -> WorkerRecord:
        """The record with the live facts of its agent's stream."""
        session = self.sessions.get(record.worker_id)
        if session is None:
            if record.connected_via and (
                record.connected_via == self._monitor.address or record.status is WorkerStatus.LOST
            ):
                return replace(record, connected_via="")  # its stream was here and closed, or it went quiet
            return record
        return replace(
            record,
            connected=True,
            usage=session.usage,
            last_heartbeat_at=session.last_heartbeat_at,
            connected_via="",
        )

    def push(self, worker_id: str, command: WorkerCommand) -> bool:
        """Push ``command`` down the worker's stream if it is here; whether it was."""
        session = self.sessions.get(worker_id)
        if session is not None:
            session.push(command)
        return session is not None

    def deliver(self, relayed: RelayedCommand) -> bool:
        """Another replica's command for a worker: pushed down its stream if it is here (and not newer)."""
        session = self.sessions.get(relayed.worker_id)
        if session is None or (relayed.incarnation is not None and session.incarnation > relayed.incarnation):
            return False
        if relayed.close:  # unregistered on the other replica: as unregister() does here
            return self.unregistered(relayed.worker_id, relayed.command)
        session.push(relayed.command)
        return True

    def unregistered(self, worker_id: str, command: WorkerCommand) -> bool:
        """Forget an unregistered worker and end its stream here, telling it ``command`` first; whether its
        stream was here."""
        self._monitor.unregistered(worker_id)
        self._stop_waiting(worker_id)
        session = self.sessions.pop(worker_id, None)
        if session is not None:
            session.push(command)
            session.close()
        return session is not None

    def forgotten(self, worker_id: str) -> None:
        """The worker is gone from the store: an agent still streaming here must register again."""
        self._stop_waiting(worker_id)
        self.push(worker_id, WorkerCommand(CommandKind.REREGISTER, "the scheduler forgot this worker"))

    def vanished(self, worker_id: str) -> None:
        """This replica's lease sync found the worker gone from the store under its stream here, with no word
        why. Unregistered through another replica, it hears so from that replica (relayed): its agent is shut
        down, as an operator's unregistration must end it, never bring it back. So the agent is told to
        register again only if its stream is still open once that word had time to come (at once when no
        replicas relay, or when another replica's expiry is relayed meanwhile)."""
        session = self.sessions.get(worker_id)
        if session is None or worker_id in self._vanishing:
            return
        if not self._relayed_within:
            self.forgotten(worker_id)
            return

        def unexplained() -> None:
            self._vanishing.pop(worker_id, None)
            if self.sessions.get(worker_id) is session:
                self.forgotten(worker_id)

        loop = asyncio.get_running_loop()
        self._vanishing[worker_id] = loop.call_later(self._relayed_within, unexplained)

    def _stop_waiting(self, worker_id: str) -> None:
        handle = self._vanishing.pop(worker_id, None)
        if handle is not None:
            handle.cancel()

    async def resume(self, worker_ids: Iterable[str]) -> None:
        """Workers found LOST by the leader (this replica's news came too late) that stream here: back to what
        they were doing (a worker told to drain stays draining)."""
        for worker_id in worker_ids:
            session = self.sessions.get(worker_id)
            if session is None:
                continue
            running = session.usage is not None and bool(session.usage.running_jobs)
            status = status_on_return(draining=session.draining, running_jobs=running)
            with contextlib.suppress(WorkerNotFound):  # unregistered meanwhile: it stays gone
                await self._registry.transition(worker_id, status, reason="heartbeats resumed")


def once_committed(write: asyncio.Future[Any], follow: Callable[[], object]) -> None:
    """Run ``follow`` when ``write`` (a store write whose caller went away) has committed; not if it failed."""

    def done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            follow()

    write.add_done_callback(done)
