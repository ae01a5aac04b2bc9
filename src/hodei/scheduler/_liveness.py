"""LivenessMonitor: turns silent workers LOST, removes them after a grace, and distrusts mass silence.

Each sweep (every ``sweep_interval``):

1. if the sweep itself ran late, the scheduler stalled: every lease is extended by the delay;
2. during the recovery window after start, nothing expires;
3. a worker whose lease ran out is suspect, and becomes ``LOST`` after one more heartbeat interval of
   silence — however many go silent together: a status tells the truth at once;
4. workers ``LOST`` for longer than ``lost_grace`` are removed (``EXPIRED``) — unless more than
   ``mass_expiry_threshold`` of the leased workers are unreachable (LOST or suspect), in which case the
   scheduler suspects itself or the network, removes at most ``slowed_expiry_per_sweep`` per sweep, and an
   ``EXPIRY_SLOWED`` event says why (``EXPIRY_RESUMED`` when the pace is normal again). Workers that come
   back meanwhile (their heartbeats resume) are AVAILABLE again without registering anew.

Every change is written to the store first; memory follows only what the store took, so a write that fails
is tried again at the next sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from hodei.domain import WorkerStatus
from hodei.lifecycle import LivenessConfig, WorkerEventKind
from hodei.observability._metrics import SchedulerMetrics
from hodei.scheduler._leases import LeaseTable
from hodei.scheduler._registry import WorkerRegistry

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
        self._pace(now)
        await self._remove_long_lost(now)

    async def _expire_leases(self, now: float) -> None:
        config = self._config
        # A worker is suspect once its lease ran out, and LOST once it stayed silent one heartbeat interval
        # more: by then the rest of a group that died together (their last beats spread over one interval)
        # is suspect too. LOST says the truth at once, however many went silent: nobody is offered a worker
        # that nobody hears. What a mass silence slows is the removal (see _pace).
        for worker_id in self._leases.expired(now - config.heartbeat_interval):
            record = await self._registry.mark_lost(
                worker_id, reason=f"no heartbeat for {config.lease_ttl:g} s"
            )
            # The store says LOST (or holds no lease for it: nothing to expire): memory follows. A write that
            # failed raised, and left the lease, to try again.
            self._leases.drop(worker_id)
            if record is None:
                continue
            if record.status is not WorkerStatus.LOST:
                self._expired.inc()
            self._lost_since[worker_id] = now
            self._status_before_lost[worker_id] = record.status

    def _pace(self, now: float) -> None:
        """Whether removals are slowed: while more than ``mass_expiry_threshold`` of the leased workers are
        unreachable (LOST, or their lease ran out), the scheduler suspects itself or the network and removes
        at most ``slowed_expiry_per_sweep`` LOST workers per sweep. Derived from the state at every sweep."""
        config = self._config
        lost = set(self._lost_since)
        population = len(lost | set(self._leases))
        unreachable = len(lost | set(self._leases.expired(now)))
        mass = (
            population >= config.mass_expiry_min_workers
            and unreachable > config.mass_expiry_threshold * population
        )
        if mass and not self.slowed:
            self.slowed = True
            reason = (
                f"{unreachable} of {population} leased workers unreachable at once; suspecting the network or "
                f"the scheduler: they are LOST, and removed at most {config.slowed_expiry_per_sweep} per "
                f"{config.sweep_interval:g} s"
            )
            self._registry.events.publish(WorkerEventKind.EXPIRY_SLOWED, reason=reason)
        elif not mass and self.slowed:
            self.slowed = False
            self._registry.events.publish(
                WorkerEventKind.EXPIRY_RESUMED,
                reason=f"{unreachable} of {population} leased workers unreachable; removals at normal pace",
            )

    async def _remove_long_lost(self, now: float) -> None:
        grace = self._config.lost_grace
        due = sorted(
            (since, worker_id) for worker_id, since in self._lost_since.items() if now - since >= grace
        )
        if self.slowed:
            due = due[: self._config.slowed_expiry_per_sweep]
        for _, worker_id in due:
            removed = await self._registry.expire(worker_id, reason=f"lost for more than {grace:g} s")
            # Removed, or no longer LOST in the store (it came back): either way no longer ours to remove. A
            # write that failed left it noted, to try again at the next sweep.
            self.forget(worker_id)
            if removed:
                self._removed_after_grace.inc()
            if removed and self._on_removed is not None:
                await self._on_removed(worker_id)
