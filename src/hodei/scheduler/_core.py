"""Scheduler: the registry, the agents' streams and liveness, wired together, and the calls the control plane
and the agents make (the gRPC servicer translates into these; EmbeddedScheduler and the server own one).

Its parts: :class:`~hodei.scheduler._registry.WorkerRegistry` (which workers exist),
:class:`~hodei.scheduler._sessions.AgentStreams` (the agents streaming here),
:class:`~hodei.scheduler._liveness.LivenessMonitor` (who was heard when, whose lease ran out),
:class:`~hodei.scheduler._rounds.LivenessRounds` (the sweeps, the leadership, health and the gauge) and
:class:`~hodei.scheduler._relay.ReplicaRelay` (commands for streams on other replicas).
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from hodei.domain import (
    DynamicWorker,
    Job,
    JobOutcome,
    JobResult,
    ResourceUsage,
    WorkerRecord,
    WorkerStatus,
    utcnow,
)
from hodei.errors import SchedulerError, WorkerNotFound
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEventKind
from hodei.observability._metrics import SchedulerMetrics
from hodei.pools import PoolStatus, Requirements, ScaleEvent, WaitingDemand
from hodei.ports import (
    Acquired,
    AssignmentView,
    CountedTransactions,
    DrainOutcome,
    EventRelay,
    Leadership,
    RegistrationReceipt,
    RegistryStore,
    SharedLeases,
    UnregistrationStatus,
    WorkerFilter,
    WorkerPage,
)
from hodei.scheduler._allocation import Allocator
from hodei.scheduler._events import EventHub
from hodei.scheduler._leadership import SoleLeader
from hodei.scheduler._liveness import LivenessMonitor
from hodei.scheduler._registry import RegistrationVeto, WorkerRegistry
from hodei.scheduler._relay import ACK_TIMEOUT, ReplicaRelay
from hodei.scheduler._rounds import LivenessRounds
from hodei.scheduler._sessions import AgentSession, AgentStreams, once_committed

__all__ = ["AgentSession", "Scheduler"]


def _idle(record: WorkerRecord) -> bool:
    return record.status is WorkerStatus.AVAILABLE and record.assignment is None


_UNREGISTERED = WorkerCommand(
    CommandKind.SHUTDOWN, "unregistered"
)  # what an unregistered worker's agent hears


class Scheduler:
    """``metrics`` (:class:`~hodei.observability._metrics.SchedulerMetrics`, default: a private registry's) is
    shared by all its parts; the workers-by-status gauge is read from the store on every liveness tick.
    ``relay`` joins the replicas sharing the store (see :mod:`hodei.scheduler._relay`)."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        liveness: LivenessConfig | None = None,
        veto: RegistrationVeto | None = None,
        leadership: Leadership | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: SchedulerMetrics | None = None,
        relay: EventRelay | None = None,
    ) -> None:
        self.metrics = metrics or SchedulerMetrics()
        if isinstance(store, CountedTransactions):
            self.metrics.store_transactions.add(lambda: store.registration_transactions)
        self.liveness = liveness or LivenessConfig()
        self.leadership = leadership or SoleLeader()
        self.events = EventHub(clock=clock)
        self.registry = WorkerRegistry(
            store, events=self.events, clock=clock, veto=veto, metrics=self.metrics
        )
        self._monotonic = monotonic
        self.monitor = LivenessMonitor(
            self.registry,
            self.liveness,
            monotonic=monotonic,
            on_removed=self._removed,
            metrics=self.metrics,
            # Replicas on one database share their agents' leases through it; a store of one scheduler does not.
            shared=store if isinstance(store, SharedLeases) else None,
        )
        self.streams = AgentStreams(
            self.registry,
            self.monitor,
            self.liveness,
            clock=clock,
            monotonic=monotonic,
            metrics=self.metrics,
            relayed_within=0.0 if relay is None else ACK_TIMEOUT,
        )
        self.rounds = LivenessRounds(
            self.monitor,
            self.streams,
            self.registry,
            self.leadership,
            self.liveness,
            monotonic=monotonic,
            metrics=self.metrics,
        )
        self.relay = (
            None
            if relay is None
            else ReplicaRelay(
                relay, self.events, deliver=self.streams.deliver, forgotten=self.streams.forgotten
            )
        )
        self.allocator = Allocator(
            self.registry,
            tell=self._tell,
            connected_here=self.streams.sessions.__contains__,
            clock=clock,
            monotonic=monotonic,
            metrics=self.metrics,
        )

    @property
    def sessions(self) -> dict[str, AgentSession]:
        """The agents streaming to this replica, by worker id."""
        return self.streams.sessions

    @property
    def address(self) -> str:
        """Where agents reach this replica (set by the server): recorded with their leases, shown by others."""
        return self.monitor.address

    @address.setter
    def address(self, address: str) -> None:
        self.monitor.address = address

    @property
    def leading(self) -> bool:
        return self.rounds.leading

    @property
    def healthy(self) -> bool:
        """False once liveness stopped for good (``rounds.on_unhealthy`` hears it)."""
        return self.rounds.healthy

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, *, sweep: bool = True) -> None:
        """Restore the leases of the workers the store knows, open the recovery window, start sweeping."""
        now = self._monotonic()
        self.monitor.begin(now)
        await self.monitor.restore(now)
        await self.allocator.restore(now)
        await self.rounds.count_workers()
        if self.relay is not None:
            await self.relay.start()
        if sweep:
            self.rounds.start()
            self.allocator.start()

    async def tick(self, now: float) -> None:
        """One round of liveness and the gauge (the sweeper calls it; tests call it with their own clock)."""
        await self.rounds.tick(now)
        await self.allocator.tick(now)

    async def count_workers(self) -> None:
        await self.rounds.count_workers()

    async def stop(self) -> None:
        await self.rounds.stop()
        await self.allocator.stop()
        self.streams.close_all()
        self.events.close()
        if self.relay is not None:
            await self.relay.close()
        await self.leadership.release()

    async def _removed(self, worker_id: str) -> None:
        self.streams.forgotten(worker_id)

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
            once_committed(write, lambda: self.streams.unregistered(worker_id, _UNREGISTERED))
            raise
        here = self.streams.unregistered(worker_id, _UNREGISTERED)
        if not here and status is UnregistrationStatus.SUCCESS and self.relay is not None:
            # Its stream may be on another replica: that one shuts it down (nobody waits for it to say so).
            await self.relay.command(
                worker_id, _UNREGISTERED, incarnation=incarnation, close=True, wait=False
            )
        return status

    def report_orphan_removed(self, worker_id: str, *, reason: str) -> None:
        """The control plane destroyed a machine of this id that had no registration: tell the watchers."""
        self.events.publish(WorkerEventKind.ORPHAN_REMOVED, worker_id, None, reason)

    async def drain(
        self, worker_id: str, *, deadline: float = 0.0, reason: str = "", only_if_available: bool = False
    ) -> DrainOutcome:
        """Mark the worker DRAINING and tell its agent. ``only_if_available``: only a worker AVAILABLE and bound
        to no job, in the same write (else :class:`~hodei.errors.WorkerNotIdle`, nothing changed)."""
        current = await self.registry.get(worker_id)
        if current is not None and current.status is WorkerStatus.LOST and not only_if_available:
            # Nobody is there to drain; the worker stays LOST (and expires as LOST workers do).
            return DrainOutcome(self.view(current), delivered=False)
        write = asyncio.ensure_future(
            self.registry.transition(
                worker_id,
                WorkerStatus.DRAINING,
                reason=reason or "drain requested",
                only_if=_idle if only_if_available else None,
            )
        )
        command = WorkerCommand(CommandKind.DRAIN, reason, deadline)
        try:
            record = await asyncio.shield(write)
        except asyncio.CancelledError:
            # The caller went away, but the worker may be DRAINING in the store: its agent hears it all the same.
            once_committed(write, lambda: self.streams.push(worker_id, command))
            raise
        delivered = await self._tell(record, command)
        return DrainOutcome(self.view(record), delivered=delivered)

    async def shutdown(self, worker_id: str, *, reason: str = "") -> bool:
        record = await self.registry.get(worker_id)
        if record is None:
            raise WorkerNotFound(f"worker {worker_id!r} is not registered", worker_id=worker_id)
        return await self._tell(record, WorkerCommand(CommandKind.SHUTDOWN, reason))

    async def _tell(self, record: WorkerRecord, command: WorkerCommand) -> bool:
        """Push ``command`` down the worker's stream, here or (relayed) on another replica; whether it went."""
        if self.streams.push(record.worker_id, command):
            return True
        if self.relay is None or record.lease_ttl is None:  # no replicas, or no agent: nobody to tell
            return False
        return await self.relay.command(record.worker_id, command, incarnation=record.incarnation)

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
        return self.streams.view(record)

    # -- what agents do ----------------------------------------------------------------------------------

    async def hello(
        self, worker: DynamicWorker, running_jobs: Sequence[str] = ()
    ) -> tuple[RegistrationReceipt, AgentSession]:
        """An agent connected: register or attach to its worker, hand it a lease and a session (with the
        heartbeat interval and lease TTL for the fleet connected now: :meth:`LivenessConfig.pace`)."""
        return await self.streams.hello(worker, running_jobs)

    async def heartbeat(self, session: AgentSession, usage: ResourceUsage) -> None:
        await self.streams.heartbeat(session, usage)

    async def report_status(
        self, session: AgentSession, status: WorkerStatus, *, drained: bool, reason: str
    ) -> None:
        await self.streams.report_status(session, status, drained=drained, reason=reason)

    def goodbye(self, session: AgentSession) -> None:
        """The stream ended. The lease runs on: a worker that does not come back becomes LOST."""
        self.streams.goodbye(session)

    async def job_finished(self, session: AgentSession, assignment_id: str, result: JobResult) -> None:
        """The agent ran the job of ``assignment_id`` (a RUN_JOB command) to its end."""
        await self.allocator.assignments.job_finished(session.worker_id, assignment_id, result)

    # -- resource pools ----------------------------------------------------------------------------------

    async def acquire(
        self,
        job_id: str,
        requirements: Requirements,
        *,
        job: Job | None = None,
        priority: int = 0,
        wait: float = 0.0,
        lease_ttl: float = 0.0,
        trace_context: Mapping[str, str] | None = None,
    ) -> Acquired:
        acquired = await self.allocator.acquire(
            job_id,
            requirements,
            job=job,
            priority=priority,
            wait=wait,
            lease_ttl=lease_ttl,
            trace_context=trace_context,
        )
        return Acquired(acquired.assignment, self.view(acquired.record), acquired.created)

    async def renew(self, assignment_id: str, *, wait: float = 0.0) -> AssignmentView:
        return await self.allocator.assignments.renew(assignment_id, wait=wait)

    async def release(
        self,
        assignment_id: str,
        *,
        outcome: JobOutcome = JobOutcome.SUCCEEDED,
        recycle: bool = False,
        reason: str = "",
    ) -> AssignmentView:
        return await self.allocator.assignments.release(
            assignment_id, outcome=outcome, recycle=recycle, reason=reason
        )

    def demand(self) -> builtins.list[WaitingDemand]:
        return self.allocator.demand()

    async def apply_pools(self, source: str, text: str) -> builtins.list[PoolStatus]:
        return await self.allocator.apply_pools(source, text)

    def report_scale(self, event: ScaleEvent) -> None:
        self.allocator.report_scale(event)

    async def list_pools(self) -> builtins.list[PoolStatus]:
        return await self.allocator.pool_statuses()
