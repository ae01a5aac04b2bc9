"""The acquires that wait: an acquire's checks (valid, and servable at all), its entry in the allocator's queue,
the assignment it gets once a worker is chosen for it, and the demand the waiting ones make.

Serving the queue (the rounds that match waiters to free workers and bind them) is the
:class:`~hodei.scheduler._allocation.Allocator`'s, and so is the queue itself; what is decided here, about one
acquire or about all that wait, keeps no state of its own (a ``Wait`` holds only its own acquire's).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from hodei._quoting import quote_short
from hodei.domain import (
    Assignment,
    FieldViolation,
    Job,
    WorkerRecord,
    validate_assignment_ttl,
    validate_job_id,
)
from hodei.errors import InvalidWorkerData, NoWorkerFits
from hodei.pools import Requirements, Waiter, WaitingDemand
from hodei.ports import Acquired, RegistryStore
from hodei.scheduler._assignments import MAX_WAIT
from hodei.scheduler._free import FreeWorkers
from hodei.scheduler._pool_book import PoolBook

__all__ = ["Wait", "check_acquire", "demand_of", "refuse_impossible"]


@dataclass(eq=False)
class Wait:
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

    def assignment(self, chosen: WorkerRecord, bound_at: datetime) -> Assignment:
        """What this acquire gets once ``chosen`` is bound to it (a fresh assignment id each time)."""
        return Assignment(
            assignment_id=uuid.uuid4().hex,
            job_id=self.waiter.job_id,
            worker_id=chosen.worker_id,
            incarnation=chosen.incarnation,
            lease_ttl=self.lease_ttl,
            job=self.job,
            priority=self.waiter.priority,
            bound_at=bound_at,
            trace_context=self.trace_context,
        )


def check_acquire(job_id: str, requirements: Requirements, job: Job | None, ttl: float, wait: float) -> None:
    """Raise :class:`~hodei.errors.InvalidWorkerData` with every violation of the acquire, if any."""
    found = validate_job_id(job_id) + requirements.violations() + validate_assignment_ttl(ttl)
    if job is not None:
        found += job.violations()
    if not 0 <= wait <= MAX_WAIT:
        found.append(FieldViolation("wait_ms", f"must be between 0 and an hour, got {wait:g} s"))
    if found:
        raise InvalidWorkerData(f"the acquire of job {quote_short(job_id)} is invalid", violations=found)


async def refuse_impossible(
    requirements: Requirements,
    job: Job | None,
    *,
    pools: PoolBook,
    free: FreeWorkers,
    store: RegistryStore,
) -> None:
    """Raise :class:`~hodei.errors.NoWorkerFits` when no pool's template and no registered worker could ever
    serve the acquire (a job also needs a worker with an agent): waiting for one would be waiting for nothing."""
    if any(True for _ in pools.fitting(requirements)):
        return

    def could(record: WorkerRecord) -> bool:
        return requirements.fits(record) and (job is None or record.lease_ttl is not None)

    if any(could(record) for record in free.known()):
        return
    # Asked of the store (one query on its own thread or server), not by reading the registry here.
    if await store.any_fitting(requirements, with_lease=job is not None):
        return
    raise NoWorkerFits(
        f"no pool's template and no registered worker fits {quote_short(requirements.shape)}"
        + (" with an agent to run the job" if job is not None else ""),
        violations=[FieldViolation("requirements", "no pool and no worker can ever meet them")],
    )


def demand_of(
    queue: Iterable[Wait], now: float, fitting: Callable[[Requirements], Iterable[str]]
) -> list[WaitingDemand]:
    """What the waits of ``queue`` ask for, by requirement shape (the most waiting first), with the pools
    ``fitting`` names; a wait being bound is no longer demand."""
    shapes: dict[Requirements, list[Wait]] = {}
    for wait in queue:
        if not wait.binding:
            shapes.setdefault(wait.waiter.requirements, []).append(wait)
    found = [
        WaitingDemand(
            requirements,
            len(waits),
            max(now - w.since for w in waits),
            tuple(fitting(requirements)),
        )
        for requirements, waits in shapes.items()
    ]
    return sorted(found, key=lambda d: (-d.waiting, d.shape))
