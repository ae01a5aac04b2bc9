"""What a pool looks like now, as the scheduler derives it from its registry and its queue of acquires.

Both are read-only views, recomputed on every ask: the waiting demand from the acquires waiting at that
instant, a pool's workers by status from the registry's records of that pool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from hodei._quoting import quote_short
from hodei.domain import FieldViolation, WorkerStatus
from hodei.pools._requirements import Requirements
from hodei.pools._spec import PoolSpec

__all__ = ["MAX_SCALE_COUNT", "SCALE_DIRECTIONS", "PoolStatus", "ScaleEvent", "WaitingDemand"]

SCALE_DIRECTIONS = ("up", "down")
MAX_SCALE_COUNT = 100_000
_REASON = re.compile(r"[a-z][a-z_]{0,31}")


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
class ScaleEvent:
    """One decision of the control plane's autoscaler for one pool: ``count`` workers provisioned (``up``) or
    retired (``down``), and why; ``desired`` the pool's size it aimed at."""

    pool: str
    direction: str
    reason: str
    desired: int = 0
    count: int = 0
    time: datetime | None = None

    def violations(self) -> list[FieldViolation]:
        found = []
        if self.direction not in SCALE_DIRECTIONS:
            found.append(
                FieldViolation("event.direction", f"must be up or down, got {quote_short(self.direction)}")
            )
        if not _REASON.fullmatch(self.reason):
            found.append(
                FieldViolation("event.reason", f"must be a word of a-z and _, got {quote_short(self.reason)}")
            )
        for name, value in (("desired", self.desired), ("count", self.count)):
            if not 0 <= value <= MAX_SCALE_COUNT:
                found.append(
                    FieldViolation(f"event.{name}", f"must be between 0 and {MAX_SCALE_COUNT}, got {value}")
                )
        return found

    def describe(self) -> str:
        return f"pool {self.pool} {self.direction} {self.count} ({self.reason}), desired {self.desired}"


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A pool's definition, its workers by status, and the acquires waiting that its template fits."""

    spec: PoolSpec
    workers: Mapping[WorkerStatus, int] = field(default_factory=dict)
    waiting: int = 0
    recent: tuple[ScaleEvent, ...] = ()  # the last scale events the control plane reported, oldest first

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", MappingProxyType(dict(self.workers)))

    def count(self, *statuses: WorkerStatus) -> int:
        return sum(self.workers.get(status, 0) for status in statuses)

    @property
    def size(self) -> int:
        return sum(self.workers.values())


def waiting_by_pool(demand: Iterable[WaitingDemand], pools: Iterable[str]) -> dict[str, int]:
    """How many acquires wait for each of ``pools``: a shape counts for the first of them (by name) that fits
    it, so that two pools never both grow for one job."""
    known = set(pools)
    waiting: dict[str, int] = {}
    for shape in demand:
        first = min((pool for pool in shape.pools if pool in known), default=None)
        if first is not None:
            waiting[first] = waiting.get(first, 0) + shape.waiting
    return waiting
