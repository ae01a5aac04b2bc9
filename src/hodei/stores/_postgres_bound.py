"""At most one worker per job, in PostgreSQL (:mod:`hodei.stores._bound` judges): the stored holders of the jobs
a write newly binds, looked up in the write's transaction; the workers whose job moves to another written one,
unbound before they are written; and the unique index's refusal, when another replica bound one of those jobs
meanwhile, read as :class:`~hodei.errors.JobAlreadyBound`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import asyncpg

from hodei.domain import WorkerRecord
from hodei.errors import JobAlreadyBound
from hodei.stores._bound import check_bindings, newly_bound
from hodei.stores._postgres_retry import Db

__all__ = ["bind", "binding"]


async def bind(db: Db, held: Mapping[str, str | None], written: Mapping[str, WorkerRecord]) -> list[str]:
    """Refuse ``written`` if it would bind a job twice (:mod:`hodei.stores._bound`), and unbind the workers whose
    job moves to another written one, before they are written; the jobs it newly binds."""
    newly = newly_bound(held, written)
    if newly:
        holders = await db.fetch(
            "SELECT job_id, worker_id FROM hodei_workers WHERE job_id = ANY($1::text[])", newly
        )
        movers = check_bindings(written, {row[0]: row[1] for row in holders})
        if movers:
            await db.execute(
                "UPDATE hodei_workers SET job_id = NULL WHERE worker_id = ANY($1::text[])", movers
            )
    return newly


@contextlib.contextmanager
def binding(newly: Sequence[str]) -> Iterator[None]:
    """The index refused a job ``newly`` binds: another replica bound it after this write looked (and committed
    first). That is no race to run again, nor an unavailable store: the job is taken. The only unique index a
    write of ``hodei_workers`` can break is the job's (a worker id that exists is updated, not inserted); a
    write binding several new jobs names the first, in job id order."""
    try:
        yield
    except asyncpg.UniqueViolationError as error:
        raise JobAlreadyBound(next(iter(newly), "")) from error
