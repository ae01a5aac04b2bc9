"""How a registered worker's record moves: its status (drained, lost, back), and its binding to a job and release.

Every move is one atomic read-modify-write of the stored record, conditional on what it holds then (a
registration that lands meanwhile is not undone), and publishes the events the change makes: the new status,
DRAINED when its work is done, ASSIGNED and RELEASED for a job. :class:`~hodei.scheduler._registry.WorkerRegistry`
builds on it; what registers, removes and lists workers stays there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from hodei._quoting import quote_short
from hodei.domain import Assignment, FieldViolation, JobResult, WorkerRecord, WorkerStatus
from hodei.errors import WorkerNotFound, WorkerNotIdle
from hodei.lifecycle import WorkerEventKind
from hodei.ports import RegistryStore
from hodei.scheduler._events import EventHub

__all__ = ["WorkerMoves"]

_STATUS_EVENTS = {
    WorkerStatus.AVAILABLE: WorkerEventKind.AVAILABLE,
    WorkerStatus.BUSY: WorkerEventKind.BUSY,
    WorkerStatus.DRAINING: WorkerEventKind.DRAINING,
    WorkerStatus.LOST: WorkerEventKind.LOST,
}


class WorkerMoves:
    """The moves of the records in ``store``, each told to ``events``, stamped by ``clock``."""

    def __init__(self, store: RegistryStore, events: EventHub, clock: Callable[[], datetime]) -> None:
        self._store = store
        self.events = events
        self._clock = clock

    async def transition(
        self,
        worker_id: str,
        status: WorkerStatus,
        *,
        drained: bool | None = None,
        reason: str = "",
        only_if: Callable[[WorkerRecord], bool] | None = None,
    ) -> WorkerRecord:
        """Move a worker to ``status`` (DRAINING with ``drained`` once its work is done); raises WorkerNotFound.

        ``drained=None`` keeps the flag while the status stays the same, and clears it on a change. The move
        is one atomic read-modify-write of the store: a registration that lands meanwhile is not undone.
        ``only_if``: only while it holds for the stored record, checked in the same write (else
        :class:`~hodei.errors.WorkerNotIdle`, nothing changed).
        """
        refused: list[WorkerRecord] = []

        def allowed(record: WorkerRecord) -> bool:
            if only_if is None or only_if(record):
                return True
            refused.append(record)
            return False

        changed = await self._move(worker_id, status, drained=drained, reason=reason, only_if=allowed)
        if changed is None:
            raise WorkerNotFound(f"worker {quote_short(worker_id)} is not registered", worker_id=worker_id)
        if refused and changed[1] is changed[0]:
            found = refused[-1]
            state = found.status.value + (
                f", bound to job {quote_short(found.assignment.job_id)}" if found.assignment else ""
            )
            raise WorkerNotIdle(
                f"worker {quote_short(worker_id)} is {state}: not {status.value}",
                worker_id=worker_id,
                violations=[FieldViolation("status", f"is {found.status.value}, not available")],
            )
        return changed[1]

    async def mark_lost(self, worker_id: str, *, reason: str) -> WorkerRecord | None:
        """Make a worker whose agent holds a lease LOST, in one read-modify-write of the store: the record as it
        was before, or None when the store holds no such worker (gone, or registered without an agent)."""
        changed = await self._move(
            worker_id, WorkerStatus.LOST, reason=reason, only_if=lambda record: record.lease_ttl is not None
        )
        return None if changed is None or changed[0].lease_ttl is None else changed[0]

    async def _move(
        self,
        worker_id: str,
        status: WorkerStatus,
        *,
        drained: bool | None = None,
        reason: str = "",
        only_if: Callable[[WorkerRecord], bool] | None = None,
    ) -> tuple[WorkerRecord, WorkerRecord] | None:
        def move(record: WorkerRecord) -> WorkerRecord | None:
            if only_if is not None and not only_if(record):
                return None
            flag = record.drained and record.status is status if drained is None else drained
            if record.status is status and record.drained == flag:
                return None
            return replace(record, status=status, drained=flag, updated_at=self._clock())

        changed = await self._store.modify(worker_id, move)
        if changed is None:
            return None
        record, updated = changed
        if record.status is not updated.status:
            self.events.publish(
                _STATUS_EVENTS.get(status, WorkerEventKind.UPDATED), worker_id, updated, reason
            )
        if updated.drained and not record.drained:
            self.events.publish(WorkerEventKind.DRAINED, worker_id, updated, reason)
        return changed

    async def bind(self, assignments: Sequence[Assignment]) -> list[WorkerRecord | None]:
        """Bind each assignment's worker to its job, in one transaction of read-modify-writes: each only while it
        is AVAILABLE, of the assignment's incarnation and bound to nothing (else None in its place: it was taken
        or changed meanwhile). A bound worker is BUSY, its use count one more. Raises
        :class:`~hodei.errors.JobAlreadyBound` (nothing written) when another worker holds one of the jobs."""

        def take(assignment: Assignment) -> Callable[[WorkerRecord], WorkerRecord | None]:
            def change(record: WorkerRecord) -> WorkerRecord | None:
                if (
                    record.status is not WorkerStatus.AVAILABLE
                    or record.assignment is not None
                    or record.incarnation != assignment.incarnation
                ):
                    return None
                return replace(
                    record,
                    status=WorkerStatus.BUSY,
                    assignment=assignment,
                    use_count=record.use_count + 1,
                    updated_at=self._clock(),
                )

            return change

        changes = await self._store.modify_many([(a.worker_id, take(a)) for a in assignments])
        bound: list[WorkerRecord | None] = []
        for assignment, changed in zip(assignments, changes, strict=True):
            if changed is None or changed[1].assignment != assignment:
                bound.append(None)
                continue
            record = changed[1]
            self.events.publish(WorkerEventKind.BUSY, record.worker_id, record, f"job {assignment.job_id}")
            self.events.publish(WorkerEventKind.ASSIGNED, record.worker_id, record, assignment.job_id)
            bound.append(record)
        return bound

    async def unbind(
        self, assignment: Assignment, result: JobResult, *, recycle: bool = False, job_running: bool = False
    ) -> WorkerRecord | None:
        """End the assignment on its worker's record: AVAILABLE again (DRAINING and drained when ``recycle``);
        a LOST or DRAINING worker keeps its status. With ``job_running`` (its agent still runs the job, told to
        stop it) a BUSY worker stays BUSY, bound to nothing, and a draining one is not yet drained, until the
        agent says the job ended. The record after (None if the worker is gone); a worker that no longer holds
        this assignment is left as it is."""

        def free(record: WorkerRecord) -> WorkerRecord | None:
            if record.assignment is None or record.assignment.assignment_id != assignment.assignment_id:
                return None
            status, drained = record.status, record.drained
            if recycle and status is not WorkerStatus.LOST:
                status, drained = WorkerStatus.DRAINING, not job_running
            elif status is WorkerStatus.BUSY and not job_running:
                status = WorkerStatus.AVAILABLE
            elif status is WorkerStatus.DRAINING and not job_running:
                drained = True  # its work is done
            return replace(record, status=status, drained=drained, assignment=None, updated_at=self._clock())

        changed = await self._store.modify(assignment.worker_id, free)
        if changed is None:
            return None
        before, after = changed
        if before.assignment == after.assignment:
            return after
        self.events.publish(WorkerEventKind.RELEASED, after.worker_id, after, result.outcome.value)
        if before.status is not after.status:
            self.events.publish(
                _STATUS_EVENTS.get(after.status, WorkerEventKind.UPDATED), after.worker_id, after
            )
        if after.drained and not before.drained:
            self.events.publish(WorkerEventKind.DRAINED, after.worker_id, after, "its job ended")
        return after
