"""Assignments: the jobs this scheduler's workers are bound to — tracked as bound, renewed by their holders, and
ended (released, finished by the agent, abandoned by a holder that stopped renewing, or lost with the worker);
an ended one is kept a while for its holder to read.

The truth is the registry: a worker is bound while its stored record holds the :class:`Assignment`. What is kept
here is derived or bounded: each tracked assignment as bound (by assignment id, and by job id, with its worker),
its lease (the holder's renewals, started afresh after a restart), the ends being written, and the ends made
(:class:`~hodei.scheduler._ended.EndedAssignments`). An end missed here (an event not heard) is found when anyone
asks: the record no longer holds the assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hodei._quoting import quote_short
from hodei.domain import (
    Assignment,
    FieldViolation,
    JobOutcome,
    JobResult,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
)
from hodei.errors import WorkerNotFound
from hodei.lifecycle import CommandKind, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.observability._metrics import SchedulerMetrics
from hodei.ports import Acquired, AssignmentView, BoundJobs
from hodei.scheduler._ended import Ended, EndedAssignments
from hodei.scheduler._liveness import LeaseTable
from hodei.scheduler._registry import WorkerRegistry

__all__ = ["GONE", "MAX_WAIT", "Assignments", "Tell"]

log = logging.getLogger(__name__)

MAX_WAIT = 3600.0
GONE = frozenset({WorkerEventKind.UNREGISTERED, WorkerEventKind.EXPIRED})
"""Events after which a worker is no longer registered."""
_OUTCOMES = {outcome.value: outcome for outcome in JobOutcome}

Tell = Callable[[WorkerRecord, WorkerCommand], Awaitable[bool]]
"""Pushes a command down a worker's stream (here or on another replica): whether it went."""


@dataclass(frozen=True, slots=True)
class _Bound:
    assignment: Assignment
    record: WorkerRecord


