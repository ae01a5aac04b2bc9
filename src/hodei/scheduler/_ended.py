"""The assignments that ended, kept a while for their holders: the last ENDED_KEPT, at most ENDED_KEPT_FOR."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from hodei.domain import Assignment, JobResult, WorkerRecord

__all__ = ["ENDED_KEPT", "ENDED_KEPT_FOR", "Ended", "EndedAssignments"]

ENDED_KEPT = 10_000
"""How many ended assignments are kept for their holders to read (the oldest are forgotten first)."""
ENDED_KEPT_FOR = 600.0
"""And for how long at most, in seconds."""


@dataclass(frozen=True, slots=True)
class Ended:
    """How an assignment ended, when (the scheduler's monotonic clock), and its worker after (None: gone)."""

    assignment: Assignment
    result: JobResult
    at: float
    record: WorkerRecord | None


class EndedAssignments:
    def __init__(self, *, keep: int = ENDED_KEPT, keep_for: float = ENDED_KEPT_FOR) -> None:
        self._keep, self._keep_for = keep, keep_for
        self._by_id: OrderedDict[str, Ended] = OrderedDict()
        self._by_job: dict[str, str] = {}  # job id -> assignment id

    def remember(self, ended: Ended) -> None:
        assignment = ended.assignment
        self._by_id[assignment.assignment_id] = ended
        if assignment.job_id:
            self._by_job[assignment.job_id] = assignment.assignment_id
        while len(self._by_id) > self._keep:
            self._forget_first()

    def get(self, assignment_id: str) -> Ended | None:
        return self._by_id.get(assignment_id)

    def of_job(self, job_id: str) -> Ended | None:
        assignment_id = self._by_job.get(job_id)
        return None if assignment_id is None else self._by_id.get(assignment_id)

    def forget_old(self, now: float) -> None:
        while self._by_id and now - next(iter(self._by_id.values())).at > self._keep_for:
            self._forget_first()

    def __len__(self) -> int:
        return len(self._by_id)

    def _forget_first(self) -> None:
        _, ended = self._by_id.popitem(last=False)
        job_id = ended.assignment.job_id
        if self._by_job.get(job_id) == ended.assignment.assignment_id:
            del self._by_job[job_id]
