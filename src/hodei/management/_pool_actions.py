"""How the pool autoscaler acts on a tick's plan: the provisions, retirements and scale reports it starts in the
background, and the sets of them in flight that the next tick counts.

What is in flight is read from the tasks themselves (:meth:`PoolActions.provisions` and
:attr:`PoolActions.retiring`), never from counters: a task that ended has left its set. A provision that fails
is written in its pool's :class:`~hodei.management._pool_census.PoolHistory` (its backoff); one that succeeds
clears the failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from hodei._quoting import quote_short
from hodei.domain import MAX_WORKER_ID_LENGTH, utcnow
from hodei.errors import HodeiError
from hodei.management._pool_census import PoolHistory, PoolTick
from hodei.management._service import WorkerManagementService
from hodei.pools import PoolSpec, ScaleEvent, ScalePlan
from hodei.ports import PoolPort

__all__ = ["PoolActions"]

log = logging.getLogger(__name__)

_MAX_FAILURES_KEPT = 32


class PoolActions:
    """``PoolActions(service, pools, history)``: provisions and retires through ``service``, reports scale
    events to ``pools`` (the scheduler), and keeps each pool's provision failures in ``history`` (the
    autoscaler's, shared). ``call_timeout`` bounds each report; ``clock`` (monotonic seconds) dates failures."""

    def __init__(
        self,
        service: WorkerManagementService,
        pools: PoolPort,
        history: dict[str, PoolHistory],
        *,
        call_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.service = service
        self.pools = pools
        self.metrics = service.metrics
        self.call_timeout = call_timeout
        self._history = history
        self._clock = clock
        self._provisions: dict[str, dict[str, asyncio.Task[None]]] = {}  # pool -> worker id -> its task
        self._retirements: dict[str, asyncio.Task[None]] = {}  # worker id -> its task
        self._reports: set[asyncio.Task[None]] = set()  # scale events on their way to the scheduler

    def in_flight(self) -> list[asyncio.Task[None]]:
        """The provisions, retirements and scale reports running now."""
        tasks = [t for pool in self._provisions.values() for t in pool.values()]
        return tasks + list(self._retirements.values()) + list(self._reports)

    def provisions(self) -> dict[str, frozenset[str]]:
        """The ids being provisioned right now, by pool."""
        return {pool: _running(tasks) for pool, tasks in self._provisions.items()}

    def provisioning(self, pool: str) -> frozenset[str]:
        """The ids being provisioned for ``pool`` right now."""
        return _running(self._provisions.get(pool, {}))

    @property
    def retiring(self) -> frozenset[str]:
        """The ids being retired right now."""
        return _running(self._retirements)

    def act(self, pool_tick: PoolTick) -> None:
        """Start what ``pool_tick``'s plan says (and retire the workers it recycles or writes off), without
        waiting for any of it; show the pool's desired size and count the scale events."""
        spec, plan, now = pool_tick.spec, pool_tick.plan, pool_tick.observation.now
        pool = spec.name
        self.metrics.pool_desired_workers.labels(pool).set(plan.desired)
        history = self._history[pool]
        if plan.provision:
            history.last_scale_up = now
            self.metrics.pool_scale_events.labels(pool, "up", plan.reason.value).inc(plan.provision)
            self._report(ScaleEvent(pool, "up", plan.reason.value, plan.desired, plan.provision, utcnow()))
            for _ in range(plan.provision):
                self._provision(spec)
        if plan.retire:
            history.last_scale_down = now
        for reason, retired in (
            (plan.reason.value, plan.retire),
            ("recycle", pool_tick.recycled),
            ("lost", pool_tick.written_off),
        ):
            if retired:
                self.metrics.pool_scale_events.labels(pool, "down", reason).inc(len(retired))
                self._report(ScaleEvent(pool, "down", reason, plan.desired, len(retired), utcnow()))
            for worker_id in retired:
                self._retire(pool, worker_id, reason)
        if plan.acts or pool_tick.recycled or pool_tick.written_off:
            log.info(
                "pool.scale",
                extra={
                    "pool": pool,
                    "desired": plan.desired,
                    "provision": plan.provision,
                    "retire": ",".join(plan.retire + pool_tick.recycled + pool_tick.written_off),
                    "reason": _reasons(plan, pool_tick),
                },
            )

    def _report(self, event: ScaleEvent) -> None:
        """Tell the scheduler what was decided (its watchers, ``hodei pools status``), in the background: a
        report that fails is logged, never retried, and never holds a tick."""
        task = asyncio.create_task(self._send_report(event), name=f"hodei-scale-report-{event.pool}")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _send_report(self, event: ScaleEvent) -> None:
        try:
            await self.pools.report_scale_event(event, timeout=self.call_timeout)
        except HodeiError as error:
            log.warning(
                "pool.scale_report_failed", extra={"pool": event.pool, "error": quote_short(str(error))}
            )

    def _provision(self, spec: PoolSpec) -> None:
        worker_id = f"{spec.name[: MAX_WORKER_ID_LENGTH - 9]}-{uuid.uuid4().hex[:8]}"
        tasks = self._provisions.setdefault(spec.name, {})
        task = asyncio.create_task(self._provision_one(spec, worker_id), name=f"hodei-provision-{worker_id}")
        tasks[worker_id] = task

    async def _provision_one(self, spec: PoolSpec, worker_id: str) -> None:
        try:
            async with asyncio.timeout(spec.provision_timeout):
                await self.service.provision_worker(spec.worker_config, worker_id=worker_id)
        except TimeoutError:
            # The provider may have made something before the timeout cut it short: it must not stay.
            with contextlib.suppress(HodeiError):
                await asyncio.shield(self.service.provider.destroy(worker_id))
            self._failed(
                spec.name, worker_id, f"no worker within provision_timeout ({spec.provision_timeout:g} s)"
            )
        except HodeiError as error:
            self._failed(spec.name, worker_id, str(error))
        else:
            self._history[spec.name].failures.clear()

    def _failed(self, pool: str, worker_id: str, error: str) -> None:
        failures = self._history[pool].failures
        failures.append(self._clock())
        del failures[:-_MAX_FAILURES_KEPT]
        self.metrics.pool_provision_failures.labels(pool).inc()
        log.warning(
            "pool.provision_failed",
            extra={
                "pool": pool,
                "worker_id": worker_id,
                "error": quote_short(error),
                "failures": len(failures),
            },
        )

    def _retire(self, pool: str, worker_id: str, reason: str) -> None:
        # Never one being retired already: those are counted as leaving, never planned again.
        task = asyncio.create_task(
            self._retire_one(pool, worker_id, reason), name=f"hodei-retire-{worker_id}"
        )
        self._retirements[worker_id] = task

    async def _retire_one(self, pool: str, worker_id: str, reason: str) -> None:
        try:
            # Chosen idle at the tick; a job may have been bound to it since: then it stays (the next tick sees
            # it busy). The scheduler checks it in the same write as the drain, so no job slips in between.
            result = await self.service.decommission_worker(worker_id, only_if_idle=reason != "lost")
            if result.kept:
                log.info(
                    "pool.retire_skipped", extra={"pool": pool, "worker_id": worker_id, "reason": "busy"}
                )
        except HodeiError as error:
            log.warning(
                "pool.retire_failed",
                extra={
                    "pool": pool,
                    "worker_id": worker_id,
                    "reason": reason,
                    "error": quote_short(str(error)),
                },
            )


def _reasons(plan: ScalePlan, pool_tick: PoolTick) -> str:
    reasons = [plan.reason.value] if plan.acts else []
    reasons += ["recycle"] * bool(pool_tick.recycled) + ["lost"] * bool(pool_tick.written_off)
    return ",".join(reasons)


def _running(tasks: dict[str, asyncio.Task[None]]) -> frozenset[str]:
    """The ids whose task still runs, read from the tasks themselves: one that ended is not in flight from the
    step it ended in (never a turn of the loop later, as a done callback would say), and is dropped here."""
    for worker_id in [worker_id for worker_id, task in tasks.items() if task.done()]:
        del tasks[worker_id]
    return frozenset(tasks)
