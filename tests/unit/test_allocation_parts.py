"""The allocator's parts on their own: what is kept of ended assignments (bounded), and the free workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hodei.domain import Assignment, JobOutcome, JobResult, WorkerStatus, record_of
from hodei.scheduler._ended import Ended, EndedAssignments
from hodei.scheduler._free import FreeWorkers
from tests.helpers import make_worker


def ended(index: int, at: float, job_id: str = "") -> Ended:
    assignment = Assignment(
        assignment_id=f"a-{index}", job_id=job_id or f"job-{index}", worker_id=f"w-{index}", incarnation=1
    )
    return Ended(assignment, JobResult(JobOutcome.SUCCEEDED), at, None)


def test_ended_assignments_keep_the_last_n_and_forget_the_old() -> None:
    kept = EndedAssignments(keep=3, keep_for=10.0)
    for index in range(5):
        kept.remember(ended(index, at=float(index)))

    assert len(kept) == 3
    assert [kept.get(f"a-{i}") is not None for i in range(5)] == [False, False, True, True, True]
    assert kept.of_job("job-1") is None and kept.of_job("job-4") == kept.get("a-4")

    kept.forget_old(now=13.5)  # a-2 (at 2) and a-3 (at 3) are older than 10 s
    assert [kept.get(f"a-{i}") is not None for i in range(5)] == [False, False, False, False, True]
    assert kept.of_job("job-3") is None


def test_a_job_ended_twice_is_found_by_its_last_end_and_forgetting_the_first_keeps_the_last() -> None:
    kept = EndedAssignments(keep=2, keep_for=100.0)
    kept.remember(ended(1, at=0.0, job_id="same"))
    kept.remember(ended(2, at=1.0, job_id="same"))
    kept.remember(ended(3, at=2.0))  # forgets a-1, which is no longer the job's last

    assert kept.of_job("same") == kept.get("a-2")


async def test_free_workers_are_read_whole_then_kept_by_what_is_written() -> None:
    stored = {w: record_of(make_worker(w)) for w in ("w-1", "w-2")}
    reads = 0

    async def read() -> AsyncIterator:
        nonlocal reads
        reads += 1
        for record in list(stored.values()):
            await asyncio.sleep(0)
            yield record

    free = FreeWorkers(read, relist=1.0)
    assert sorted(r.worker_id for r in await free.current(0.0)) == ["w-1", "w-2"]

    busy = record_of(make_worker("w-1"), status=WorkerStatus.BUSY)
    free.note(busy)
    free.note(record_of(make_worker("w-3")))
    assert sorted(r.worker_id for r in await free.current(0.5)) == ["w-2", "w-3"]
    assert reads == 1

    free.gone("w-2")
    assert [r.worker_id for r in free.known()] == ["w-3"]
    # A second later the store is read again: what it says wins, but what was written while it was read is newer.
    reading = asyncio.create_task(free.current(1.5))
    await asyncio.sleep(0)
    free.note(busy)  # written during the read
    assert sorted(r.worker_id for r in await reading) == ["w-2"]
    assert reads == 2
