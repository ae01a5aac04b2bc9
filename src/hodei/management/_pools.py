"""The pool autoscaler: keeps every pool the scheduler knows between its bounds, one tick at a time.

Each tick is level-triggered: it reads the pools (with the acquires waiting for each) from the scheduler, the
pools' workers from the registry and the machines from the provider, derives each pool's
:class:`~hodei.pools.PoolObservation` afresh, and acts on :func:`~hodei.pools.plan_scale`. Nothing it acts
on is a counter kept between ticks; what it remembers is its own history (when it last scaled each pool, when
provisions failed, when it first saw a worker idle) and the provisions and retirements it has in flight — live
task sets, whose members leave when their task ends.

How a pool's workers are counted is :func:`~hodei.management._pool_census.census`'s rule (its module says it);
how a plan is acted on, and what is in flight, is :class:`~hodei.management._pool_actions.PoolActions`'s.

Only the workers of this control plane's owner (the ``hodei.owner`` label) are counted or retired, and only
the pools whose provider is this control plane's provider's type are sized. A demand shape that several pools
fit counts for the first of them in name order only, so two pools never both scale for one job — whichever
control plane sizes that pool.

An idle worker's ``idle_since`` is when this autoscaler first saw it idle in its current incarnation and job
count (the control plane's monotonic clock): no clock of another host is trusted, a job that ran between two
ticks restarts it, and a restarted control plane waits a full ``idle_timeout`` before it retires anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from hodei._ownership import OWNER_LABEL
from hodei._quoting import clip
from hodei._settings import check_settings
from hodei._waiting import wait_until_set
from hodei.domain import DynamicWorker, WorkerRecord
from hodei.errors import HodeiError
from hodei.lifecycle import WorkerEventKind
from hodei.management._pool_actions import PoolActions
from hodei.management._pool_census import PoolHistory, PoolTick, census
from hodei.management._pools_file import PoolsFile
from hodei.management._service import WorkerManagementService
from hodei.pools import PoolSpec, WaitingDemand, waiting_by_pool
from hodei.ports import PoolPort, SchedulerPort, WorkerFilter

__all__ = ["PoolAutoscaler", "PoolAutoscalerConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolAutoscalerConfig:
    """``interval``: seconds between ticks; ``call_timeout`` bounds each call to the scheduler; the registry is
    read ``page_size`` workers a page. A pool whose provisions fail waits ``backoff_initial`` seconds before
    the next, doubling with each failure in a row up to ``backoff_max``; a success resets it. More acquires
    waiting than the last tick saw wake the autoscaler before its interval is up, but no sooner than
    ``wake_gap`` seconds after the last tick began."""

    interval: float = 1.0
    call_timeout: float = 10.0
    page_size: int = 500
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    wake_gap: float = 0.05

    def __post_init__(self) -> None:
        check_settings(
            self,
            {
                "interval": ("> 0", self.interval > 0),
                "call_timeout": ("> 0", self.call_timeout > 0),
                "page_size": ("between 1 and 1000", 1 <= self.page_size <= 1000),
                "backoff_initial": ("> 0", self.backoff_initial > 0),
                "backoff_max": (">= backoff_initial", self.backoff_max >= self.backoff_initial),
                "wake_gap": (">= 0", self.wake_gap >= 0),
            },
        )


class PoolAutoscaler:
    """``PoolAutoscaler(service, pools)``: sizes the pools through ``service`` (a
    :class:`WorkerManagementService` with a registration adapter), reading them from ``pools`` (the scheduler's
    :class:`~hodei.ports.PoolPort`) and their workers from ``registry`` (default: the adapter's port).

    ``await tick()`` runs one tick; ``start()``/``stop()`` (or ``async with``) run one every ``interval`` in the
    background, where a tick that fails is logged and the next one comes. ``pools_file``, if given, is synced
    at the start of every tick. ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        service: WorkerManagementService,
        pools: PoolPort,
        *,
        registry: SchedulerPort | None = None,
        config: PoolAutoscalerConfig | None = None,
        pools_file: PoolsFile | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if registry is None:
            if service.registration is None:
                raise ValueError(
                    "the autoscaler reads the registry: give a registry, or a service that registers"
                )
            registry = service.registration.port
        self.service = service
        self.pools = pools
        self.registry = registry
        self.config = config or PoolAutoscalerConfig()
        self.pools_file = pools_file
        self.metrics = service.metrics
        self.owner = service.owner
        self._clock = clock
        self._worker_type = getattr(service.provider, "worker_type", None)
        self._history: dict[str, PoolHistory] = {}
        self._actions = PoolActions(
            service, pools, self._history, call_timeout=self.config.call_timeout, clock=clock
        )
        self._idle_seen: dict[str, tuple[tuple[int, int], float]] = {}
        self._skipped: set[str] = set()
        self._gauged: set[str] = set()  # the pools whose desired size the metrics show
        self._loop: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None  # wakes the loop when more acquires wait
        self._wake = asyncio.Event()
        self._waiting_seen: dict[str, int] = {}  # pool -> the acquires waiting for it at the last tick
        self._started = False

    # -- the loop --------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Tick every ``interval`` in the background until :meth:`stop`. A second start is an error."""
        if self._started:
            raise RuntimeError("the pool autoscaler was started already")
        self._started = True
        self._loop = asyncio.create_task(self._run(), name="hodei-pool-autoscaler")
        self._listener = asyncio.create_task(self._listen(), name="hodei-pool-demand")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            self._wake.clear()
            try:
                await self.tick()
            except HodeiError as error:  # the scheduler or the provider could not be read: nothing was done
                log.warning("pools.tick_failed", extra={"error": clip(str(error), 400)})
            except Exception:  # one failed tick must not stop the sizing of every pool: logged, whole
                log.exception("pools.tick_failed")
            # The next tick comes after ``interval``, or as soon as more acquires wait than this tick saw, but
            # never sooner than ``wake_gap`` after this one began (a burst of acquires is sized a few times,
            # not once per acquire).
            if await wait_until_set(self._wake, self.config.interval):
                await asyncio.sleep(max(0.0, self.config.wake_gap - (loop.time() - began)))

    async def _listen(self) -> None:
        """Wake the loop whenever the scheduler's DEMAND events show more acquires waiting for a pool than the
        last tick saw. Without the events (a broken stream) the ticks keep their interval, and the stream is
        opened again an interval later."""
        while True:
            try:
                async for event in self.pools.watch_workers(kinds={WorkerEventKind.DEMAND}):
                    if self._waits_more(event.demand):
                        self._wake.set()
            except HodeiError as error:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # the stream ended because this task is stopped
                    raise asyncio.CancelledError from None
                log.debug("pools.demand_watch_ended", extra={"error": clip(str(error), 400)})
            except Exception:  # a bug must not end the wake-ups for good: logged, and the stream opened again
                log.exception("pools.demand_watch_failed")
            await asyncio.sleep(self.config.interval)

    def _waits_more(self, demand: tuple[WaitingDemand, ...]) -> bool:
        fitting = {pool for shape in demand for pool in shape.pools}
        waiting = waiting_by_pool(demand, fitting)
        return any(count > self._waiting_seen.get(pool, 0) for pool, count in waiting.items())

    async def stop(self) -> None:
        """Stop ticking, and cancel the provisions and retirements in flight (a provision cancelled half-way
        is rolled back by the service). Idempotent."""
        tasks = [t for t in (self._loop, self._listener) if t is not None] + self._actions.in_flight()
        self._loop = self._listener = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def settle(self) -> None:
        """Wait until the provisions and retirements in flight now have ended (for tests and shutdown)."""
        await asyncio.gather(*self._actions.in_flight(), return_exceptions=True)

    def provisioning(self, pool: str) -> frozenset[str]:
        """The ids this autoscaler is provisioning for ``pool`` right now."""
        return self._actions.provisioning(pool)

    @property
    def retiring(self) -> frozenset[str]:
        """The ids this autoscaler is retiring right now."""
        return self._actions.retiring

    # -- one tick --------------------------------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[PoolTick]:
        """Observe every pool, plan, and start what the plans say (without waiting for it); one
        :class:`PoolTick` per pool sized. Raises the error of a read that failed (nothing done)."""
        if self.pools_file is not None:
            await self.pools_file.sync()
        # What is in flight is taken before anything is read: a provision that ends during the reads is then
        # counted either here or in what was read, never in neither.
        in_flight = self._actions.provisions()
        retiring = self._actions.retiring
        timeout = self.config.call_timeout
        # The registry is read before the waiting acquires (the scheduler's count; a shape several pools fit:
        # the first by name): a job bound between the two reads is then counted in neither (provisioned for at
        # the next tick), never in both (busy in the records and still waiting: one machine too many).
        records = await self._records()
        statuses = await self.pools.list_pools(timeout=timeout)
        self._waiting_seen = {status.spec.name: status.waiting for status in statuses}
        machines = await self._machines()
        now = self._clock() if now is None else now
        ticks = []
        for status in sorted(statuses, key=lambda s: s.spec.name):
            spec = status.spec
            if self._worker_type is not None and spec.provider is not self._worker_type:
                self._skip(spec)
                continue
            pool_tick = census(
                spec,
                now,
                records.get(spec.name, {}),
                machines.get(spec.name, set()),
                in_flight.get(spec.name, frozenset()),
                retiring,
                status.waiting,
                history=self._history.setdefault(spec.name, PoolHistory()),
                idle_since=lambda record: self._idle_since(record, now),
                backoff=(self.config.backoff_initial, self.config.backoff_max),
            )
            self._actions.act(pool_tick)
            ticks.append(pool_tick)
        self._forget_idle({r for pool in records.values() for r in pool})
        self._forget_pools({t.spec.name for t in ticks})
        return ticks

    def _forget_pools(self, sized: set[str]) -> None:
        """A pool no longer sized (gone from the pools, or another provider's) has no desired size any more."""
        for pool in self._gauged - sized:
            self.metrics.pool_desired_workers.remove(pool)
        self._gauged = sized

    async def _records(self) -> dict[str, dict[str, WorkerRecord]]:
        """This owner's registered workers, by pool and id (paged)."""
        by_pool: dict[str, dict[str, WorkerRecord]] = {}
        scope = WorkerFilter(labels={OWNER_LABEL: self.owner})
        token = ""
        while True:
            page = await self.registry.list_workers(
                scope, page_size=self.config.page_size, page_token=token, timeout=self.config.call_timeout
            )
            for record in page.workers:
                by_pool.setdefault(record.pool, {})[record.worker_id] = record
            token = page.next_page_token
            if not token:
                return by_pool

    async def _machines(self) -> dict[str, set[str]]:
        """This owner's machines the provider lists, by pool."""
        by_pool: dict[str, set[str]] = {}
        for worker in await self.service.provider.list_workers():
            if _owner(worker) == self.owner:
                by_pool.setdefault(worker.pool, set()).add(worker.worker_id)
        return by_pool

    def _skip(self, spec: PoolSpec) -> None:
        if spec.name not in self._skipped:
            self._skipped.add(spec.name)
            log.info(
                "pool.skipped",
                extra={
                    "pool": spec.name,
                    "provider": spec.provider.value,
                    "reason": "another provider's pool",
                },
            )

    def _idle_since(self, record: WorkerRecord, now: float) -> float:
        key = (record.incarnation, record.use_count)
        seen = self._idle_seen.get(record.worker_id)
        if seen is None or seen[0] != key:
            seen = self._idle_seen[record.worker_id] = (key, now)
        return seen[1]

    def _forget_idle(self, registered: set[str]) -> None:
        for worker_id in self._idle_seen.keys() - registered:
            del self._idle_seen[worker_id]


def _owner(worker: DynamicWorker) -> str | None:
    return worker.config.labels.get(OWNER_LABEL)
