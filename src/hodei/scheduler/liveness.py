"""LivenessMonitor: turns silent workers LOST, removes them after a grace, and distrusts mass silence.

Each sweep (every ``sweep_interval``):

1. if the sweep itself ran late, the scheduler stalled: every lease is extended by the delay;
2. during the recovery window after start, nothing expires;
3. a worker whose lease ran out is suspect, and becomes ``LOST`` after one more heartbeat interval of
   silence — unless more than ``mass_expiry_threshold`` of the leased workers went silent within one lease
   TTL, in which case at most ``slowed_expiry_per_sweep`` become LOST per sweep, and an ``EXPIRY_SLOWED``
   event says why (``EXPIRY_RESUMED`` when the pace is normal again);
4. workers ``LOST`` for longer than ``lost_grace`` are removed (``EXPIRED``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

from hodei.domain import WorkerStatus
from hodei.errors import WorkerNotFound
from hodei.lifecycle import LivenessConfig, WorkerEventKind
from hodei.observability.metrics import SchedulerMetrics
from hodei.scheduler.leases import LeaseTable
from hodei.scheduler.registry import WorkerRegistry

__all__ = ["LivenessMonitor"]

log = logging.getLogger(__name__)


class LivenessMonitor:
    def __init__(
        self,
        registry: WorkerRegistry,
        leases: LeaseTable,
        config: LivenessConfig,
        *,
        monotonic: Callable[[], float],
        on_removed: Callable[[str], Awaitable[None]] | None = None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        metrics = metrics or SchedulerMetrics()
        self._expired = metrics.lease_expiries.labels("lease_expired")
        self._removed_after_grace = metrics.lease_expiries.labels("lost_grace")
        self._registry = registry
        self._leases = leases
        self._config = config
        self._monotonic = monotonic
        self._on_removed = on_removed
        self._lost_since: dict[str, float] = {}
        self._status_before_lost: dict[str, WorkerStatus] = {}
        self._recent: deque[float] = deque()  # when workers were made LOST, within the last lease TTL
        self._recovering_until = 0.0
        self._last_sweep: float | None = None
        self.slowed = False
        self.stall_compensations = 0

    def begin(self, now: float) -> None:
        """Start the recovery window."""
        self._recovering_until = now + self._config.recovery_window
        self._last_sweep = now

    @property
    def recovering(self) -> bool:
        return self._monotonic() < self._recovering_until

    def is_lost(self, worker_id: str) -> bool:
        return worker_id in self._lost_since

    def mark_lost_since(self, worker_id: str, now: float) -> None:
        self._lost_since.setdefault(worker_id, now)

    def forget_lost(self) -> None:
        """Forget every LOST worker noted so far (a replica taking over reads them from the store again)."""
        self._lost_since.clear()
        self._status_before_lost.clear()

    def status_before_lost(self, worker_id: str) -> WorkerStatus | None:
        """What a LOST worker was doing before it went silent (a DRAINING worker stays DRAINING on return)."""
        return self._status_before_lost.get(worker_id)

    def forget(self, worker_id: str) -> None:
        self._lost_since.pop(worker_id, None)
        self._status_before_lost.pop(worker_id, None)

    def resume(self, now: float) -> None:
        """Sweeps start again from ``now`` (a replica that just took the lead): no stall is blamed on the gap."""
        self._last_sweep = now

    async def sweep(self, now: float) -> None:
        config = self._config
        if self._last_sweep is not None:
            lateness = now - self._last_sweep - config.sweep_interval
            if lateness > config.sweep_interval:
                self._leases.extend_all(lateness)
                self.stall_compensations += 1
                log.warning(
                    "liveness.sweep_late",
                    extra={"late_s": round(lateness, 3), "leases_extended_s": round(lateness, 3)},
                )
        self._last_sweep = now
        if now < self._recovering_until:
            return
        await self._expire_leases(now)
        await self._remove_long_lost(now)

    async def _expire_leases(self, now: float) -> None:
        config = self._config
        # A worker is suspect once its lease ran out, and LOST once it stayed silent one heartbeat interval
        # more: by then the rest of a group that died together (their last beats spread over one interval)
        # is suspect too, so a mass silence is seen whole instead of in slices.
        suspects = self._leases.expired(now)
        confirmed = self._leases.expired(now - config.heartbeat_interval)
        while self._recent and self._recent[0] < now - config.lease_ttl:
            self._recent.popleft()
        population = len(self._leases) + len(self._recent)
        silent = len(suspects) + len(self._recent)
        mass = (
            population >= config.mass_expiry_min_workers
            and silent > config.mass_expiry_threshold * population
        )
        if mass:
            if not self.slowed:
                self.slowed = True
                reason = (
                    f"{silent} of {population} leased workers went silent at once; suspecting the network or "
                    f"the scheduler, expiring at most {config.slowed_expiry_per_sweep} per {config.sweep_interval:g} s"
                )
                log.warning(reason)
                self._registry.events.publish(WorkerEventKind.EXPIRY_SLOWED, reason=reason)
            confirmed = confirmed[: config.slowed_expiry_per_sweep]
        elif self.slowed:
            self.slowed = False
            self._registry.events.publish(
                WorkerEventKind.EXPIRY_RESUMED,
                reason=f"{silent} of {population} leased workers silent; normal pace",
            )
        for worker_id in confirmed:
            self._leases.drop(worker_id)
            record = await self._registry.get(worker_id)
            if record is None:
                continue
            try:
                await self._registry.transition(
                    worker_id, WorkerStatus.LOST, reason=f"no heartbeat for {config.lease_ttl:g} s"
                )
            except WorkerNotFound:
                continue
            if record.status is not WorkerStatus.LOST:
                self._expired.inc()
            self._lost_since[worker_id] = now
            self._status_before_lost[worker_id] = record.status
            self._recent.append(now)

    async def _remove_long_lost(self, now: float) -> None:
        grace = self._config.lost_grace
        for worker_id, since in list(self._lost_since.items()):
            if now - since < grace:
                continue
            self.forget(worker_id)
            removed = await self._registry.expire(worker_id, reason=f"lost for more than {grace:g} s")
            if removed:
                self._removed_after_grace.inc()
            if removed and self._on_removed is not None:
                await self._on_removed(worker_id)
