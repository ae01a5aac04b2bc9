"""LivenessMonitor: the one owner of what the scheduler knows of its workers' liveness — when each was last heard
(and its agent's last heartbeat), when its lease runs out (:class:`LeaseTable`), which are LOST and since when, and
what this replica heard that the replicas sharing its store have not been told yet. It turns silent workers LOST,
removes them after a grace, and distrusts mass silence.

Each sweep (every ``sweep_interval``):

1. if the sweep itself ran late, the scheduler stalled: every lease is extended by the delay;
2. during the recovery window after start, nothing expires; it stays open while agents are on their way back
   (``returning``: hellos the server refused, whose advised delay has not run out, and hellos it is working
   on), until none has been for ``lease_ttl`` — at most ``RECOVERY_GROWTH`` times its configured length;
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
from collections.abc import Awaitable, Callable, Container, Iterator

from hodei.domain import WorkerStatus
from hodei.lifecycle import LivenessConfig, WorkerEventKind
from hodei.observability._metrics import SchedulerMetrics
from hodei.ports import SharedLeases, TouchedLeases
from hodei.scheduler._registry import WorkerRegistry

__all__ = ["RECOVERY_GROWTH", "LeaseTable", "LivenessMonitor"]

log = logging.getLogger(__name__)

RECOVERY_GROWTH = 4
"""The recovery window grows to at most this many times its configured length while agents are still returning:
a refused fleet keeps it open, but never for ever (a storm that never ends must not keep the dead alive)."""


class LeaseTable:
    """When each agent-managed worker's lease runs out, on the scheduler's monotonic clock."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def renew(self, worker_id: str, ttl: float, now: float) -> None:
        self._expiry[worker_id] = now + ttl

    def drop(self, worker_id: str) -> None:
        self._expiry.pop(worker_id, None)

    def expires_at(self, worker_id: str) -> float | None:
        return self._expiry.get(worker_id)

    def expired(self, now: float) -> list[str]:
        """Workers whose lease ran out, the longest-expired first."""
        due = [(expiry, worker_id) for worker_id, expiry in self._expiry.items() if expiry <= now]
        return [worker_id for _, worker_id in sorted(due)]

    def extend_all(self, seconds: float) -> None:
        for worker_id in self._expiry:
            self._expiry[worker_id] += seconds

    def clear(self) -> None:
        self._expiry.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self._expiry)

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._expiry


