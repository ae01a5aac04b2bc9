"""Allocator: workers bound to jobs — acquired, renewed, released — and the queue of acquires that wait.

The truth is the registry: a worker is bound while its stored record holds the :class:`Assignment` (BUSY).
Binding is one atomic read-modify-write of that record (still AVAILABLE, same incarnation, not bound), so two
acquires never take one worker, and the store's unique job index makes a retried acquire find the first
assignment instead of binding a second worker. What the allocator keeps in memory is derived or bounded:

- the waiting acquires (a future each), served in order by :func:`hodei.pools.match` — priority, then arrival;
  best fit — from the AVAILABLE workers the store lists at that moment;
- each assignment's lease (:class:`~hodei.scheduler._liveness.LeaseTable`, the holder's renewals; started
  afresh after a restart), and the results of assignments that ended, kept a while for their holders.

An assignment ends when its holder releases it, its agent reports the job finished, its holder stops renewing
(ABANDONED), or its worker goes LOST, is removed or restarts (WORKER_LOST): found when it happens (the event)
and, whatever was missed, when anyone asks (the record no longer holds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from hodei._quoting import quote_short
from hodei._waiting import wait_until_set
from hodei.domain import (
    DEFAULT_ASSIGNMENT_TTL,
    Assignment,
    FieldViolation,
    Job,
    JobOutcome,
    JobResult,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
    utcnow,
    validate_assignment_ttl,
    validate_job_id,
)
from hodei.errors import (
    InvalidWorkerData,
    JobAlreadyBound,
    NoWorkerFits,
    SchedulerTimeout,
    WorkerNotFound,
)
from hodei.lifecycle import CommandKind, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.observability._metrics import SchedulerMetrics
from hodei.pools import PoolStatus, Requirements, ScaleEvent, Waiter, WaitingDemand, match
from hodei.ports import Acquired, AssignmentView, BoundJobs, RegistryStore, WorkerFilter
from hodei.scheduler._ended import Ended, EndedAssignments
from hodei.scheduler._free import FreeWorkers
from hodei.scheduler._liveness import LeaseTable
from hodei.scheduler._pool_book import PoolBook
from hodei.scheduler._registry import WorkerRegistry

__all__ = ["Allocator"]

log = logging.getLogger(__name__)

MAX_WAIT = 3600.0
_POKES = frozenset(
    {
        WorkerEventKind.AVAILABLE,
        WorkerEventKind.CONNECTED,
        WorkerEventKind.REGISTERED,
        WorkerEventKind.UPDATED,
    }
)
_OUTCOMES = {outcome.value: outcome for outcome in JobOutcome}
_GONE = frozenset({WorkerEventKind.UNREGISTERED, WorkerEventKind.EXPIRED})


@dataclass(eq=False)
class _Wait:
    waiter: Waiter
    job: Job | None
    lease_ttl: float
    since: float
    until: float  # when the longest of the acquires waiting for it gives up
    trace_context: dict[str, str] = field(default_factory=dict)
    binding: bool = False  # chosen in a round whose bind is being written: no longer demand
    bound: asyncio.Future[Acquired] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True, slots=True)
class _Bound:
    assignment: Assignment
    record: WorkerRecord


Tell = Callable[[WorkerRecord, WorkerCommand], Awaitable[bool]]


class Allocator:
    """``tell`` pushes a command down a worker's stream (here or on another replica): whether it went."""

    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        tell: Tell,
        connected_here: Callable[[str], bool],
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        default_ttl: float = DEFAULT_ASSIGNMENT_TTL,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics or SchedulerMetrics()
        self._metrics.acquires_waiting.set_function(lambda: len(self._waiting))
        self._pools_counted_at = -1.0
        self._tell = tell
        self._connected_here = connected_here
        self._clock = clock
        self._monotonic = monotonic
        self._default_ttl = default_ttl
        self._arrivals = itertools.count()
        self._waiting: dict[str, _Wait] = {}  # by job id
        self.leases = LeaseTable()  # by assignment id: the holder's renewals
        self._where: dict[str, Assignment] = {}  # by assignment id, as bound (a cache: the store decides)
        self._bound_jobs: dict[str, _Bound] = {}  # job id -> its assignment and worker as bound
        self._ended = EndedAssignments()
        self._watching_end: dict[str, list[asyncio.Future[None]]] = {}
        self._ending: dict[str, asyncio.Future[Ended | None]] = {}  # ends being written, by assignment id
        self.pools = PoolBook(registry.store, self._metrics)
        self._poked = asyncio.Event()
        self._one_serving = asyncio.Lock()  # one round of matching at a time: a waiter is bound once
        self._rounds_started = 0
        self._free = FreeWorkers(
            lambda: self._registry.records(WorkerFilter(statuses=frozenset({WorkerStatus.AVAILABLE})))
        )
        self._serving: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        registry.events.listen(self._heard)
        registry.written.append(self._free.note)  # registrations, heard of even while nobody watches events

    @property
    def store(self) -> RegistryStore:
        return self._registry.store

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def restore(self, now: float) -> None:
        """What the store holds: the pool definitions, and every bound worker's assignment (its lease starts
        now: the holder renews it against this scheduler from here)."""
        await self.pools.restore()
        store = self.store
        if isinstance(store, BoundJobs):
            for record in await store.bound():
                self._track(record, now)

    def start(self) -> None:
        self._serving = asyncio.ensure_future(self._serve_forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._serving, *self._chores) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for wait in self._waiting.values():
            if not wait.bound.done():
                wait.bound.cancel()
        self._waiting.clear()

    # -- acquire -----------------------------------------------------------------------------------------

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
        """``trace_context``: the acquire's trace (W3C headers), handed to the agent with the job."""
        ttl = lease_ttl or self._default_ttl
        self._check(job_id, requirements, job, ttl, wait)
        waiting = None
        joined = False  # a retry of an acquire that still waits: the binding is the first's, not this call's
        while waiting is None:
            # Every await below may let another acquire of the same job in: look again after each.
            if (known := self._known_here(job_id)) is not None:
                return known
            if (waiting := self._waiting.get(job_id)) is not None:
                # A retry of an acquire that still waits: one wait, for as long as the longest asks, served
                # after the round serving the first (if one runs).
                waiting.until = max(waiting.until, self._monotonic() + wait)
                joined = True
                await self._serve()
                break
            if (known := await self._known_in_store(job_id)) is not None:
                return known
            if job_id in self._waiting or self._known_here(job_id):
                continue
            now = self._monotonic()
            waiting = _Wait(
                Waiter(job_id, requirements, priority, next(self._arrivals)), job, ttl, now, now + wait
            )
            waiting.trace_context = dict(trace_context or {})
            self._waiting[job_id] = waiting
            await self._serve()
            if not waiting.bound.done():
                try:
                    await self._refuse_impossible(requirements, job)
                except NoWorkerFits as error:
                    if self._waiting.get(job_id) is waiting and not waiting.bound.done():
                        del self._waiting[job_id]
                        waiting.bound.set_exception(error)  # retries that joined it hear it too
                        waiting.bound.exception()  # (heard here: not an exception nobody retrieved)
                        raise
                self._demand_changed()
        try:
            acquired = await asyncio.wait_for(asyncio.shield(waiting.bound), wait)
            return replace(acquired, created=False) if joined else acquired
        except TimeoutError:
            if waiting.bound.done():
                return replace(waiting.bound.result(), created=False) if joined else waiting.bound.result()
            if self._waiting.get(job_id) is waiting and self._monotonic() >= waiting.until:
                del self._waiting[job_id]
                self._metrics.acquire_wait.labels("timeout").observe(self._monotonic() - waiting.since)
                self._demand_changed()
            raise SchedulerTimeout(
                f"no worker fitting {quote_short(requirements.shape)} was free within {wait:g} s; "
                f"nothing was bound to job {quote_short(job_id)}"
            ) from None

    def _check(
        self, job_id: str, requirements: Requirements, job: Job | None, ttl: float, wait: float
    ) -> None:
        found = validate_job_id(job_id) + requirements.violations() + validate_assignment_ttl(ttl)
        if job is not None:
            found += job.violations()
        if not 0 <= wait <= MAX_WAIT:
            found.append(FieldViolation("wait_ms", f"must be between 0 and an hour, got {wait:g} s"))
        if found:
            raise InvalidWorkerData(f"the acquire of job {quote_short(job_id)} is invalid", violations=found)

    def _known_here(self, job_id: str) -> Acquired | None:
        """The job's assignment if this scheduler made or restored it (bound, or ended and still kept)."""
        if (bound := self._bound_jobs.get(job_id)) is not None:
            return Acquired(bound.assignment, bound.record, created=False)
        kept = self._ended.of_job(job_id)
        if kept is not None:
            return Acquired(kept.assignment, kept.record or _placeholder(kept.assignment), created=False)
        return None

    async def _known_in_store(self, job_id: str) -> Acquired | None:
        """The job's assignment if another replica bound it."""
        store = self.store
        if isinstance(store, BoundJobs) and (record := await store.find_job(job_id)) is not None:
            assert record.assignment is not None
            self._track(record, self._monotonic())
            return Acquired(record.assignment, record, created=False)
        return None

    async def _refuse_impossible(self, requirements: Requirements, job: Job | None) -> None:
        if any(True for _ in self.pools.fitting(requirements)):
            return

        def could(record: WorkerRecord) -> bool:
            return requirements.fits(record) and (job is None or record.lease_ttl is not None)

        if any(could(record) for record in self._free.known()):
            return
        # Asked of the store (one query on its own thread or server), not by reading the registry here.
        if await self._registry.store.any_fitting(requirements, with_lease=job is not None):
            return
        raise NoWorkerFits(
            f"no pool's template and no registered worker fits {quote_short(requirements.shape)}"
            + (" with an agent to run the job" if job is not None else ""),
            violations=[FieldViolation("requirements", "no pool and no worker can ever meet them")],
        )

    # -- serving the queue -------------------------------------------------------------------------------

    def poke(self) -> None:
        """Workers may have become free: serve the waiting acquires soon."""
        if self._waiting:
            self._poked.set()

    async def _serve_forever(self) -> None:
        while True:
            await wait_until_set(self._poked, 0.5)
            self._poked.clear()
            try:
                now = self._monotonic()
                await self.tick(now)
                if now - self._pools_counted_at >= 1.0:
                    self._pools_counted_at = now
                    await self.count_pools()
            except Exception:  # one failed round (the store, say) never ends serving
                log.exception("allocation.round_failed")

    async def tick(self, now: float) -> None:
        """One round: assignments whose holder stopped renewing end, waiting acquires are served."""
        for assignment_id in self.leases.expired(now):
            self.leases.drop(assignment_id)
            await self._end_by_id(
                assignment_id, JobResult(JobOutcome.ABANDONED, reason="its holder stopped renewing")
            )
        self._ended.forget_old(now)
        await self._serve()

    async def _serve(self) -> None:
        """Serve every waiting acquire: a round that starts after this call serves it (calls that come while a
        round runs share the next one)."""
        if not self._waiting:
            return
        asked = self._rounds_started
        async with self._one_serving:
            if self._rounds_started > asked:
                return
            self._rounds_started += 1
            await self._serve_once()

    async def _serve_once(self) -> None:
        waits = {wait.waiter.job_id: wait for wait in self._waiting.values() if not wait.bound.done()}
        free = [record for record in await self._free.current(self._monotonic()) if self._may_take(record)]
        chosen: list[tuple[_Wait, Assignment]] = []
        for waiter, record in match([w.waiter for w in waits.values()], free):
            wait = waits[waiter.job_id]
            if wait.job is not None and record.lease_ttl is None:
                continue  # a job needs an agent to run it
            self._free.gone(record.worker_id)  # bound now, or found taken: either way not free
            chosen.append((wait, self._assignment(wait, record)))
        if not chosen:
            return
        # From here until the round ends, a chosen waiter is neither waiting nor (in the store) surely bound: it
        # is left out of the demand, so that a reader of both (the autoscaler) never counts one job twice.
        for wait, _ in chosen:
            wait.binding = True
        try:
            bound = await self._bind([assignment for _, assignment in chosen])
            acquired = await asyncio.gather(
                *(self._deliver(w, a, r) for (w, a), r in zip(chosen, bound, strict=True))
            )
        finally:
            for wait, _ in chosen:
                wait.binding = False
        for (wait, _), outcome in zip(chosen, acquired, strict=True):
            if outcome is None:
                continue
            self._metrics.acquire_wait.labels("bound").observe(self._monotonic() - wait.since)
            if self._waiting.get(wait.waiter.job_id) is wait:
                del self._waiting[wait.waiter.job_id]
            if not wait.bound.done():
                wait.bound.set_result(outcome)
        if any(outcome is not None for outcome in acquired):
            self._demand_changed()

    def _may_take(self, record: WorkerRecord) -> bool:
        """A worker with an agent is offered while its agent is connected (here, or to another replica); one
        without (its holder uses it itself) always."""
        return (
            record.lease_ttl is None or self._connected_here(record.worker_id) or bool(record.connected_via)
        )

    def _assignment(self, wait: _Wait, chosen: WorkerRecord) -> Assignment:
        return Assignment(
            assignment_id=uuid.uuid4().hex,
            job_id=wait.waiter.job_id,
            worker_id=chosen.worker_id,
            incarnation=chosen.incarnation,
            lease_ttl=wait.lease_ttl,
            job=wait.job,
            priority=wait.waiter.priority,
            bound_at=self._clock(),
            trace_context=wait.trace_context,
        )

    async def _bind(self, assignments: list[Assignment]) -> list[WorkerRecord | Acquired | None]:
        """Each assignment's worker bound (its record), or None (taken meanwhile: the next round chooses again),
        or the job's assignment another replica made meanwhile. One commit for all, unless one of the jobs
        was bound elsewhere: then one at a time."""
        try:
            return list(await self._registry.bind(assignments))
        except JobAlreadyBound:
            if len(assignments) > 1:
                return [found for assignment in assignments for found in await self._bind([assignment])]
            return [await self._known_in_store(assignments[0].job_id)]

    async def _deliver(
        self, wait: _Wait, assignment: Assignment, bound: WorkerRecord | Acquired | None
    ) -> Acquired | None:
        """The bound worker tracked and, with a job, told to run it (an agent that cannot be told: the
        assignment ends WORKER_LOST, and the next round chooses again)."""
        if bound is None or isinstance(bound, Acquired):
            return bound
        self._track(bound, self._monotonic())
        if wait.job is not None:
            delivered = await self._tell(bound, WorkerCommand(CommandKind.RUN_JOB, assignment=assignment))
            if not delivered:
                await self._end(
                    assignment, JobResult(JobOutcome.WORKER_LOST, reason="its agent was not reachable")
                )
                return None
        log.info(
            "allocation.bound",
            extra={
                "job_id": assignment.job_id,
                "worker_id": bound.worker_id,
                "assignment_id": assignment.assignment_id,
            },
        )
        return Acquired(assignment, bound)

    def _track(self, record: WorkerRecord, now: float) -> None:
        """A worker bound to a job, as bound: its assignment's lease runs from ``now``."""
        assignment = record.assignment
        assert assignment is not None
        self._where[assignment.assignment_id] = assignment
        self._bound_jobs[assignment.job_id] = _Bound(assignment, record)
        self.leases.renew(assignment.assignment_id, assignment.lease_ttl, now)

    # -- renew, release, end -----------------------------------------------------------------------------

    async def renew(self, assignment_id: str, *, wait: float = 0.0) -> AssignmentView:
        view = await self._view(assignment_id)
        if view.ended:
            return view
        self.leases.renew(assignment_id, view.assignment.lease_ttl, self._monotonic())
        if wait > 0:
            ended = asyncio.get_running_loop().create_future()
            self._watching_end.setdefault(assignment_id, []).append(ended)
            try:
                await asyncio.wait_for(ended, min(wait, MAX_WAIT))
            except TimeoutError:
                pass
            finally:
                watchers = self._watching_end.get(assignment_id, [])
                if ended in watchers:
                    watchers.remove(ended)
                if not watchers:
                    self._watching_end.pop(assignment_id, None)
            return await self._view(assignment_id)
        return view

    async def release(
        self,
        assignment_id: str,
        *,
        outcome: JobOutcome = JobOutcome.SUCCEEDED,
        recycle: bool = False,
        reason: str = "",
    ) -> AssignmentView:
        view = await self._view(assignment_id)
        if view.ended:
            return view
        result = JobResult(outcome, reason=reason or "released by its holder")
        ended = await self._end(view.assignment, result, recycle=recycle, cancel=True)
        return AssignmentView(view.assignment, ended.result, ended.record)

    async def job_finished(self, worker_id: str, assignment_id: str, result: JobResult) -> None:
        """The worker's agent reports the job of ``assignment_id`` ended. A report about another worker's
        assignment, or one that ended already, changes nothing; a BUSY worker bound to nothing is AVAILABLE."""
        with contextlib.suppress(
            WorkerNotFound
        ):  # an assignment this scheduler never knew (restarted on memory)
            # The agent speaks of its own worker: that worker's record is read, never every bound one (an
            # agent sending made-up assignment ids costs one read each).
            view = await self._view(assignment_id, holder=worker_id)
            if not view.ended and view.assignment.worker_id == worker_id:
                await self._end(view.assignment, result)
                return
        record = await self._registry.get(worker_id)
        if record is not None and record.status is WorkerStatus.BUSY and record.assignment is None:
            await self._registry.transition(worker_id, WorkerStatus.AVAILABLE, reason="its job finished")

    async def _view(self, assignment_id: str, *, holder: str | None = None) -> AssignmentView:
        """The assignment as it stands; ``holder``: the worker it must be bound to if it is bound at all (an
        untracked assignment is then looked for in that worker's record only)."""
        kept = self._ended.get(assignment_id)
        if kept is not None:
            return AssignmentView(kept.assignment, kept.result, kept.record)
        tracked = self._where.get(assignment_id)
        record = (
            await self._registry.get(tracked.worker_id)
            if tracked is not None
            else await self._find(assignment_id, holder)
        )
        if (
            record is not None
            and record.assignment is not None
            and record.assignment.assignment_id == assignment_id
        ):
            return AssignmentView(record.assignment, None, record)
        if (kept := self._ended.get(assignment_id)) is not None:  # it ended while the store was read
            return AssignmentView(kept.assignment, kept.result, kept.record)
        if (
            ending := self._ending.get(assignment_id)
        ) is not None:  # its end is being written: that is the answer
            ended = await asyncio.shield(ending)
            if ended is not None:
                return AssignmentView(ended.assignment, ended.result, ended.record)
            return await self._view(assignment_id, holder=holder)  # that end failed (the store): look again
        if tracked is None:
            raise WorkerNotFound(
                f"assignment {quote_short(assignment_id)} is not known to this scheduler",
                violations=[FieldViolation("assignment_id", "no such assignment")],
            )
        # Its worker no longer holds it (removed or restarted unheard of): not counted, as no end was made here.
        ended = self._remember(
            tracked,
            JobResult(JobOutcome.WORKER_LOST, reason="its worker no longer holds it"),
            record,
            counted=False,
        )
        return AssignmentView(ended.assignment, ended.result, record)

    async def _find(self, assignment_id: str, holder: str | None = None) -> WorkerRecord | None:
        """A worker bound to ``assignment_id`` by another replica (this one has not tracked it): ``holder``'s
        record if the caller says whose it must be, else the store's answer for that id."""
        if holder is not None:
            record = await self._registry.get(holder)
        elif isinstance(store := self.store, BoundJobs):
            record = await store.find_assignment(assignment_id)
        else:
            return None
        if record is None or record.assignment is None or record.assignment.assignment_id != assignment_id:
            return None
        self._track(record, self._monotonic())
        return record

    async def _end_by_id(self, assignment_id: str, result: JobResult) -> None:
        view = await self._view(assignment_id)
        if not view.ended:
            await self._end(view.assignment, result, cancel=True)

    async def _end(
        self, assignment: Assignment, result: JobResult, *, recycle: bool = False, cancel: bool = False
    ) -> Ended:
        """Unbind the worker (AVAILABLE again, or DRAINING when recycled; a LOST or DRAINING worker keeps its
        status), keep the result for the holder, tell whoever waits for the end. With ``cancel`` (the end did
        not come from the agent) a job its agent may still run is stopped, and the worker stays BUSY until the
        agent says so."""
        assignment_id = assignment.assignment_id
        if (ending := self._ending.get(assignment_id)) is not None:  # another end is under way: it decides
            ended = await asyncio.shield(ending)
            if ended is not None:
                return ended
        made: asyncio.Future[Ended | None] = asyncio.get_running_loop().create_future()
        self._ending[assignment_id] = made
        running = cancel and assignment.job is not None
        try:
            record = await self._registry.unbind(assignment, result, recycle=recycle, job_running=running)
            # Remembered as soon as the store says so: a holder asking meanwhile is never told another end.
            ended = self._remember(assignment, result, record)
            made.set_result(ended)
        finally:
            del self._ending[assignment_id]
            if not made.done():
                made.set_result(None)
        if running and record is not None and record.status is not WorkerStatus.LOST:
            await self._tell(
                record,
                WorkerCommand(CommandKind.CANCEL_JOB, result.reason, assignment_id=assignment.assignment_id),
            )
        if recycle and record is not None:
            await self._tell(record, WorkerCommand(CommandKind.DRAIN, "recycled after its job"))
        log.info(
            "allocation.ended",
            extra={
                "job_id": assignment.job_id,
                "worker_id": assignment.worker_id,
                "assignment_id": assignment.assignment_id,
                "outcome": result.outcome.value,
                "exit_code": result.exit_code,
            },
        )
        self.poke()
        return ended

    def _remember(
        self, assignment: Assignment, result: JobResult, record: WorkerRecord | None, *, counted: bool = True
    ) -> Ended:
        assignment_id = assignment.assignment_id
        self.leases.drop(assignment_id)
        self._where.pop(assignment_id, None)
        bound = self._bound_jobs.get(assignment.job_id)
        if bound is not None and bound.assignment.assignment_id == assignment_id:
            del self._bound_jobs[assignment.job_id]
        if counted:
            self._metrics.assignments_ended.labels(result.outcome.value).inc()
        ended = Ended(assignment, result, self._monotonic(), record)
        self._ended.remember(ended)
        for future in self._watching_end.pop(assignment_id, []):
            if not future.done():
                future.set_result(None)
        return ended

    # -- what the registry's events say ------------------------------------------------------------------

    def _heard(self, event: WorkerEvent) -> None:
        if event.record is not None:
            self._free.note(event.record)
        elif event.kind in _GONE:
            self._free.gone(event.worker_id)
        if event.kind in _POKES:
            self.poke()
        elif event.kind is WorkerEventKind.LOST and event.record is not None and event.record.assignment:
            self._chore(self._end_by_id(event.record.assignment.assignment_id, _lost("its worker went LOST")))
        elif event.kind in _GONE:
            for assignment_id in self._assignments_of(event.worker_id):
                self._chore(self._end_by_id(assignment_id, _lost(f"its worker was {event.kind.value}")))
        elif event.kind is WorkerEventKind.RELEASED and event.record is None:
            # Relayed: another replica ended an assignment this one bound; its reason is the outcome (counted there).
            outcome = _OUTCOMES.get(event.reason, JobOutcome.WORKER_LOST)
            for assignment_id in self._assignments_of(event.worker_id):
                result = JobResult(outcome, reason="ended through another replica")
                self._remember(self._where[assignment_id], result, None, counted=False)

    def _assignments_of(self, worker_id: str) -> list[str]:
        return [a for a, assignment in self._where.items() if assignment.worker_id == worker_id]

    def _chore(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[None]) -> None:
        self._chores.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("allocation.end_failed", extra={"error": quote_short(str(error))})

    # -- demand and pools --------------------------------------------------------------------------------

    def demand(self) -> list[WaitingDemand]:
        """What waits now, by requirement shape (the most waiting first), with the pools whose template fits."""
        now = self._monotonic()
        shapes: dict[Requirements, list[_Wait]] = {}
        for wait in self._waiting.values():
            if not wait.binding:
                shapes.setdefault(wait.waiter.requirements, []).append(wait)
        found = [
            WaitingDemand(
                requirements,
                len(waits),
                max(now - w.since for w in waits),
                tuple(self.pools.fitting(requirements)),
            )
            for requirements, waits in shapes.items()
        ]
        return sorted(found, key=lambda d: (-d.waiting, d.shape))

    def _demand_changed(self) -> None:
        events = self._registry.events
        if events.wants(WorkerEventKind.DEMAND):
            demand = tuple(self.demand())
            waiting = sum(
                d.waiting for d in demand
            )  # as the demand says: waiters being bound are not counted
            events.publish(WorkerEventKind.DEMAND, reason=f"{waiting} waiting", demand=demand)

    async def apply_pools(self, source: str, text: str) -> list[PoolStatus]:
        await self.pools.apply(source, text)
        self.poke()
        return await self.pool_statuses()

    def report_scale(self, event: ScaleEvent) -> None:
        """The control plane scaled a pool: kept for ListPools, told to the watchers. A pool not declared here
        is refused (NOT_FOUND), its event dropped."""
        if found := event.violations():
            raise InvalidWorkerData(
                f"the scale event of pool {quote_short(event.pool)} is invalid", violations=found
            )
        if not self.pools.scaled(event):
            raise WorkerNotFound(
                f"pool {quote_short(event.pool)} is not declared here",
                violations=[FieldViolation("event.pool", "no such pool")],
            )
        self._registry.events.publish(WorkerEventKind.POOL_SCALED, reason=event.describe(), time=event.time)

    async def count_pools(self) -> None:
        """Set the pool gauges from the registry."""
        self.pools.gauge(await self.pool_statuses() if self.pools.pools else [])

    async def pool_statuses(self) -> list[PoolStatus]:
        # Counted by the store (a GROUP BY on its own thread or server), not by reading every record here.
        return self.pools.statuses(await self._registry.store.count_by_pool(), self.demand())


def _lost(reason: str) -> JobResult:
    return JobResult(JobOutcome.WORKER_LOST, reason=reason)


def _placeholder(assignment: Assignment) -> WorkerRecord:
    """The worker of an ended assignment whose record was not kept: its id only."""
    return WorkerRecord(
        worker_id=assignment.worker_id,
        worker_type=WorkerType.MOCK,
        capabilities=WorkerCapabilities(0, 0, 0, 0),
    )
