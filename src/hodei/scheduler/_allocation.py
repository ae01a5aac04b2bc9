"""Allocator: workers bound to jobs — acquired, renewed, released — and the queue of acquires that wait.

The truth is the registry: a worker is bound while its stored record holds the :class:`Assignment` (BUSY).
Binding is one atomic read-modify-write of that record (still AVAILABLE, same incarnation, not bound), so two
acquires never take one worker, and the store's unique job index makes a retried acquire find the first
assignment instead of binding a second worker. What the allocator keeps in memory is derived or bounded:

- the waiting acquires (a future each: :class:`~hodei.scheduler._waits.Wait`, checked and turned into demand
  there), served in order by :func:`hodei.pools.match` — priority, then arrival; best fit — from the AVAILABLE
  workers the store lists at that moment;
- what it bound, in its :class:`~hodei.scheduler._assignments.Assignments`: each assignment's lease, its end
  (released, finished, abandoned, or lost with its worker) and the results kept a while for the holders.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
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
    WorkerRecord,
    WorkerStatus,
    utcnow,
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
from hodei.ports import Acquired, BoundJobs, RegistryStore, WorkerFilter
from hodei.scheduler._assignments import GONE, Assignments, Tell
from hodei.scheduler._free import FreeWorkers
from hodei.scheduler._pool_book import PoolBook
from hodei.scheduler._registry import WorkerRegistry
from hodei.scheduler._waits import Wait, check_acquire, demand_of, refuse_impossible

__all__ = ["Allocator"]

log = logging.getLogger(__name__)

_POKES = frozenset(
    {
        WorkerEventKind.AVAILABLE,
        WorkerEventKind.CONNECTED,
        WorkerEventKind.REGISTERED,
        WorkerEventKind.UPDATED,
    }
)


class Allocator:
    """``tell`` pushes a command down a worker's stream (here or on another replica): whether it went. The
    assignments it binds are kept by :attr:`assignments`, which renews, releases and ends them."""

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
        self._waiting: dict[str, Wait] = {}  # by job id
        self.assignments = Assignments(
            registry, tell=tell, poke=self.poke, monotonic=monotonic, metrics=self._metrics
        )
        self.pools = PoolBook(registry.store, self._metrics)
        self._poked = asyncio.Event()
        self._one_serving = asyncio.Lock()  # one round of matching at a time: a waiter is bound once
        self._rounds_started = 0
        self._free = FreeWorkers(
            lambda: self._registry.records(WorkerFilter(statuses=frozenset({WorkerStatus.AVAILABLE})))
        )
        self._serving: asyncio.Task[None] | None = None
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
                self.assignments.track(record, now)

    def start(self) -> None:
        self._serving = asyncio.ensure_future(self._serve_forever())

    async def stop(self) -> None:
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._serving
        await self.assignments.stop()
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
        check_acquire(job_id, requirements, job, ttl, wait)
        waiting = None
        joined = False  # a retry of an acquire that still waits: the binding is the first's, not this call's
        while waiting is None:
            # Every await below may let another acquire of the same job in: look again after each.
            if (known := self.assignments.known(job_id)) is not None:
                return known
            if (waiting := self._waiting.get(job_id)) is not None:
                # A retry of an acquire that still waits: one wait, for as long as the longest asks, served
                # after the round serving the first (if one runs).
                waiting.until = max(waiting.until, self._monotonic() + wait)
                joined = True
                await self._serve()
                break
            if (known := await self.assignments.find_job(job_id)) is not None:
                return known
            if job_id in self._waiting or self.assignments.known(job_id):
                continue
            now = self._monotonic()
            waiting = Wait(
                Waiter(job_id, requirements, priority, next(self._arrivals)), job, ttl, now, now + wait
            )
            waiting.trace_context = dict(trace_context or {})
            self._waiting[job_id] = waiting
            await self._serve()
            if not waiting.bound.done():
                try:
                    await refuse_impossible(
                        requirements, job, pools=self.pools, free=self._free, store=self._registry.store
                    )
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
        await self.assignments.expire(now)
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
        chosen: list[tuple[Wait, Assignment]] = []
        for waiter, record in match([w.waiter for w in waits.values()], free):
            wait = waits[waiter.job_id]
            if wait.job is not None and record.lease_ttl is None:
                continue  # a job needs an agent to run it
            self._free.gone(record.worker_id)  # bound now, or found taken: either way not free
            chosen.append((wait, wait.assignment(record, self._clock())))
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

    async def _bind(self, assignments: list[Assignment]) -> list[WorkerRecord | Acquired | None]:
        """Each assignment's worker bound (its record), or None (taken meanwhile: the next round chooses again),
        or the job's assignment another replica made meanwhile. One commit for all, unless one of the jobs
        was bound elsewhere: then one at a time."""
        try:
            return list(await self._registry.bind(assignments))
        except JobAlreadyBound:
            if len(assignments) > 1:
                return [found for assignment in assignments for found in await self._bind([assignment])]
            return [await self.assignments.find_job(assignments[0].job_id)]

    async def _deliver(
        self, wait: Wait, assignment: Assignment, bound: WorkerRecord | Acquired | None
    ) -> Acquired | None:
        """The bound worker tracked and, with a job, told to run it (an agent that cannot be told: the
        assignment ends WORKER_LOST, and the next round chooses again)."""
        if bound is None or isinstance(bound, Acquired):
            return bound
        self.assignments.track(bound, self._monotonic())
        if wait.job is not None:
            delivered = await self._tell(bound, WorkerCommand(CommandKind.RUN_JOB, assignment=assignment))
            if not delivered:
                await self.assignments.end(
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

    # -- what the registry's events say ------------------------------------------------------------------

    def _heard(self, event: WorkerEvent) -> None:
        if event.record is not None:
            self._free.note(event.record)
        elif event.kind in GONE:
            self._free.gone(event.worker_id)
        if event.kind in _POKES:
            self.poke()
        else:
            self.assignments.heard(event)

    # -- demand and pools --------------------------------------------------------------------------------

    def demand(self) -> list[WaitingDemand]:
        """What waits now, by requirement shape (the most waiting first), with the pools whose template fits."""
        return demand_of(self._waiting.values(), self._monotonic(), self.pools.fitting)

    def _demand_changed(self) -> None:
        events = self._registry.events
        if events.wants(WorkerEventKind.DEMAND):
            demand = tuple(self.demand())
            # As the demand says: waiters being bound are not counted.
            waiting = sum(d.waiting for d in demand)
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