class LivenessMonitor:
    def __init__(
        self,
        registry: WorkerRegistry,
        config: LivenessConfig,
        *,
        monotonic: Callable[[], float],
        on_removed: Callable[[str], Awaitable[None]] | None = None,
        metrics: SchedulerMetrics | None = None,
        shared: SharedLeases | None = None,
    ) -> None:
        """``shared``: the store through which replicas share their agents' leases (None: a scheduler alone)."""
        metrics = metrics or SchedulerMetrics()
        self._expired = metrics.lease_expiries.labels("lease_expired")
        self._removed_after_grace = metrics.lease_expiries.labels("lost_grace")
        self._registry = registry
        self.leases = LeaseTable()
        self._config = config
        self._monotonic = monotonic
        self._on_removed = on_removed
        self._lost_since: dict[str, float] = {}
        self._status_before_lost: dict[str, WorkerStatus] = {}
        self._last_beat: dict[str, float] = {}  # of the stream open here (heartbeat lag)
        self._shared = shared
        self._heard: set[str] = set()  # workers heard from since the last lease sync
        self._left: set[str] = set()  # workers whose stream closed here since the last lease sync
        self.address = ""  # where agents reach this replica (set by the server): recorded with their leases
        self._recovering_until = 0.0
        self._recovery_began = 0.0
        self._recovery_cap = 0.0  # the latest the recovery window may close
        self._recovery_closed = False
        self.returning: Callable[[], int] = lambda: 0
        """Agents on their way back (the server sets it: hellos refused whose advised delay has not run out, and
        hellos in progress)."""
        self._last_sweep: float | None = None
        self.slowed = False
        self.stall_compensations = 0

    def begin(self, now: float) -> None:
        """Start the recovery window."""
        self._recovery_began = now
        self._recovering_until = now + self._config.recovery_window
        self._recovery_cap = now + RECOVERY_GROWTH * self._config.recovery_window
        self._recovery_closed = False
        self._last_sweep = now

    @property
    def recovering(self) -> bool:
        return self._monotonic() < self._recovering_until

    def _still_recovering(self, now: float) -> bool:
        """Whether the recovery window is open at ``now``: while agents are returning it moves on to ``lease_ttl``
        after the last sweep that saw one, up to its cap."""
        if now < self._recovering_until:
            if self.returning():  # never past the cap: the window itself ends there at the latest
                self._recovering_until = min(
                    max(self._recovering_until, now + self._config.lease_ttl), self._recovery_cap
                )
            return True
        if not self._recovery_closed:
            self._recovery_closed = True
            open_for = self._recovering_until - self._recovery_began
            if open_for > self._config.recovery_window:  # it waited for agents coming back: say for how long
                log.info("liveness.recovery_closed", extra={"open_s": round(open_for, 3)})
        return False

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

    @property
    def shared(self) -> bool:
        """Whether replicas share the leases through the store (else this scheduler's table is the whole truth)."""
        return self._shared is not None

    def heard(self, worker_id: str, ttl: float, now: float) -> None:
        """A worker spoke (a hello, a heartbeat, a status report): its lease runs ``ttl`` from ``now``, and the
        other replicas hear of it at the next sync (a scheduler alone keeps no such list)."""
        if self._shared is not None:
            self._heard.add(worker_id)
        self.leases.renew(worker_id, ttl, now)

    def connected(self, worker_id: str, ttl: float, now: float) -> None:
        """A new stream of the worker's agent: heard, no longer LOST, and its first heartbeat has none before it."""
        self.heard(worker_id, ttl, now)
        self.forget(worker_id)
        self._last_beat.pop(worker_id, None)

    def beat(self, worker_id: str, ttl: float, now: float) -> float | None:
        """A heartbeat on the worker's stream: heard; the seconds since the stream's previous heartbeat (None for
        its first)."""
        self.heard(worker_id, ttl, now)
        previous = self._last_beat.get(worker_id)
        self._last_beat[worker_id] = now
        return None if previous is None else now - previous

    def disconnected(self, worker_id: str) -> None:
        """The worker's stream here closed; its lease runs on (replicas hear at the next sync that it closed here)."""
        self._last_beat.pop(worker_id, None)
        if self._shared is not None and self.address:
            self._left.add(worker_id)

    def unregistered(self, worker_id: str) -> None:
        """The worker is gone for good: nothing of it is kept."""
        self.leases.drop(worker_id)
        self.forget(worker_id)
        self._last_beat.pop(worker_id, None)

    async def restore(self, now: float, *, takeover: bool = False) -> None:
        """What the store says of leases: every leased worker's lease starts now, LOST workers are LOST.

        A replica taking over expiry cannot know since when a worker has been LOST: it counts the grace from
        the takeover, and forgets what it noted in an earlier spell (those workers may have come back since).
        It forgets the leases it renewed as a follower too (its agents may have gone elsewhere, or been
        removed, since): the store's lease ages, read next, are the truth it starts from.
        """
        if takeover:
            self.forget_lost()
            self.leases.clear()
        for worker_id, ttl, status in await self._registry.leases():
            if status is WorkerStatus.LOST:
                self.mark_lost_since(worker_id, now)
            elif self._shared is None:
                self.leases.renew(worker_id, ttl, now)

    async def share(self, here: Container[str]) -> TouchedLeases:
        """Tell the other replicas (through the store) whom this replica heard, and whose streams closed here
        (but for those in ``here``: they came back); what the store found of them. What could not be told (the
        store failed, or the call was cancelled) is told at the next sync."""
        assert self._shared is not None
        heard, self._heard = self._heard, set()
        left, self._left = {worker_id for worker_id in self._left if worker_id not in here}, set()
        if not heard and not left:
            return TouchedLeases()
        try:
            return await self._shared.touch(sorted(heard), stream_at=self.address, left=sorted(left))
        except BaseException:
            self._heard |= heard
            self._left |= left
            raise

    async def adopt_lease_ages(self, now: float) -> None:
        """The leader's view of every lease: a worker last heard by any replica keeps its lease from then (an
        older news never shortens a lease this replica extended)."""
        assert self._shared is not None
        for worker_id, ttl, age in await self._shared.lease_ages():
            heard = now - age
            expiry = self.leases.expires_at(worker_id)
            if expiry is None or expiry < heard + ttl:
                self.leases.renew(worker_id, ttl, heard)

    def resume(self, now: float) -> None:
        """Sweeps start again from ``now`` (a replica that just took the lead): no stall is blamed on the gap."""
        self._last_sweep = now

    async def sweep(self, now: float) -> None:
        config = self._config
        if self._last_sweep is not None:
            lateness = now - self._last_sweep - config.sweep_interval
            if lateness > config.sweep_interval:
                self.leases.extend_all(lateness)
                self.stall_compensations += 1
                log.warning(
                    "liveness.sweep_late",
                    extra={"late_s": round(lateness, 3), "leases_extended_s": round(lateness, 3)},
                )
        self._last_sweep = now
        if self._still_recovering(now):
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
        for worker_id in self.leases.expired(now - config.heartbeat_interval):
            record = await self._registry.mark_lost(
                worker_id, reason=f"no heartbeat for {config.lease_ttl:g} s"
            )
            # The store says LOST (or holds no lease for it: nothing to expire): memory follows. A write that
            # failed raised, and left the lease, to try again.
            self.leases.drop(worker_id)
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
        population = len(lost | set(self.leases))
        unreachable = len(lost | set(self.leases.expired(now)))
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
