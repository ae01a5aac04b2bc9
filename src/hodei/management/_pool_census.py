"""A pool's census at one tick: how its workers are counted (by worker id, so that nothing counts twice), and
the plan :func:`~hodei.pools.plan_scale` makes of them.

- a record ``BUSY`` is busy; ``AVAILABLE`` is idle — unless it ran ``max_use_count`` jobs (it is recycled:
  retired, and replaced through the plan) or is being retired;
- ``DRAINING``, or being retired by the autoscaler, is leaving (still counted toward ``max``);
- ``LOST``, ``FAILED``, or registered with no machine behind it (the registry is read before the provider, so
  a machine it does not list is gone) is written off — retired at once — and counted (as leaving) only while
  the provider still lists its machine;
- a provision in flight, or a machine the provider lists with no record yet, is provisioning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hodei.domain import WorkerRecord, WorkerStatus
from hodei.pools import IdleWorker, PoolObservation, PoolSpec, ScalePlan, plan_scale

__all__ = ["PoolHistory", "PoolTick", "census"]

_WRITTEN_OFF = frozenset(
    {WorkerStatus.LOST, WorkerStatus.FAILED, WorkerStatus.UNREGISTERED, WorkerStatus.TERMINATED}
)


@dataclass(frozen=True, slots=True)
class PoolTick:
    """One pool at one tick: what was observed, the plan, and the workers retired besides the plan's
    (``recycled``: they ran ``max_use_count`` jobs; ``written_off``: lost or failed)."""

    spec: PoolSpec
    observation: PoolObservation
    plan: ScalePlan
    recycled: tuple[str, ...] = ()
    written_off: tuple[str, ...] = ()


@dataclass(slots=True)
class PoolHistory:
    """What the autoscaler remembers of one pool: timestamps (its monotonic clock), never counts."""

    last_scale_up: float | None = None
    last_scale_down: float | None = None
    failures: list[float] = field(default_factory=list)  # the provisions failed in a row, when

    def backoff_until(self, initial: float, maximum: float) -> float | None:
        """Until when the pool waits before provisioning again: ``initial`` after the first failure in a row,
        doubling with each, at most ``maximum``; None after a success."""
        if not self.failures:
            return None
        return self.failures[-1] + min(initial * 2.0 ** (len(self.failures) - 1), maximum)


def census(
    spec: PoolSpec,
    now: float,
    records: Mapping[str, WorkerRecord],
    machines: set[str],
    in_flight: frozenset[str],
    retiring: frozenset[str],
    waiting: int,
    *,
    history: PoolHistory,
    idle_since: Callable[[WorkerRecord], float],
    backoff: tuple[float, float],
) -> PoolTick:
    """One pool's :class:`PoolTick`: its workers counted from ``records`` (the registry's, by id),
    ``machines`` (the provider's), the provisions ``in_flight`` and the workers ``retiring``, as the module
    says, and the plan for them (``backoff``: the first delay after a failed provision, and the longest)."""
    busy = provisioning = leaving = 0
    idle: list[IdleWorker] = []
    recycled: list[str] = []
    written_off: list[str] = []
    for worker_id in sorted(records.keys() | machines | in_flight):
        record = records.get(worker_id)
        status = record.status if record is not None else None
        # The registry was read before the provider: a registered worker whose machine the provider no longer
        # lists (and that is not being provisioned) has lost it.
        vanished = record is not None and worker_id not in machines and worker_id not in in_flight
        if status in _WRITTEN_OFF or vanished or (worker_id in retiring and status is None):
            # Lost or failed (or gone while being retired): it counts while its machine is still there.
            leaving += worker_id in machines
            if status is not None and worker_id not in retiring:
                written_off.append(worker_id)
        elif worker_id in retiring or status is WorkerStatus.DRAINING:
            leaving += 1
        elif status is WorkerStatus.BUSY:
            busy += 1
        elif status is WorkerStatus.AVAILABLE and record is not None:
            if spec.max_use_count is not None and record.use_count >= spec.max_use_count:
                recycled.append(worker_id)
                leaving += 1
            else:
                idle.append(IdleWorker(worker_id, idle_since(record)))
        else:  # provisioning in flight, or a machine (or a record) not yet available
            provisioning += 1
    observation = PoolObservation(
        now=now,
        busy=busy,
        idle=tuple(idle),
        provisioning=provisioning,
        leaving=leaving,
        waiting=waiting,
        last_scale_up=history.last_scale_up,
        last_scale_down=history.last_scale_down,
        backoff_until=history.backoff_until(*backoff),
    )
    return PoolTick(spec, observation, plan_scale(spec, observation), tuple(recycled), tuple(written_off))
