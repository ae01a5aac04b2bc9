"""Scheduler: the registry, the agents' sessions and the liveness monitor, wired together.

The gRPC servicer translates into these calls; EmbeddedScheduler and the server own one of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from hodei.domain import DynamicWorker, FieldViolation, ResourceUsage, WorkerRecord, WorkerStatus, utcnow
from hodei.errors import InvalidWorkerData, SchedulerError, SchedulerUnavailable, WorkerNotFound
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEventKind
from hodei.observability._metrics import STREAM_CONNECT_KINDS, SWEEP_FAILURE_KINDS, SchedulerMetrics
from hodei.ports import (
    DrainOutcome,
    EventRelay,
    Leadership,
    RegistrationReceipt,
    RegistryStore,
    RelayedCommand,
    SharedLeases,
    UnregistrationStatus,
    WorkerFilter,
    WorkerPage,
)
from hodei.scheduler._events import EventHub
from hodei.scheduler._leadership import SoleLeader
from hodei.scheduler._leases import LeaseTable
from hodei.scheduler._liveness import LivenessMonitor
from hodei.scheduler._registry import Admission, WorkerRegistry
from hodei.scheduler._relay import ReplicaRelay

__all__ = ["AgentSession", "Scheduler"]

log = logging.getLogger(__name__)

_UNREGISTERED = WorkerCommand(
    CommandKind.SHUTDOWN, "unregistered"
)  # what an unregistered worker's agent hears

AGENT_STATUSES = frozenset({WorkerStatus.AVAILABLE, WorkerStatus.BUSY, WorkerStatus.DRAINING})


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
    last_beat: float | None = None  # the monotonic time of the last heartbeat (heartbeat lag)
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


class Scheduler:
    """``metrics`` (:class:`~hodei.observability._metrics.SchedulerMetrics`, default: a private registry's) is
    shared by the registry and the liveness monitor; the workers-by-status gauge is read from the store on
    every liveness tick. ``relay`` joins the replicas sharing the store (see :mod:`hodei.scheduler._relay`)."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        liveness: LivenessConfig | None = None,
        admission: Admission | None = None,
        leadership: Leadership | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: SchedulerMetrics | None = None,
        relay: EventRelay | None = None,
    ) -> None:
        self.metrics = metrics or SchedulerMetrics()
        self._connects = {kind: self.metrics.stream_connects.labels(kind) for kind in STREAM_CONNECT_KINDS}
        self._workers = {status: self.metrics.workers.labels(status.value) for status in WorkerStatus}
        self._sweep_failures = {
            kind: self.metrics.liveness_sweep_failures.labels(kind) for kind in SWEEP_FAILURE_KINDS
        }
        self.liveness = liveness or LivenessConfig()
        self.leadership = leadership or SoleLeader()
        # Replicas on one database share their agents' leases through it; a store of one scheduler does not.
        self._shared = store if isinstance(store, SharedLeases) else None
        self._heard: set[str] = set()  # workers heard from since the last lease sync
        self._left: set[str] = set()  # workers whose stream closed here since the last lease sync
        self.address = ""  # where agents reach this replica (set by the server): recorded with their leases
        self.leading = False
        self.on_leadership: Callable[[bool], None] | None = None
        self.events = EventHub(clock=clock)
        self.registry = WorkerRegistry(
            store, events=self.events, clock=clock, admission=admission, metrics=self.metrics
        )
        self.leases = LeaseTable()
        self.sessions: dict[str, AgentSession] = {}
        self._clock = clock
        self._monotonic = monotonic
        self.monitor = LivenessMonitor(
            self.registry,
            self.leases,
            self.liveness,
            monotonic=monotonic,
            on_removed=self._removed,
            metrics=self.metrics,
        )
        self.relay = (
            None
            if relay is None
            else ReplicaRelay(relay, self.events, deliver=self._deliver_relayed, forgotten=self._forgotten)
        )
        self._sweeper: asyncio.Task[None] | None = None
        self.healthy = True
        self.on_unhealthy: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, *, sweep: bool = True) -> None:
        """Restore the leases of the workers the store knows, open the recovery window, start sweeping."""
        now = self._monotonic()
        self.monitor.begin(now)
        await self._restore(now)
        await self.count_workers()
        if self.relay is not None:
            await self.relay.start()
        if sweep:
            self._sweeper = asyncio.create_task(self._run_liveness(), name="hodei-liveness")
            self._sweeper.add_done_callback(self._sweeper_ended)

    async def _restore(self, now: float, *, takeover: bool = False) -> None:
        """What the store says of leases: every leased worker's lease starts now, LOST workers are LOST.

        A replica taking over expiry cannot know since when a worker has been LOST: it counts the grace from
        the takeover, and forgets what it noted in an earlier spell (those workers may have come back since).
        It forgets the leases it renewed as a follower too (its agents may have gone elsewhere, or been
        removed, since): the store's lease ages, read next, are the truth it starts from.
        """
        if takeover:
            self.monitor.forget_lost()
            self.leases.clear()
        for record in await self.registry.all_records():
            if record.lease_ttl is None:
                continue
            if record.status is WorkerStatus.LOST:
                self.monitor.mark_lost_since(record.worker_id, now)
            elif self._shared is None:
                self.leases.renew(record.worker_id, record.lease_ttl, now)

    async def _run_liveness(self) -> None:
        """Every sweep interval: share what this replica heard, and sweep if this replica leads.

        Whatever fails makes a tick fail, never the sweeper: it is logged, counted
        (``hodei_liveness_sweep_failures_total``) and tried again at the next tick. A sweeper that stopped
        would leave every silent worker AVAILABLE for good (and a PostgreSQL leader keeps its lock, so no other
        replica would sweep either). Every step of a tick is written store first, so a tick cut short leaves
        nothing half-done.
        """
        while True:
            await asyncio.sleep(self.liveness.sweep_interval)
            try:
                await self.tick(self._monotonic())
            except SchedulerUnavailable as error:
                self._sweep_failures["unavailable"].inc()
                log.warning("liveness.sweep_skipped", extra={"error": str(error)})
            except Exception:
                self._sweep_failures["other"].inc()
                log.exception("liveness.sweep_failed")

    async def tick(self, now: float) -> None:
        """One round of liveness, then the workers-by-status gauge from the store, on every replica (the
        sweeper calls it; tests call it with their own clock)."""
        await self._liveness_round(now)
        await self.count_workers()

    async def count_workers(self) -> None:
        """Set ``hodei_workers{status}`` from the store: every status, 0 for those nobody has."""
        counts = await self.registry.store.count_by_status()
        for status, series in self._workers.items():
            series.set(counts.get(status, 0))

    async def _liveness_round(self, now: float) -> None:
        if self._shared is not None:
            await self._share_heard()
        leading = await self.leadership.acquire()
        if leading != self.leading:
            if leading and self._shared is not None:
                # Taking over: only once the store has been read is the takeover done (a failure here is
                # retried whole at the next tick).
                self.monitor.resume(now)
                await self._restore(now, takeover=True)
            self.leading = leading
            self.metrics.lease_leader.set(1 if leading else 0)
            if self._shared is not None:  # a scheduler alone with its store leads without an election
                if leading:
                    log.info("leadership.acquired")
                else:
                    log.warning("leadership.released")
            if self.on_leadership is not None:
                self.on_leadership(leading)
        if not leading:
            self.monitor.resume(now)  # a follower does not sweep; when it leads, it starts from now
            return
        if self._shared is not None:
            for worker_id, ttl, age in await self._shared.lease_ages():
                heard = now - age
                expiry = self.leases.expires_at(worker_id)
                if expiry is None or expiry < heard + ttl:
                    self.leases.renew(worker_id, ttl, heard)
        await self.monitor.sweep(now)

    def _hear(self, worker_id: str) -> None:
        """Note that a worker was heard from, for the other replicas (a scheduler alone keeps no such list)."""
        if self._shared is not None:
            self._heard.add(worker_id)

    async def _share_heard(self) -> None:
        assert self._shared is not None
        heard, self._heard = self._heard, set()
        left, self._left = self._left - self.sessions.keys(), set()  # minus those that came back here
        if not heard and not left:
            return
        try:
            found = await self._shared.touch(sorted(heard), stream_at=self.address, left=sorted(left))
        except BaseException:  # not shared (whatever stopped it, a cancel included): shared next time
            self._heard |= heard
            self._left |= left
            raise
        for worker_id in found.gone:  # deleted under its open stream (by another replica)
            self._forgotten(worker_id)
        for worker_id in found.lost:
            # The leader found it silent (this replica's news came too late); it is not: bring it back, to
            # what it was doing (a worker told to drain stays draining).
            session = self.sessions.get(worker_id)
            if session is None:
                continue
            if session.draining:
                status = WorkerStatus.DRAINING
            elif session.usage is not None and session.usage.running_jobs:
                status = WorkerStatus.BUSY
            else:
                status = WorkerStatus.AVAILABLE
            with contextlib.suppress(WorkerNotFound):  # unregistered meanwhile: it stays gone
                await self.registry.transition(worker_id, status, reason="heartbeats resumed")

    def _sweeper_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # Liveness has stopped: nobody would ever be found LOST. Say so, and tell whoever watches health.
        log.critical(
            "liveness.sweeper_died",
            extra={"consequence": "no worker will be found LOST"},
            exc_info=task.exception(),
        )
        self.healthy = False
        if self.on_unhealthy is not None:
            self.on_unhealthy()

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            # A sweeper that died has been reported by _sweeper_ended; stopping does not raise it again.
            await asyncio.wait([self._sweeper])
            self._sweeper = None
        for session in list(self.sessions.values()):
            session.close()
            self._end(session)
        self.sessions.clear()
        self.events.close()
        if self.relay is not None:
            await self.relay.close()
        await self.leadership.release()

    # -- what the control plane does ---------------------------------------------------------------------

    async def register(self, worker: DynamicWorker) -> RegistrationReceipt:
        receipt = await self.registry.register(worker)
        return RegistrationReceipt(self.view(receipt.record), receipt.created)

    async def register_record(self, record: WorkerRecord) -> RegistrationReceipt:
        receipt = await self.registry.register_record(record)
        return RegistrationReceipt(self.view(receipt.record), receipt.created)

    async def register_records(
        self, records: Sequence[WorkerRecord]
    ) -> list[RegistrationReceipt | SchedulerError]:
        return await self.registry.register_records(records)

    async def unregister(
        self, worker_id: str, *, reason: str = "", incarnation: int | None = None
    ) -> UnregistrationStatus:
        """Remove the worker and shut its agent down; ``incarnation`` fences it (StaleIncarnation: nothing
        changes, a newer agent keeps its registration and its stream)."""
        write = asyncio.ensure_future(
            self.registry.unregister(worker_id, reason=reason, incarnation=incarnation)
        )
        try:
            status = await asyncio.shield(write)
        except asyncio.CancelledError:
            _once_committed(write, lambda: self._forget_unregistered(worker_id))
            raise
        here = self._forget_unregistered(worker_id)
        if not here and status is UnregistrationStatus.SUCCESS and self.relay is not None:
            # Its stream may be on another replica: that one shuts it down (nobody waits for it to say so).
            await self.relay.command(
                worker_id, _UNREGISTERED, incarnation=incarnation, close=True, wait=False
            )
        return status

    def _forget_unregistered(self, worker_id: str, command: WorkerCommand = _UNREGISTERED) -> bool:
        """Forget an unregistered worker's lease and end its stream here, telling it ``command`` first; whether
        its stream was here."""
        self.leases.drop(worker_id)
        self.monitor.forget(worker_id)
        session = self.sessions.pop(worker_id, None)
        if session is not None:
            session.push(command)
            session.close()
        return session is not None

    def report_orphan_removed(self, worker_id: str, *, reason: str) -> None:
        """The control plane destroyed a machine of this id that had no registration: tell the watchers."""
        self.events.publish(WorkerEventKind.ORPHAN_REMOVED, worker_id, None, reason)

    async def drain(self, worker_id: str, *, deadline: float = 0.0, reason: str = "") -> DrainOutcome:
        current = await self.registry.get(worker_id)
        if current is not None and current.status is WorkerStatus.LOST:
            # Nobody is there to drain; the worker stays LOST (and expires as LOST workers do).
            return DrainOutcome(self.view(current), delivered=False)
        write = asyncio.ensure_future(
            self.registry.transition(worker_id, WorkerStatus.DRAINING, reason=reason or "drain requested")
        )
        command = WorkerCommand(CommandKind.DRAIN, reason, deadline)
        try:
            record = await asyncio.shield(write)
        except asyncio.CancelledError:
            # The caller went away, but the worker may be DRAINING in the store: its agent hears it all the same.
            _once_committed(write, lambda: self._tell_drain(worker_id, command))
            raise
        delivered = await self._tell(record, command)
        return DrainOutcome(self.view(record), delivered=delivered)

    def _tell_drain(self, worker_id: str, command: WorkerCommand) -> bool:
        session = self.sessions.get(worker_id)
        if session is not None:
            session.push(command)
        return session is not None

    async def shutdown(self, worker_id: str, *, reason: str = "") -> bool:
        record = await self.registry.get(worker_id)
        if record is None:
            raise WorkerNotFound(f"worker {worker_id!r} is not registered", worker_id=worker_id)
        return await self._tell(record, WorkerCommand(CommandKind.SHUTDOWN, reason))

    async def _tell(self, record: WorkerRecord, command: WorkerCommand) -> bool:
        """Push ``command`` down the worker's stream, here or (relayed) on another replica; whether it went."""
        session = self.sessions.get(record.worker_id)
        if session is not None:
            session.push(command)
            return True
        if self.relay is None or record.lease_ttl is None:  # no replicas, or no agent: nobody to tell
            return False
        return await self.relay.command(record.worker_id, command, incarnation=record.incarnation)

    def _deliver_relayed(self, relayed: RelayedCommand) -> bool:
        """Another replica's command for a worker: pushed down its stream if it is here (and not newer)."""
        session = self.sessions.get(relayed.worker_id)
        if session is None or (relayed.incarnation is not None and session.incarnation > relayed.incarnation):
            return False
        if relayed.close:  # unregistered on the other replica: as unregister() does here
            return self._forget_unregistered(relayed.worker_id, relayed.command)
        session.push(relayed.command)
        return True

    async def get(self, worker_id: str) -> WorkerRecord | None:
        record = await self.registry.get(worker_id)
        return None if record is None else self.view(record)

    async def list(
        self, worker_filter: WorkerFilter | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> WorkerPage:
        page = await self.registry.list(worker_filter, page_size=page_size, page_token=page_token)
        return WorkerPage([self.view(r) for r in page.workers], page.next_page_token)

    def view(self, record: WorkerRecord) -> WorkerRecord:
        """The record with the live facts of its agent's stream."""
        session = self.sessions.get(record.worker_id)
        if session is None:
            if record.connected_via and (
                record.connected_via == self.address or record.status is WorkerStatus.LOST
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

    # -- what agents do ----------------------------------------------------------------------------------

    async def hello(
        self, worker: DynamicWorker, running_jobs: Sequence[str] = ()
    ) -> tuple[RegistrationReceipt, AgentSession]:
        """An agent connected: register or attach to its worker, hand it a lease and a session (with the
        heartbeat interval and lease TTL for the fleet connected now: :meth:`LivenessConfig.pace`)."""
        others = len(self.sessions) - (worker.worker_id in self.sessions)
        interval, ttl = self.liveness.pace(others + 1)
        stored = await self.registry.get(worker.worker_id)
        # A worker asked to drain stays draining across its agent's reconnections (each a new incarnation),
        # and the new stream hears the drain again: a reconnect must not put it back to work.
        draining = stored is not None and stored.status is WorkerStatus.DRAINING
        if draining:
            status = WorkerStatus.DRAINING
        elif running_jobs:
            status = WorkerStatus.BUSY
        else:
            status = WorkerStatus.AVAILABLE
        write = asyncio.ensure_future(self.registry.register(worker, lease_ttl=ttl, status=status))
        try:
            receipt = await asyncio.shield(write)
        except asyncio.CancelledError:
            # The agent went away, but its registration may still commit (a SQLite write already in its
            # thread, a PostgreSQL commit already sent). If it does, the worker gets a lease and no session:
            # it is found LOST unless its agent comes back, never left AVAILABLE with nobody there.
            _once_committed(write, lambda: self._leased_without_session(worker.worker_id, ttl))
            raise
        previous = self.sessions.get(worker.worker_id)
        if previous is not None:
            previous.close()
        session = AgentSession(worker.worker_id, worker.incarnation, interval, ttl)
        self._connects["first" if receipt.created else "reconnect"].inc()
        self.metrics.streams_open.inc()
        if draining:
            session.push(WorkerCommand(CommandKind.DRAIN, "still draining"))
        self.sessions[worker.worker_id] = session
        self._hear(worker.worker_id)
        self.leases.renew(worker.worker_id, ttl, self._monotonic())
        self.monitor.forget(worker.worker_id)
        self.events.publish(
            WorkerEventKind.CONNECTED, worker.worker_id, None, f"incarnation {worker.incarnation}"
        )
        return RegistrationReceipt(self.view(receipt.record), receipt.created), session

    def _leased_without_session(self, worker_id: str, ttl: float) -> None:
        self._hear(worker_id)
        self.leases.renew(worker_id, ttl, self._monotonic())
        self.monitor.forget(worker_id)

    def _current(self, session: AgentSession) -> bool:
        return self.sessions.get(session.worker_id) is session

    async def heartbeat(self, session: AgentSession, usage: ResourceUsage) -> None:
        if not self._current(session):
            return
        now = self._monotonic()
        if session.last_beat is not None:
            self.metrics.heartbeat_lag.observe(now - session.last_beat)
        session.last_beat = now
        session.usage = usage
        session.last_heartbeat_at = self._clock()
        self._hear(session.worker_id)
        self.leases.renew(session.worker_id, session.lease_ttl, now)
        if self.monitor.is_lost(session.worker_id):
            before = self.monitor.status_before_lost(session.worker_id)
            if before is WorkerStatus.DRAINING:
                status = WorkerStatus.DRAINING
            else:
                status = WorkerStatus.BUSY if usage.running_jobs else WorkerStatus.AVAILABLE
            # Forgotten as LOST only once the store says it is back: a failed write is tried again at the
            # next heartbeat.
            await self.registry.transition(session.worker_id, status, reason="heartbeats resumed")
            self.monitor.forget(session.worker_id)

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
            self._hear(session.worker_id)
            self.leases.renew(session.worker_id, session.lease_ttl, self._monotonic())
            await self.registry.transition(session.worker_id, status, drained=drained, reason=reason)
            self.monitor.forget(session.worker_id)

    def goodbye(self, session: AgentSession) -> None:
        """The stream ended. The lease runs on: a worker that does not come back becomes LOST."""
        session.close()
        self._end(session)
        if self._current(session):
            del self.sessions[session.worker_id]
            if self._shared is not None and self.address:
                self._left.add(session.worker_id)
            self.events.publish(WorkerEventKind.DISCONNECTED, session.worker_id)

    def _end(self, session: AgentSession) -> None:
        """The session's stream is no longer open (counted once, whoever ends it first)."""
        if not session.ended:
            session.ended = True
            self.metrics.streams_open.dec()

    async def _removed(self, worker_id: str) -> None:
        self._forgotten(worker_id)

    def _forgotten(self, worker_id: str) -> None:
        """The worker is gone from the store: an agent still streaming here must register again."""
        session = self.sessions.get(worker_id)
        if session is not None:
            session.push(WorkerCommand(CommandKind.REREGISTER, "the scheduler forgot this worker"))


def _once_committed(write: asyncio.Future[Any], follow: Callable[[], object]) -> None:
    """Run ``follow`` when ``write`` (a store write whose caller went away) has committed; not if it failed."""

    def done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            follow()

    write.add_done_callback(done)
