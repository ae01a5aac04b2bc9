"""The scheduler's resource pools as a caller sees them: acquiring a worker for a job (:class:`PoolPort`), and
what an acquire answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Protocol

from hodei.domain import (
    Assignment,
    Job,
    JobOutcome,
    JobResult,
    WorkerRecord,
)
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.pools import PoolStatus, Requirements, ScaleEvent, WaitingDemand

__all__ = ["Acquired", "AssignmentView", "PoolPort"]


@dataclass(frozen=True, slots=True)
class Acquired:
    """A worker bound to a job: the assignment, the worker as bound (BUSY), and whether this call bound it
    (False: a retry found the job's assignment already made)."""

    assignment: Assignment
    record: WorkerRecord
    created: bool = True


@dataclass(frozen=True, slots=True)
class AssignmentView:
    """An assignment as the scheduler knows it now: ``result`` is None while it holds, how it ended after."""

    assignment: Assignment
    result: JobResult | None = None
    record: WorkerRecord | None = None  # the worker now (after a release), if the scheduler said

    @property
    def ended(self) -> bool:
        return self.result is not None


class PoolPort(Protocol):
    """The scheduler's resource pools, as job runners and the control plane's autoscaler see them
    (``SchedulerPortClient`` over gRPC). Every method raises :class:`SchedulerError` kinds."""

    async def acquire_worker(
        self,
        job_id: str,
        requirements: Requirements,
        *,
        job: Job | None = None,
        priority: int = 0,
        wait: float = 0.0,
        lease_ttl: float = 0.0,
        timeout: float | None = None,
    ) -> Acquired:
        """Bind a worker that fits to ``job_id``, waiting up to ``wait`` seconds for one
        (:class:`~hodei.errors.SchedulerTimeout` after that, nothing bound). Idempotent by ``job_id``.
        ``lease_ttl`` 0: the scheduler's default. ``timeout`` defaults to ``wait`` plus a margin."""
        ...

    async def renew_assignment(
        self, assignment_id: str, *, wait: float = 0.0, timeout: float | None = None
    ) -> AssignmentView:
        """Keep the assignment for another lease; with ``wait``, answer early when it ends."""
        ...

    async def release_worker(
        self,
        assignment_id: str,
        *,
        outcome: JobOutcome = JobOutcome.SUCCEEDED,
        recycle: bool = False,
        reason: str = "",
        timeout: float | None = None,
    ) -> AssignmentView:
        """End the assignment: the worker is AVAILABLE again, or recycled (drained, to be replaced)."""
        ...

    async def get_demand(self, *, timeout: float | None = None) -> list[WaitingDemand]: ...

    async def apply_pools(self, source: str, text: str, *, timeout: float | None = None) -> list[PoolStatus]:
        """Replace the pool definitions with those of a pools file's text (``source`` names it in errors)."""
        ...

    async def list_pools(self, *, timeout: float | None = None) -> list[PoolStatus]: ...

    async def report_scale_event(self, event: ScaleEvent, *, timeout: float | None = None) -> None:
        """Tell the scheduler (its watchers, and ``list_pools``) what the autoscaler did to a pool."""
        ...

    def watch_workers(
        self, *, include_snapshot: bool = False, kinds: Collection[WorkerEventKind] | None = None
    ) -> AsyncIterator[WorkerEvent]:
        """The scheduler's lifecycle events as they happen (of ``kinds`` only, if given), among them a DEMAND
        event each time what waits changes (the autoscaler wakes on them rather than wait for its next tick)."""
        ...
