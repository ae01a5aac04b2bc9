"""LivenessMonitor: turns silent workers LOST, removes them after a grace, and distrusts mass silence.

Each sweep (every ``sweep_interval``):

1. if the sweep itself ran late, the scheduler stalled: every lease is extended by the delay;
2. during the recovery window after start, nothing expires;
3. expired leases make their workers ``LOST`` — unless more than ``mass_expiry_threshold`` of the leased
   workers expired at once, in which case at most ``slowed_expiry_per_sweep`` do, and an ``EXPIRY_SLOWED``
   event says why (``EXPIRY_RESUMED`` when the pace is normal again);
4. workers ``LOST`` for longer than ``lost_grace`` are removed (``EXPIRED``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hodei.domain import WorkerStatus
from hodei.errors import WorkerNotFound
from hodei.lifecycle import LivenessConfig, WorkerEventKind
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
    ) -> None:
        self._registry = registry
        self._leases = leases
        self._config = config
        self._monotonic = monotonic
        self._on_removed = on_removed
        self._lost_since: dict[str, float] = {}
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

    def forget(self, worker_id: str) -> None:
        self._lost_since.pop(worker_id, None)

    async def run(self) -> None:
        """Sweep forever (until cancelled)."""
        while True:
            await asyncio.sleep(self._config.sweep_interval)
            await self.sweep(self._monotonic())

    async def sweep(self, now: float) -> None:
        config = self._config
        if self._last_sweep is not None:
            lateness = now - self._last_sweep - config.sweep_interval
            if lateness > config.sweep_interval:
                self._leases.extend_all(lateness)
                self.stall_compensations += 1
                log.warning("liveness sweep ran %.3f s late; leases extended by as much", lateness)
        self._last_sweep = now
        if now < self._recovering_until:
            return
        await self._expire_leases(now)
        await self._remove_long_lost(now)

    async def _expire_leases(self, now: float) -> None:
        config = self._config
        due = self._leases.expired(now)
        leased = len(self._leases)
        mass = leased >= config.mass_expiry_min_workers and len(due) > config.mass_expiry_threshold * leased
        if mass:
            if not self.slowed:
                self.slowed = True
                reason = (
                    f"{len(due)} of {leased} leased workers went silent at once; suspecting the network or the "
                    f"scheduler, expiring at most {config.slowed_expiry_per_sweep} per {config.sweep_interval:g} s"
                )
                log.warning(reason)
                self._registry.events.publish(WorkerEventKind.EXPIRY_SLOWED, reason=reason)
            due = due[: config.slowed_expiry_per_sweep]
        elif self.slowed:
            self.slowed = False
            self._registry.events.publish(
                WorkerEventKind.EXPIRY_RESUMED, reason=f"{len(due)} of {leased} leases expired; normal pace"
            )
        for worker_id in due:
            self._leases.drop(worker_id)
            self._lost_since[worker_id] = now
            try:
                await self._registry.transition(
                    worker_id, WorkerStatus.LOST, reason=f"no heartbeat for {config.lease_ttl:g} s"
                )
            except WorkerNotFound:
                self._lost_since.pop(worker_id, None)

    async def _remove_long_lost(self, now: float) -> None:
        grace = self._config.lost_grace
        for worker_id, since in list(self._lost_since.items()):
            if now - since < grace:
                continue
            del self._lost_since[worker_id]
            removed = await self._registry.expire(worker_id, reason=f"lost for more than {grace:g} s")
            if removed and self._on_removed is not None:
                await self._on_removed(worker_id)
