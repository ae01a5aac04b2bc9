"""At most one worker per job: the check every store makes before it writes records bound to jobs.

A write is judged by what it leaves stored: the records it writes, and the stored holders of the jobs it newly
binds (a job its worker did not hold before). A write that would leave two records bound to one job raises
:class:`~hodei.errors.JobAlreadyBound` and writes nothing. A job that moves from one record to another within
one write (both written) is no conflict: the SQL stores unbind the records it moves from first (``movers``),
so that their unique index on ``job_id`` never holds one job twice in the middle of the write.
"""

from __future__ import annotations

from collections.abc import Mapping

from hodei.domain import WorkerRecord
from hodei.errors import JobAlreadyBound

__all__ = ["check_bindings", "job_of", "newly_bound"]


def job_of(record: WorkerRecord | None) -> str | None:
    """The id of the job ``record`` is bound to, or None."""
    return None if record is None or record.assignment is None else record.assignment.job_id


def newly_bound(held: Mapping[str, str | None], written: Mapping[str, WorkerRecord]) -> list[str]:
    """The job ids the ``written`` records (by worker id) bind that their workers did not hold before (``held``:
    worker id -> the job its stored record is bound to), in order: those a store must look up."""
    return sorted(
        {
            job
            for worker_id, record in written.items()
            if (job := job_of(record)) is not None and job != held.get(worker_id)
        }
    )


def check_bindings(written: Mapping[str, WorkerRecord], holders: Mapping[str, str]) -> list[str]:
    """Raise :class:`JobAlreadyBound` for the first job (in the order of ``written``) that the write would leave
    bound to two records; ``holders`` maps each job the write newly binds to the worker stored bound to it.

    Returns the written workers whose stored job another written record takes (to unbind first), in order.
    """
    binder: dict[str, str] = {}
    for worker_id, record in written.items():
        job = job_of(record)
        if job is None:
            continue
        holder = holders.get(job, worker_id)
        if job in binder or (holder != worker_id and holder not in written):
            raise JobAlreadyBound(job)
        binder[job] = worker_id
    # A holder written too no longer holds its job (else that job was bound twice, above): it moves.
    return sorted(holder for holder in holders.values() if holder in written)
