"""LivenessRounds: every sweep interval, one round of liveness — share what this replica heard with the replicas
sharing its store, hold or seek the leadership, sweep if leading — then the workers-by-status gauge.

It is also what says whether the scheduler is healthy: a sweeper that died would leave every silent worker
AVAILABLE for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hodei.domain import WorkerStatus
from hodei.errors import SchedulerUnavailable
from hodei.lifecycle import LivenessConfig
from hodei.observability._metrics import SWEEP_FAILURE_KINDS, SchedulerMetrics
from hodei.ports import Leadership
from hodei.scheduler._liveness import LivenessMonitor
from hodei.scheduler._registry import WorkerRegistry
from hodei.scheduler._sessions import AgentStreams

__all__ = ["LivenessRounds"]

log = logging.getLogger(__name__)


class LivenessRounds:
    """``leading``: whether this replica ran expiry at the last round (``on_leadership`` hears each change);
    ``healthy``: whether rounds still run (``on_unhealthy`` hears when they stop for good)."""

    def __init__(
        self,
        monitor: LivenessMonitor,
        streams: AgentStreams,
        registry: WorkerRegistry,
        leadership: Leadership,
        liveness: LivenessConfig,
        *,
        monotonic: Callable[[], float],
        metrics: SchedulerMetrics,
    ) -> None:
        self._monitor = monitor
        self._streams = streams
        self._registry = registry
        self._leadership = leadership
        self._liveness = liveness
        self._monotonic = monotonic
        self._metrics = metrics
        self._workers = {status: metrics.workers.labels(status.value) for status in WorkerStatus}
        self._failures = {kind: metrics.liveness_sweep_failures.labels(kind) for kind in SWEEP_FAILURE_KINDS}
        self._sweeper: asyncio.Task[None] | None = None
        self.leading = False
        self.on_leadership: Callable[[bool], None] | None = None
        self.healthy = True
        self.on_unhealthy: Callable[[], None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._run(), name="hodei-liveness")
        self._sweeper.add_done_callback(self._ended)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            # A sweeper that died has been reported by _ended; stopping does not raise it again.
            await asyncio.wait([self._sweeper])
            self._sweeper = None

    async def _run(self) -> None:
        """Every sweep interval, a round.

        Whatever fails makes a round fail, never the sweeper: it is logged, counted
        (``hodei_liveness_sweep_failures_total``) and tried again at the next tick. A sweeper that stopped
        would leave every silent worker AVAILABLE for good (and a PostgreSQL leader keeps its lock, so no other
        replica would sweep either). Every step of a round is written store first, so a round cut short leaves
        nothing half-done.
        """
        while True:
            await asyncio.sleep(self._liveness.sweep_interval)
            try:
                await self.tick(self._monotonic())
            except SchedulerUnavailable as error:
                self._failures["unavailable"].inc()
                log.warning("liveness.sweep_skipped", extra={"error": str(error)})
            except Exception:
                self._failures["other"].inc()
                log.exception("liveness.sweep_failed")

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # Liveness has stopped: nobody would ever be found LOST. Say so, and tell whoever watches health.
        log.critical(
            "liveness.sweeper_died",
            extra={"consequence": "no worker will be found LOST"},
            exc_info=task.exception(),
        )
        self.healthy = False
        if self.on_unhealthy is not None:
            self.on_unhealthy()

    async def tick(self, now: float) -> None:
        """One round of liveness, then the workers-by-status gauge from the store, on every replica."""
        await self._round(now)
        await self.count_workers()

    async def count_workers(self) -> None:
        """Set ``hodei_workers{status}`` from the store: every status, 0 for those nobody has."""
        counts = await self._registry.store.count_by_status()
        for status, series in self._workers.items():
            series.set(counts.get(status, 0))

    async def _round(self, now: float) -> None:
        monitor = self._monitor
        if monitor.shared:
            found = await monitor.share(self._streams.sessions)
            for worker_id in found.gone:  # deleted under its open stream (by another replica)
                self._streams.vanished(worker_id)
            await self._streams.resume(found.lost)  # the leader found it silent: it is not
        leading = await self._leadership.acquire()
        if leading != self.leading:
            if leading and monitor.shared:
                # Taking over: only once the store has been read is the takeover done (a failure here is
                # retried whole at the next tick).
                monitor.resume(now)
                await monitor.restore(now, takeover=True)
            self.leading = leading
            self._metrics.lease_leader.set(1 if leading else 0)
            if monitor.shared:  # a scheduler alone with its store leads without an election
                if leading:
                    log.info("leadership.acquired")
                else:
                    log.warning("leadership.released")
            if self.on_leadership is not None:
                self.on_leadership(leading)
        if not leading:
            monitor.resume(now)  # a follower does not sweep; when it leads, it starts from now
            return
        if monitor.shared:
            await monitor.adopt_lease_ages(now)
        await monitor.sweep(now)
