"""The live part of the domain: what agents report, what the scheduler tells them, and what it announces.

- :class:`WorkerCommand` — pushed down a worker's stream (drain, shut down, re-register);
- :class:`WorkerEvent` — a lifecycle event, published in order to every watcher;
- :class:`LivenessConfig` — the lease rules: heartbeat interval, TTL, grace, recovery window, mass-expiry guard.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from hodei._settings import check_settings
from hodei.domain import Assignment, WorkerRecord
from hodei.pools import WaitingDemand

__all__ = [
    "CommandKind",
    "LivenessConfig",
    "WorkerCommand",
    "WorkerEvent",
    "WorkerEventKind",
]


class CommandKind(enum.StrEnum):
    DRAIN = "drain"
    SHUTDOWN = "shutdown"
    REREGISTER = "reregister"
    RUN_JOB = "run_job"  # run the assignment's job, report how it ended
    CANCEL_JOB = "cancel_job"  # stop the job of assignment_id


@dataclass(frozen=True, slots=True)
class WorkerCommand:
    kind: CommandKind
    reason: str = ""
    deadline: float = 0.0  # seconds, for DRAIN; 0 means the scheduler's default
    assignment: Assignment | None = None  # for RUN_JOB
    assignment_id: str = ""  # for CANCEL_JOB


class WorkerEventKind(enum.StrEnum):
    SNAPSHOT = "snapshot"
    REGISTERED = "registered"
    UPDATED = "updated"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    AVAILABLE = "available"
    BUSY = "busy"
    DRAINING = "draining"
    DRAINED = "drained"
    LOST = "lost"
    UNREGISTERED = "unregistered"
    EXPIRED = "expired"
    EXPIRY_SLOWED = "expiry_slowed"
    EXPIRY_RESUMED = "expiry_resumed"
    ORPHAN_REMOVED = "orphan_removed"  # a machine with no registration was destroyed (not in the registry)
    DEMAND = "demand"  # what waits for a worker changed (no worker_id; ``demand`` says what waits now)
    ASSIGNED = "assigned"  # bound to a job (reason: the job id)
    RELEASED = "released"  # released from its job (reason: how the job ended)
    POOL_SCALED = "pool_scaled"  # the control plane scaled a pool (reason: what it did and why; no worker_id)


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """``record`` is the worker after the change (None once removed); pool-wide events have no worker_id."""

    sequence: int
    kind: WorkerEventKind
    worker_id: str
    record: WorkerRecord | None
    reason: str
    time: datetime
    demand: tuple[WaitingDemand, ...] = ()  # for DEMAND


@dataclass(frozen=True, slots=True, kw_only=True)
class LivenessConfig:
    """How the scheduler decides that a worker went quiet. Durations are seconds.

    An agent heartbeats every ``heartbeat_interval``; each heartbeat renews its lease for ``lease_ttl``. A worker
    whose lease ran out and that stays silent one heartbeat interval more becomes ``LOST`` (so within
    ``lease_ttl + heartbeat_interval + sweep_interval`` of its last heartbeat), and is removed once it has been
    lost for ``lost_grace``; an agent that
    reconnects before then finds its worker ``AVAILABLE`` again. For ``recovery_window`` after the scheduler
    starts, nobody expires: agents need time to find a restarted scheduler. The window stays open longer while
    agents are still on their way back — told by the scheduler's hello bound to come back later (a fleet larger
    than the scheduler admits in one window), or saying hello — until none has been for ``lease_ttl``, and at most
    ``RECOVERY_GROWTH`` times ``recovery_window`` in all. However many go silent together,
    each is ``LOST`` on time. While more than ``mass_expiry_threshold`` of the leased workers (and at least
    ``mass_expiry_min_workers``) are unreachable, the scheduler suspects itself or the network rather than the
    workers: it removes at most ``slowed_expiry_per_sweep`` LOST workers per sweep and says so in an
    ``EXPIRY_SLOWED`` event. If the sweeper itself ran
    late (the scheduler stalled), every lease is extended by the delay: a scheduler that was not listening
    cannot blame workers for not being heard.

    ``heartbeat_budget`` (heartbeats per second; 0, the default: off) keeps the heartbeats a scheduler receives
    under a budget as its fleet grows, as Nomad does: each agent is handed, when it connects, the interval
    ``max(heartbeat_interval, agents / heartbeat_budget)`` for the agents then connected, and a lease that
    grows with it (``lease_ttl`` scaled by the same factor). See :meth:`pace`.
    """

    heartbeat_interval: float = 5.0
    lease_ttl: float = 15.0
    lost_grace: float = 60.0
    recovery_window: float = 30.0
    sweep_interval: float = 1.0
    mass_expiry_threshold: float = 0.5
    mass_expiry_min_workers: int = 10
    slowed_expiry_per_sweep: int = 1
    heartbeat_budget: float = 0.0

    def pace(self, agents: int) -> tuple[float, float]:
        """The heartbeat interval and lease TTL to hand an agent when ``agents`` agents (itself included) are
        connected: the configured ones, or, with a ``heartbeat_budget``, both stretched by the same factor so
        that ``agents`` agents send at most ``heartbeat_budget`` heartbeats a second."""
        if self.heartbeat_budget <= 0:
            return self.heartbeat_interval, self.lease_ttl
        stretch = max(1.0, agents / self.heartbeat_budget / self.heartbeat_interval)
        return self.heartbeat_interval * stretch, self.lease_ttl * stretch

    def __post_init__(self) -> None:
        check_settings(
            self,
            {
                "heartbeat_interval": ("> 0", self.heartbeat_interval > 0),
                "lease_ttl": ("> heartbeat_interval", self.lease_ttl > self.heartbeat_interval),
                "lost_grace": (">= 0", self.lost_grace >= 0),
                "recovery_window": (">= 0", self.recovery_window >= 0),
                "sweep_interval": ("> 0", self.sweep_interval > 0),
                "mass_expiry_threshold": ("in (0, 1]", 0 < self.mass_expiry_threshold <= 1),
                "mass_expiry_min_workers": (">= 1", self.mass_expiry_min_workers >= 1),
                "slowed_expiry_per_sweep": (">= 1", self.slowed_expiry_per_sweep >= 1),
                "heartbeat_budget": (">= 0", self.heartbeat_budget >= 0),
            },
        )
