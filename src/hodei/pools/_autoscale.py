"""The autoscaler's decision for one pool at one tick, from what was observed at that tick — and nothing else.

Every count it acts on is derived afresh each tick (from the registry and the provider, by the control plane)
and handed in as a :class:`PoolObservation`; nothing is incremented here, so a failure can never leave a count
wrong. The decision is a pure function: :func:`plan_scale`.

- Desired size: a static pool's ``size``; a dynamic pool's ``clamp(min, max, busy + waiting + warm)``.
- Every worker that exists counts toward ``max``: busy, idle, still provisioning, and leaving (draining) — so a
  pool never exceeds ``max``, even while workers are on their way in or out.
- Scale up by what is missing, at most ``max_provisioning`` in flight. Demand from waiting jobs is served at
  once; only the ``warm`` and ``min`` top-ups wait out ``scale_up_cooldown``. Nothing is provisioned while the
  pool's provisioning failures are backing off.
- Scale down only with no job waiting, after ``scale_down_cooldown``: the idle workers longest idle, each idle
  for ``idle_timeout`` at least, down to the desired size (never below ``min``). Workers above ``max`` (a
  lowered limit) go at once, idle ones first.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from hodei.pools._spec import PoolKind, PoolSpec

__all__ = ["IdleWorker", "PoolObservation", "ScalePlan", "ScaleReason", "plan_scale"]


@dataclass(frozen=True, slots=True)
class IdleWorker:
    worker_id: str
    idle_since: float  # the control plane's monotonic clock


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolObservation:
    """One pool at one instant, derived from the registry and the provider."""

    now: float
    busy: int = 0
    idle: Sequence[IdleWorker] = ()
    provisioning: int = 0  # provisioned or being provisioned, not yet available
    leaving: int = 0  # draining, unregistering or being destroyed: still there, still counted toward max
    waiting: int = 0  # acquires waiting that this pool's template fits
    last_scale_up: float | None = None
    last_scale_down: float | None = None
    backoff_until: float | None = None  # provisioning failed: no new provision before this instant


class ScaleReason(enum.StrEnum):
    WAITING_JOBS = "waiting_jobs"
    WARM = "warm"
    MIN = "min"
    SIZE = "size"
    IDLE = "idle"
    ABOVE_MAX = "above_max"
    STEADY = "steady"
    AT_MAX = "at_max"
    PROVISIONING_LIMIT = "provisioning_limit"
    COOLDOWN = "cooldown"
    BACKOFF = "backoff"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalePlan:
    """What to do now: provision ``provision`` workers, retire the ``retire`` ones (drain, unregister,
    destroy); ``desired`` and ``reason`` say why (one line of the decision log)."""

    desired: int
    provision: int = 0
    retire: tuple[str, ...] = ()
    reason: ScaleReason = ScaleReason.STEADY

    @property
    def acts(self) -> bool:
        return bool(self.provision or self.retire)


def desired_size(spec: PoolSpec, observed: PoolObservation) -> int:
    if spec.kind is PoolKind.STATIC:
        return spec.max
    return max(spec.min, min(spec.max, observed.busy + observed.waiting + spec.warm))


def plan_scale(spec: PoolSpec, observed: PoolObservation) -> ScalePlan:
    desired = desired_size(spec, observed)
    idle = sorted(observed.idle, key=lambda w: (w.idle_since, w.worker_id))
    serving = observed.busy + len(idle) + observed.provisioning
    existing = serving + observed.leaving
    if existing > spec.max and idle:  # a lowered max: the idle surplus goes now
        surplus = min(existing - spec.max, len(idle))
        return ScalePlan(
            desired=desired, retire=tuple(w.worker_id for w in idle[:surplus]), reason=ScaleReason.ABOVE_MAX
        )
    if serving < desired:
        return _scale_up(spec, observed, desired, serving, existing)
    if serving > desired and observed.waiting == 0:
        return _scale_down(spec, observed, desired, serving, idle)
    return ScalePlan(desired=desired)


def _scale_up(
    spec: PoolSpec, observed: PoolObservation, desired: int, serving: int, existing: int
) -> ScalePlan:
    if observed.backoff_until is not None and observed.now < observed.backoff_until:
        return ScalePlan(desired=desired, reason=ScaleReason.BACKOFF)
    room = spec.max - existing
    if room <= 0:
        return ScalePlan(desired=desired, reason=ScaleReason.AT_MAX)
    slots = spec.max_provisioning - observed.provisioning
    if slots <= 0:
        return ScalePlan(desired=desired, reason=ScaleReason.PROVISIONING_LIMIT)
    missing = desired - serving
    # Jobs waiting beyond the workers already coming are served without waiting out the cooldown.
    for_jobs = max(0, observed.busy + observed.waiting - serving)
    if for_jobs:
        reason = ScaleReason.WAITING_JOBS
    else:
        cooling = (
            observed.last_scale_up is not None
            and observed.now - observed.last_scale_up < spec.scale_up_cooldown
        )
        if cooling:
            return ScalePlan(desired=desired, reason=ScaleReason.COOLDOWN)
        reason = _top_up_reason(spec, serving)
    return ScalePlan(desired=desired, provision=min(missing, room, slots), reason=reason)


def _top_up_reason(spec: PoolSpec, serving: int) -> ScaleReason:
    if spec.kind is PoolKind.STATIC:
        return ScaleReason.SIZE
    return ScaleReason.MIN if serving < spec.min else ScaleReason.WARM


def _scale_down(
    spec: PoolSpec, observed: PoolObservation, desired: int, serving: int, idle: list[IdleWorker]
) -> ScalePlan:
    if spec.kind is not PoolKind.STATIC:
        last = max(
            (t for t in (observed.last_scale_up, observed.last_scale_down) if t is not None), default=None
        )
        if last is not None and observed.now - last < spec.scale_down_cooldown:
            return ScalePlan(desired=desired, reason=ScaleReason.COOLDOWN)
        idle = [w for w in idle if observed.now - w.idle_since >= spec.idle_timeout]
    surplus = min(serving - desired, len(idle))
    if surplus <= 0:
        return ScalePlan(desired=desired)
    reason = ScaleReason.SIZE if spec.kind is PoolKind.STATIC else ScaleReason.IDLE
    return ScalePlan(desired=desired, retire=tuple(w.worker_id for w in idle[:surplus]), reason=reason)