class Assignments:
    """``tell`` reaches a worker's agent; ``poke`` says a worker may have become free."""

    def __init__(
        self,
        registry: WorkerRegistry,
        *,
        tell: Tell,
        poke: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self._registry = registry
        self._tell = tell
        self._poke = poke
        self._monotonic = monotonic
        self._metrics = metrics or SchedulerMetrics()
        self.leases = LeaseTable()  # by assignment id: the holder's renewals
        self._where: dict[str, Assignment] = {}  # by assignment id, as bound (a cache: the store decides)
        self._bound_jobs: dict[str, _Bound] = {}  # job id -> its assignment and worker as bound
        self._ended = EndedAssignments()
        self._watching_end: dict[str, list[asyncio.Future[None]]] = {}
        self._ending: dict[str, asyncio.Future[Ended | None]] = {}  # ends being written, by assignment id
        self._chores: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        chores = list(self._chores)
        for task in chores:
            task.cancel()
        for task in chores:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def expire(self, now: float) -> None:
        """Assignments whose holder stopped renewing end (ABANDONED); ends kept long enough are forgotten."""
        for assignment_id in self.leases.expired(now):
            self.leases.drop(assignment_id)
            await self.end_by_id(
                assignment_id, JobResult(JobOutcome.ABANDONED, reason="its holder stopped renewing")
            )
        self._ended.forget_old(now)

    async def renew(self, assignment_id: str, *, wait: float = 0.0) -> AssignmentView:
        view = await self.view(assignment_id)
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
            return await self.view(assignment_id)
        return view

    async def release(
        self,
        assignment_id: str,
        *,
        outcome: JobOutcome = JobOutcome.SUCCEEDED,
        recycle: bool = False,
        reason: str = "",
    ) -> AssignmentView:
        view = await self.view(assignment_id)
        if view.ended:
            return view
        result = JobResult(outcome, reason=reason or "released by its holder")
        ended = await self.end(view.assignment, result, recycle=recycle, cancel=True)
        return AssignmentView(view.assignment, ended.result, ended.record)

    async def job_finished(self, worker_id: str, assignment_id: str, result: JobResult) -> None:
        """The worker's agent reports the job of ``assignment_id`` ended. A report about another worker's
        assignment, or one that ended already, changes nothing; a BUSY worker bound to nothing is AVAILABLE."""
        # WorkerNotFound: an assignment this scheduler never knew (restarted on memory).
        with contextlib.suppress(WorkerNotFound):
            # The agent speaks of its own worker: that worker's record is read, never every bound one (an
            # agent sending made-up assignment ids costs one read each).
            view = await self.view(assignment_id, holder=worker_id)
            if not view.ended and view.assignment.worker_id == worker_id:
                await self.end(view.assignment, result)
                return
        record = await self._registry.get(worker_id)
        if record is not None and record.status is WorkerStatus.BUSY and record.assignment is None:
            await self._registry.transition(worker_id, WorkerStatus.AVAILABLE, reason="its job finished")

    async def view(self, assignment_id: str, *, holder: str | None = None) -> AssignmentView:
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
        if (ending := self._ending.get(assignment_id)) is not None:  # its end is being written: the answer
            ended = await asyncio.shield(ending)
            if ended is not None:
                return AssignmentView(ended.assignment, ended.result, ended.record)
            return await self.view(assignment_id, holder=holder)  # that end failed (the store): look again
        if tracked is None:
            raise WorkerNotFound(
                f"assignment {quote_short(assignment_id)} is not known to this scheduler",
                violations=[FieldViolation("assignment_id", "no such assignment")],
            )
        # Its worker no longer holds it (removed or restarted unheard of): not counted, as no end was made here.
        ended = self.remember(
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
        elif isinstance(store := self._registry.store, BoundJobs):
            record = await store.find_assignment(assignment_id)
        else:
            return None
        if record is None or record.assignment is None or record.assignment.assignment_id != assignment_id:
            return None
        self.track(record, self._monotonic())
        return record

    async def end_by_id(self, assignment_id: str, result: JobResult) -> None:
        view = await self.view(assignment_id)
        if not view.ended:
            await self.end(view.assignment, result, cancel=True)

    async def end(
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
            ended = self.remember(assignment, result, record)
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
        self._poke()
        return ended

    def remember(
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

    def track(self, record: WorkerRecord, now: float) -> None:
        """A worker bound to a job, as bound: its assignment's lease runs from ``now``."""
        assignment = record.assignment
        assert assignment is not None
        self._where[assignment.assignment_id] = assignment
        self._bound_jobs[assignment.job_id] = _Bound(assignment, record)
        self.leases.renew(assignment.assignment_id, assignment.lease_ttl, now)

    def known(self, job_id: str) -> Acquired | None:
        """The job's assignment if this scheduler made or restored it (bound, or ended and still kept)."""
        if (bound := self._bound_jobs.get(job_id)) is not None:
            return Acquired(bound.assignment, bound.record, created=False)
        kept = self._ended.of_job(job_id)
        if kept is not None:
            return Acquired(kept.assignment, kept.record or _placeholder(kept.assignment), created=False)
        return None

    async def find_job(self, job_id: str) -> Acquired | None:
        """The job's assignment if another replica bound it."""
        store = self._registry.store
        if isinstance(store, BoundJobs) and (record := await store.find_job(job_id)) is not None:
            assert record.assignment is not None
            self.track(record, self._monotonic())
            return Acquired(record.assignment, record, created=False)
        return None

    def heard(self, event: WorkerEvent) -> None:
        """The registry's event: an assignment whose worker went LOST, was removed or expired ends (WORKER_LOST);
        one another replica ended is remembered ended here too."""
        if event.kind is WorkerEventKind.LOST and event.record is not None and event.record.assignment:
            self._chore(self.end_by_id(event.record.assignment.assignment_id, _lost("its worker went LOST")))
        elif event.kind in GONE:
            for assignment_id in self._assignments_of(event.worker_id):
                self._chore(self.end_by_id(assignment_id, _lost(f"its worker was {event.kind.value}")))
        elif event.kind is WorkerEventKind.RELEASED and event.record is None:
            # Relayed: another replica ended an assignment this one bound; its reason is the outcome (counted there).
            outcome = _OUTCOMES.get(event.reason, JobOutcome.WORKER_LOST)
            for assignment_id in self._assignments_of(event.worker_id):
                result = JobResult(outcome, reason="ended through another replica")
                self.remember(self._where[assignment_id], result, None, counted=False)

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


def _lost(reason: str) -> JobResult:
    return JobResult(JobOutcome.WORKER_LOST, reason=reason)


def _placeholder(assignment: Assignment) -> WorkerRecord:
    """The worker of an ended assignment whose record was not kept: its id only."""
    return WorkerRecord(
        worker_id=assignment.worker_id,
        worker_type=WorkerType.MOCK,
        capabilities=WorkerCapabilities(0, 0, 0, 0),
    )
