"""What a pool looks like now, as the scheduler derives it from its registry and its queue of acquires.

Both are read-only views, recomputed on every ask: the waiting demand from the acquires waiting at that
instant, a pool's workers by status from the registry's records of that pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hodei.domain import WorkerStatus
from hodei.pools._requirements import Requirements
from hodei.pools._spec import PoolSpec

__all__ = ["PoolStatus", "WaitingDemand"]


@dataclass(frozen=True, slots=True)
class WaitingDemand:
    """The acquires of one requirement shape waiting now: how many, how long the oldest has waited (seconds),
    and the pools whose template fits them."""

    requirements: Requirements
    waiting: int
    oldest_wait: float = 0.0
    pools: tuple[str, ...] = ()

    @property
    def shape(self) -> str:
        return self.requirements.shape


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A pool's definition, its workers by status, and the acquires waiting that its template fits."""

    spec: PoolSpec
    workers: Mapping[WorkerStatus, int] = field(default_factory=dict)
    waiting: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", MappingProxyType(dict(self.workers)))

    def count(self, *statuses: WorkerStatus) -> int:
        return sum(self.workers.get(status, 0) for status in statuses)

    @property
    def size(self) -> int:
        return sum(self.workers.values())
