"""The pools the scheduler was given (ApplyPools; kept in the registry store when it can), the pools whose
template fits a requirement, and each pool's workers by status and waiting acquires — derived when asked."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from hodei._quoting import quote_short
from hodei.domain import WorkerStatus
from hodei.observability._metrics import SchedulerMetrics
from hodei.pools import (
    PoolSpec,
    PoolStatus,
    Requirements,
    ScaleEvent,
    WaitingDemand,
    parse_pools,
    waiting_by_pool,
)
from hodei.ports import PoolDefinitions, RegistryStore

__all__ = ["RECENT_EVENTS", "PoolBook"]

RECENT_EVENTS = 10
"""The scale events kept for each pool (the control plane's reports), newest last."""

log = logging.getLogger(__name__)


class PoolBook:
    def __init__(self, store: RegistryStore, metrics: SchedulerMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self.pools: dict[str, PoolSpec] = {}
        self._gauged: set[str] = set()
        self._recent: dict[str, deque[ScaleEvent]] = {}

    def scaled(self, event: ScaleEvent) -> bool:
        """Keep a scale event the control plane reported (the last RECENT_EVENTS of each declared pool);
        False for a pool not declared here (nothing kept)."""
        if event.pool not in self.pools:
            return False
        self._recent.setdefault(event.pool, deque(maxlen=RECENT_EVENTS)).append(event)
        return True

    async def restore(self) -> None:
        """The pools last applied, as the store kept them."""
        store = self._store
        if isinstance(store, PoolDefinitions) and (saved := await store.load_pools()) is not None:
            source, text = saved
            self.pools = parse_pools(text, source=source)

    async def apply(self, source: str, text: str) -> None:
        """Replace the pools with those of a pools file's text: refused whole (PoolFileError: file, line,
        field) with nothing changed, or kept by the store first, then used."""
        specs = await asyncio.to_thread(parse_pools, text, source=source)  # up to 1 MiB: not on the loop
        if isinstance(self._store, PoolDefinitions):
            await self._store.save_pools(source, text)
        self.pools = specs
        for gone in set(self._recent) - set(specs):
            del self._recent[gone]
        log.info("pools.applied", extra={"source": quote_short(source), "pools": len(specs)})

    def fitting(self, requirements: Requirements) -> Iterable[str]:
        """The pools whose template fits, by name."""
        for name in sorted(self.pools):
            spec = self.pools[name]
            if requirements.admits(spec.worker_config.capabilities, spec.template.labels, spec.name):
                yield name

    def statuses(
        self, counts: Mapping[str, Mapping[WorkerStatus, int]], demand: Sequence[WaitingDemand]
    ) -> list[PoolStatus]:
        """Every pool with its workers by status (``counts``: the registry's, counted by its store now) and the
        acquires waiting for it (a shape several pools fit counts for the first by name)."""
        waiting = waiting_by_pool(demand, self.pools)
        return [
            PoolStatus(
                self.pools[name],
                dict(counts.get(name, {})),
                waiting.get(name, 0),
                tuple(self._recent.get(name, ())),
            )
            for name in sorted(self.pools)
        ]

    def gauge(self, statuses: Sequence[PoolStatus]) -> None:
        """Set the pool gauges (a pool no longer declared loses its series)."""
        metrics = self._metrics
        for status in statuses:
            name = status.spec.name
            for worker_status in WorkerStatus:
                metrics.pool_workers.labels(name, worker_status.value).set(
                    status.workers.get(worker_status, 0)
                )
            metrics.pool_max.labels(name).set(status.spec.max)
            metrics.pool_waiting.labels(name).set(status.waiting)
        names = {status.spec.name for status in statuses}
        for gone in self._gauged - names:
            for worker_status in WorkerStatus:
                metrics.pool_workers.remove(gone, worker_status.value)
            metrics.pool_max.remove(gone)
            metrics.pool_waiting.remove(gone)
        self._gauged = names
