"""LivenessMonitor and its LeaseTable: silent workers become LOST, then are removed; mass silence is distrusted.

The monitor is driven by explicit sweeps at chosen moments of a fake monotonic clock; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

import pytest

from hodei.domain import WorkerStatus
from hodei.errors import SchedulerUnavailable
from hodei.lifecycle import LivenessConfig, WorkerEvent, WorkerEventKind
from hodei.scheduler._events import Watcher
from hodei.scheduler._liveness import RECOVERY_GROWTH, LeaseTable, LivenessMonitor
from hodei.scheduler._registry import WorkerRegistry
from hodei.stores._memory import MemoryRegistryStore
from hodei.testing import FakeClock, FaultyStore
from tests.helpers import make_worker

# A 3 s lease renewed every second, swept every second; lost workers are removed after 5 s.
CONFIG = LivenessConfig(
    heartbeat_interval=1.0,
    lease_ttl=3.0,
    lost_grace=5.0,
    recovery_window=0.0,
    sweep_interval=1.0,
)


class Fleet:
    """A registry over the memory store and a monitor (with its lease table), on a fake monotonic clock."""

    def __init__(self, config: LivenessConfig) -> None:
        self.config = config
        self.clock = FakeClock()
        self.registry = WorkerRegistry(MemoryRegistryStore())
        self.removed: list[str] = []
        self.monitor = LivenessMonitor(
            self.registry, config, monotonic=self.clock, on_removed=self._on_removed
        )
        self._watcher: Watcher = self.registry.events.watch()

    async def _on_removed(self, worker_id: str) -> None:
        self.removed.append(worker_id)

    async def register(self, *worker_ids: str, leased: bool = True, renewed_at: float = 0.0) -> None:
        """Register workers, with a lease renewed at ``renewed_at`` (or as push registrations, without)."""
        for worker_id in worker_ids:
            await self.registry.register(
                make_worker(worker_id), lease_ttl=self.config.lease_ttl if leased else None
            )
            if leased:
                self.monitor.leases.renew(worker_id, self.config.lease_ttl, renewed_at)

    def begin(self, now: float = 0.0) -> None:
        self.clock.now = now
        self.monitor.begin(now)

    async def sweep(self, now: float) -> None:
        self.clock.now = now
        await self.monitor.sweep(now)

    async def sweep_through(self, until: float) -> None:
        """Sweep on time, every sweep_interval after the current moment, up to and including ``until``."""
        step = self.config.sweep_interval
        moment = self.clock.now + step
        while moment <= until:
            await self.sweep(moment)
            moment += step

    async def status(self, worker_id: str) -> WorkerStatus | None:
        record = await self.registry.get(worker_id)
        return None if record is None else record.status

    async def events(self) -> list[WorkerEvent]:
        """The events published since the previous call."""
        watcher, self._watcher = self._watcher, self.registry.events.watch()
        watcher.close()

        async def read() -> list[WorkerEvent]:
            return [event async for event in watcher]

        return await asyncio.wait_for(read(), 1)


def kinds(events: Sequence[WorkerEvent]) -> list[tuple[WorkerEventKind, str]]:
    return [(event.kind, event.worker_id) for event in events]


# --- LeaseTable -----------------------------------------------------------------------------------------


def test_a_renewed_lease_expires_ttl_after_the_renewal() -> None:
    leases = LeaseTable()

    leases.renew("w", 3.0, 10.0)

    assert leases.expires_at("w") == 13.0


def test_renewing_a_lease_again_moves_its_expiry() -> None:
    leases = LeaseTable()
    leases.renew("w", 3.0, 10.0)

    leases.renew("w", 3.0, 12.5)

    assert leases.expires_at("w") == 15.5
    assert len(leases) == 1


def test_a_worker_without_a_lease_has_no_expiry() -> None:
    assert LeaseTable().expires_at("nobody") is None


def test_a_dropped_lease_is_gone() -> None:
    leases = LeaseTable()
    leases.renew("w", 3.0, 0.0)
    leases.renew("other", 3.0, 0.0)

    leases.drop("w")

    assert "w" not in leases
    assert leases.expires_at("w") is None
    assert len(leases) == 1
    assert leases.expired(100.0) == ["other"]


def test_dropping_an_unknown_lease_does_nothing() -> None:
    leases = LeaseTable()
    leases.renew("w", 3.0, 0.0)

    leases.drop("nobody")

    assert len(leases) == 1


def test_a_lease_expires_at_its_expiry_and_not_before() -> None:
    leases = LeaseTable()
    leases.renew("w", 3.0, 0.0)

    assert leases.expired(2.999) == []
    assert leases.expired(3.0) == ["w"]
    assert leases.expired(4.0) == ["w"]


def test_expired_leases_are_listed_longest_expired_first() -> None:
    leases = LeaseTable()
    leases.renew("a", 3.0, 5.0)  # expires at 8
    leases.renew("b", 3.0, 1.0)  # expires at 4
    leases.renew("c", 3.0, 3.0)  # expires at 6
    leases.renew("d", 3.0, 20.0)  # not yet

    assert leases.expired(10.0) == ["b", "c", "a"]


def test_extending_all_leases_moves_every_expiry_by_as_much() -> None:
    leases = LeaseTable()
    leases.renew("a", 3.0, 0.0)
    leases.renew("b", 10.0, 0.0)

    leases.extend_all(7.5)

    assert leases.expires_at("a") == 10.5
    assert leases.expires_at("b") == 17.5
    assert leases.expired(10.0) == []


def test_the_table_counts_and_contains_its_leases() -> None:
    leases = LeaseTable()
    assert len(leases) == 0
    assert "a" not in leases

    leases.renew("a", 3.0, 0.0)
    leases.renew("b", 3.0, 0.0)
    leases.renew("a", 3.0, 1.0)

    assert len(leases) == 2
    assert "a" in leases
    assert "b" in leases
    assert "c" not in leases


# --- what the monitor hears of a worker's stream ---------------------------------------------------------


def test_heartbeats_renew_the_lease_and_their_lag_is_measured_within_one_stream_only() -> None:
    monitor = Fleet(CONFIG).monitor

    monitor.connected("w1", 3.0, 0.0)
    first = monitor.beat("w1", 3.0, 1.0)  # nothing before it on this stream
    second = monitor.beat("w1", 3.0, 2.5)
    renewed = monitor.leases.expires_at("w1")
    monitor.connected("w1", 3.0, 4.0)  # a new stream: its first beat has nothing before it either
    after_reconnect = monitor.beat("w1", 3.0, 5.0)
    monitor.disconnected("w1")  # the lease runs on; a stream opened later starts over
    kept = monitor.leases.expires_at("w1")
    monitor.heard("w1", 3.0, 6.0)  # a status report: heard, not a heartbeat
    after_goodbye = monitor.beat("w1", 3.0, 7.0)

    assert (first, second, after_reconnect, after_goodbye) == (None, 1.5, None, None)
    assert (renewed, kept, monitor.leases.expires_at("w1")) == (5.5, 8.0, 10.0)


def test_an_unregistered_worker_leaves_nothing_behind_in_the_monitor() -> None:
    monitor = Fleet(CONFIG).monitor
    monitor.connected("w1", 3.0, 0.0)
    monitor.beat("w1", 3.0, 1.0)
    monitor.mark_lost_since("w1", 2.0)

    monitor.unregistered("w1")

    assert ("w1" in monitor.leases, monitor.is_lost("w1")) == (False, False)
    assert monitor.beat("w1", 3.0, 3.0) is None  # no beat of it was kept


# --- LivenessConfig -------------------------------------------------------------------------------------


def test_a_lease_ttl_not_longer_than_the_heartbeat_interval_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("lease_ttl must be > heartbeat_interval, got 5.0")):
        LivenessConfig(heartbeat_interval=5.0, lease_ttl=5.0)


# --- expiry ---------------------------------------------------------------------------------------------
# A lease renewed at 0 runs out at 3 (suspect); one heartbeat interval later, at 4, the worker is LOST.


async def test_a_worker_whose_lease_just_ran_out_is_suspect_but_still_available() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.events()

    await fleet.sweep_through(3.0)

    assert await fleet.status("w1") is WorkerStatus.AVAILABLE
    assert fleet.monitor.leases.expires_at("w1") == 3.0
    assert not fleet.monitor.is_lost("w1")
    assert await fleet.events() == []


async def test_a_worker_silent_one_heartbeat_past_its_lease_becomes_lost_with_an_event_naming_the_ttl() -> (
    None
):
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.sweep_through(3.0)
    await fleet.events()

    await fleet.sweep(4.0)

    assert await fleet.status("w1") is WorkerStatus.LOST
    [event] = await fleet.events()
    assert event.kind is WorkerEventKind.LOST
    assert event.worker_id == "w1"
    assert event.reason == "no heartbeat for 3 s"
    assert event.record is not None
    assert event.record.status is WorkerStatus.LOST
    assert "w1" not in fleet.monitor.leases
    assert fleet.monitor.is_lost("w1")


async def test_a_worker_whose_lease_is_renewed_in_time_never_becomes_lost() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.events()

    for second in range(1, 30):
        fleet.monitor.leases.renew("w1", CONFIG.lease_ttl, float(second))  # a heartbeat, then the sweep
        await fleet.sweep(float(second))

    assert await fleet.status("w1") is WorkerStatus.AVAILABLE
    assert await fleet.events() == []


async def test_only_the_silent_worker_becomes_lost() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("silent", "talking")
    fleet.begin(0.0)
    await fleet.events()

    for second in range(1, 6):
        fleet.monitor.leases.renew("talking", CONFIG.lease_ttl, float(second))
        await fleet.sweep(float(second))

    assert await fleet.status("silent") is WorkerStatus.LOST
    assert await fleet.status("talking") is WorkerStatus.AVAILABLE
    assert kinds(await fleet.events()) == [(WorkerEventKind.LOST, "silent")]


async def test_a_push_registered_worker_without_a_lease_is_never_made_lost() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("pushed", leased=False)
    fleet.begin(0.0)
    await fleet.events()

    await fleet.sweep_through(100.0)

    assert await fleet.status("pushed") is WorkerStatus.AVAILABLE
    assert await fleet.events() == []
    assert fleet.removed == []


async def test_a_lease_of_a_worker_no_longer_registered_expires_without_an_event() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    await fleet.registry.unregister("w1")
    fleet.begin(0.0)
    await fleet.events()

    await fleet.sweep_through(20.0)

    assert "w1" not in fleet.monitor.leases
    assert not fleet.monitor.is_lost("w1")
    assert await fleet.events() == []
    assert fleet.removed == []


# --- removal after the grace ----------------------------------------------------------------------------


async def test_a_lost_worker_is_not_removed_before_the_grace() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.sweep_through(4.0)  # LOST at 4
    await fleet.events()

    await fleet.sweep_through(8.0)  # lost for 4 s of a 5 s grace

    assert await fleet.status("w1") is WorkerStatus.LOST
    assert await fleet.events() == []
    assert fleet.removed == []


async def test_a_worker_lost_for_the_grace_is_removed_with_an_expired_event() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.sweep_through(8.0)  # LOST at 4
    await fleet.events()

    await fleet.sweep(9.0)  # lost for 5 s

    assert await fleet.registry.get("w1") is None
    [event] = await fleet.events()
    assert event.kind is WorkerEventKind.EXPIRED
    assert event.worker_id == "w1"
    assert event.record is None
    assert event.reason == "lost for more than 5 s"
    assert fleet.removed == ["w1"]
    assert not fleet.monitor.is_lost("w1")


async def test_a_removed_worker_is_removed_once() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.sweep_through(9.0)
    await fleet.events()

    await fleet.sweep_through(30.0)

    assert await fleet.events() == []
    assert fleet.removed == ["w1"]


async def test_a_worker_available_again_and_forgotten_is_not_removed_when_the_grace_ends() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.sweep_through(4.0)  # LOST at 4
    await fleet.registry.transition("w1", WorkerStatus.AVAILABLE, reason="heartbeats resumed")
    fleet.monitor.forget("w1")
    await fleet.events()

    await fleet.sweep_through(20.0)

    assert await fleet.status("w1") is WorkerStatus.AVAILABLE
    assert await fleet.events() == []
    assert fleet.removed == []


async def test_a_worker_no_longer_lost_when_the_grace_ends_is_not_removed_even_if_not_forgotten() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.sweep_through(4.0)  # LOST at 4
    await fleet.registry.transition("w1", WorkerStatus.BUSY, reason="it came back by another path")
    await fleet.events()

    await fleet.sweep_through(20.0)

    assert await fleet.status("w1") is WorkerStatus.BUSY
    assert await fleet.events() == []
    assert fleet.removed == []
    assert not fleet.monitor.is_lost("w1")


# --- the recovery window --------------------------------------------------------------------------------

RECOVERING = LivenessConfig(
    heartbeat_interval=1.0, lease_ttl=3.0, lost_grace=5.0, recovery_window=10.0, sweep_interval=1.0
)


async def test_nothing_expires_during_the_recovery_window_and_does_after_it() -> None:
    fleet = Fleet(RECOVERING)
    await fleet.register("w1", "w2")
    fleet.begin(0.0)
    await fleet.events()

    await fleet.sweep_through(9.0)  # every lease ran out at 3

    assert fleet.monitor.recovering
    assert await fleet.status("w1") is WorkerStatus.AVAILABLE
    assert await fleet.status("w2") is WorkerStatus.AVAILABLE
    assert await fleet.events() == []

    await fleet.sweep(10.0)

    assert not fleet.monitor.recovering
    assert await fleet.status("w1") is WorkerStatus.LOST
    assert await fleet.status("w2") is WorkerStatus.LOST
    assert kinds(await fleet.events()) == [(WorkerEventKind.LOST, "w1"), (WorkerEventKind.LOST, "w2")]


async def test_the_recovery_window_opens_at_the_moment_given_to_begin() -> None:
    fleet = Fleet(RECOVERING)
    await fleet.register("w1", renewed_at=100.0)
    fleet.begin(100.0)

    await fleet.sweep_through(109.0)
    assert await fleet.status("w1") is WorkerStatus.AVAILABLE

    await fleet.sweep(110.0)
    assert await fleet.status("w1") is WorkerStatus.LOST


async def test_no_lost_worker_is_removed_during_the_recovery_window() -> None:
    fleet = Fleet(RECOVERING)
    await fleet.register("w1")
    fleet.begin(0.0)
    fleet.monitor.mark_lost_since("w1", 0.0)
    await fleet.registry.transition("w1", WorkerStatus.LOST)
    fleet.monitor.leases.drop("w1")
    await fleet.events()

    await fleet.sweep_through(9.0)  # lost for 9 s of a 5 s grace, but recovering

    assert await fleet.status("w1") is WorkerStatus.LOST
    assert fleet.removed == []

    await fleet.sweep(10.0)

    assert await fleet.registry.get("w1") is None
    assert kinds(await fleet.events()) == [(WorkerEventKind.EXPIRED, "w1")]
    assert fleet.removed == ["w1"]


async def test_the_recovery_window_stays_open_while_agents_return_until_none_has_for_a_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.scheduler._liveness")
    fleet = Fleet(RECOVERING)  # a 10 s window, 3 s leases
    await fleet.register("w1", "w2")
    returning = {"agents": 0}
    fleet.monitor.returning = lambda: returning["agents"]
    fleet.begin(0.0)
    await fleet.events()

    returning["agents"] = 2  # refused hellos, told to come back later
    await fleet.sweep_through(14.0)  # past the configured window, each sweep saw agents returning
    returning["agents"] = 0
    await fleet.sweep_through(16.0)  # the last sweep that saw one was at 14: open until 17

    assert fleet.monitor.recovering
    assert await fleet.events() == []

    await fleet.sweep(17.0)
    await fleet.sweep(18.0)

    assert not fleet.monitor.recovering
    assert kinds(await fleet.events()) == [(WorkerEventKind.LOST, "w1"), (WorkerEventKind.LOST, "w2")]
    # Said once, when it closed: how long it stayed open.
    said = [
        (r.getMessage(), getattr(r, "open_s", None)) for r in caplog.records if "recovery" in r.getMessage()
    ]
    assert said == [("liveness.recovery_closed", 17.0)]


async def test_agents_returning_for_ever_keep_the_recovery_window_open_at_most_its_growth_times_its_length() -> (
    None
):
    fleet = Fleet(RECOVERING)
    await fleet.register("w1")
    fleet.monitor.returning = lambda: 1
    fleet.begin(0.0)
    await fleet.events()

    await fleet.sweep_through(RECOVERY_GROWTH * 10.0 - 1)

    assert await fleet.events() == []

    await fleet.sweep(RECOVERY_GROWTH * 10.0)

    assert kinds(await fleet.events()) == [(WorkerEventKind.LOST, "w1")]


async def test_agents_returning_after_the_window_closed_do_not_open_it_again() -> None:
    fleet = Fleet(RECOVERING)
    await fleet.register("w1", renewed_at=10.0)  # heard at the end of the window
    returning = {"agents": 0}
    fleet.monitor.returning = lambda: returning["agents"]
    fleet.begin(0.0)
    await fleet.sweep_through(10.0)
    returning["agents"] = 5

    await fleet.sweep_through(14.0)  # w1's lease ran out at 13, and one heartbeat interval more has passed

    assert not fleet.monitor.recovering
    assert await fleet.status("w1") is WorkerStatus.LOST


# --- the mass-expiry guard ------------------------------------------------------------------------------
# A mass silence never keeps a silent worker AVAILABLE: every one is LOST on time. What it slows is removal.

GUARDED = LivenessConfig(
    heartbeat_interval=1.0,
    lease_ttl=3.0,
    lost_grace=3.0,
    recovery_window=0.0,
    sweep_interval=1.0,
    mass_expiry_threshold=0.5,
    mass_expiry_min_workers=10,
    slowed_expiry_per_sweep=2,
)
SILENT = [f"silent-{index:02d}" for index in range(15)]
HEALTHY = [f"healthy-{index}" for index in range(5)]


async def mass_silence() -> Fleet:
    """20 leased workers, of which the 15 silent ones all went silent within one heartbeat.

    Their leases run out in the reverse of their ids' order, 1/8 s apart: silent-14 at 2.25 s, silent-13 at
    2.375 s, ..., silent-00 at 4.0 s. At the sweep at 4 s the 7 whose lease ran out by 3 s (silent-14 down to
    silent-08) are LOST, at 5 s the other 8; they are due for removal 3 s later (7 s and 8 s).
    """
    fleet = Fleet(GUARDED)
    await fleet.register(*HEALTHY, *SILENT)
    for worker_id in HEALTHY:
        fleet.monitor.leases.renew(worker_id, 1000.0, 0.0)
    for index, worker_id in enumerate(SILENT):
        fleet.monitor.leases.renew(worker_id, 2.25 + (14 - index) / 8, 0.0)
    fleet.begin(0.0)
    await fleet.events()
    return fleet


async def test_a_mass_silence_makes_every_silent_worker_lost_on_time_not_one_per_sweep() -> None:
    fleet = await mass_silence()
    lost_per_sweep: list[list[str]] = []

    for second in range(1, 6):
        await fleet.sweep(float(second))
        lost_per_sweep.append(
            [event.worker_id for event in await fleet.events() if event.kind is WorkerEventKind.LOST]
        )

    assert lost_per_sweep == [[], [], [], [f"silent-{i:02d}" for i in range(14, 7, -1)], SILENT[7::-1]]
    for worker_id in SILENT:
        assert await fleet.status(worker_id) is WorkerStatus.LOST
    for worker_id in HEALTHY:
        assert await fleet.status(worker_id) is WorkerStatus.AVAILABLE
    assert fleet.monitor.slowed


async def test_a_mass_silence_removes_lost_workers_only_the_slowed_number_per_sweep_longest_lost_first() -> (
    None
):
    fleet = await mass_silence()
    await fleet.sweep_through(6.0)
    await fleet.events()
    removed_per_sweep: list[list[str]] = []

    for second in range(7, 14):
        await fleet.sweep(float(second))
        removed_per_sweep.append(
            [event.worker_id for event in await fleet.events() if event.kind is WorkerEventKind.EXPIRED]
        )

    # LOST at 4 s: silent-08..14; at 5 s: silent-00..07; each group in id order. Two a sweep while more than
    # half of the leased workers are unreachable (15 of 20 at first; 7 of 12 before the sweep at 11 s); at
    # 12 s, 5 of 10 is not more than half: the rest go at once.
    assert removed_per_sweep == [
        ["silent-08", "silent-09"],
        ["silent-10", "silent-11"],
        ["silent-12", "silent-13"],
        ["silent-14", "silent-00"],
        ["silent-01", "silent-02"],
        ["silent-03", "silent-04", "silent-05", "silent-06", "silent-07"],
        [],
    ]
    assert fleet.removed == [worker for group in removed_per_sweep for worker in group]
    for worker_id in HEALTHY:
        assert await fleet.status(worker_id) is WorkerStatus.AVAILABLE


async def test_a_mass_silence_publishes_one_expiry_slowed_event_about_removals_and_one_resumed_after() -> (
    None
):
    fleet = await mass_silence()
    await fleet.sweep_through(3.0)
    assert await fleet.events() == []

    await fleet.sweep(4.0)

    first = await fleet.events()
    assert kinds(first) == [
        *[(WorkerEventKind.LOST, f"silent-{i:02d}") for i in range(14, 7, -1)],
        (WorkerEventKind.EXPIRY_SLOWED, ""),
    ]
    slowed = first[-1]
    assert slowed.record is None
    assert slowed.reason == (
        "15 of 20 leased workers unreachable at once; suspecting the network or the scheduler: they are LOST, "
        "and removed at most 2 per 1 s"
    )

    await fleet.sweep_through(11.0)
    assert WorkerEventKind.EXPIRY_SLOWED not in [event.kind for event in await fleet.events()]
    assert fleet.monitor.slowed

    await fleet.sweep(12.0)

    resumed = [event for event in await fleet.events() if event.kind is WorkerEventKind.EXPIRY_RESUMED]
    assert [(event.worker_id, event.reason) for event in resumed] == [
        ("", "5 of 10 leased workers unreachable; removals at normal pace")
    ]
    assert not fleet.monitor.slowed
    await fleet.sweep_through(20.0)
    assert await fleet.events() == []


async def test_workers_lost_in_a_mass_silence_whose_lease_is_renewed_are_no_longer_unreachable() -> None:
    fleet = await mass_silence()
    await fleet.sweep_through(5.0)  # all 15 LOST, removals slowed
    await fleet.events()

    for worker_id in SILENT:  # the partition heals: what Scheduler.heartbeat does for each
        fleet.monitor.leases.renew(worker_id, GUARDED.lease_ttl, 5.5)
        await fleet.registry.transition(worker_id, WorkerStatus.AVAILABLE, reason="heartbeats resumed")
        fleet.monitor.forget(worker_id)
    await fleet.events()
    await fleet.sweep(6.0)

    assert kinds(await fleet.events()) == [(WorkerEventKind.EXPIRY_RESUMED, "")]
    assert not fleet.monitor.slowed
    for worker_id in SILENT:
        assert await fleet.status(worker_id) is WorkerStatus.AVAILABLE
    assert fleet.removed == []


async def test_below_the_minimum_fleet_size_there_is_no_guard_and_all_are_removed_at_once() -> None:
    fleet = Fleet(GUARDED)
    await fleet.register("healthy", "silent-a", "silent-b", "silent-c")
    fleet.monitor.leases.renew("healthy", 1000.0, 0.0)
    fleet.begin(0.0)
    await fleet.events()

    await fleet.sweep_through(7.0)  # 3 of 4 silent: more than half, but fewer than 10 leased workers

    assert kinds(await fleet.events()) == [
        (WorkerEventKind.LOST, "silent-a"),
        (WorkerEventKind.LOST, "silent-b"),
        (WorkerEventKind.LOST, "silent-c"),
        (WorkerEventKind.EXPIRED, "silent-a"),
        (WorkerEventKind.EXPIRED, "silent-b"),
        (WorkerEventKind.EXPIRED, "silent-c"),
    ]
    assert not fleet.monitor.slowed
    assert await fleet.status("healthy") is WorkerStatus.AVAILABLE


async def test_half_of_a_large_fleet_going_silent_is_not_slowed() -> None:
    fleet = Fleet(GUARDED)
    workers = [f"w-{index:02d}" for index in range(20)]
    await fleet.register(*workers)
    for worker_id in workers[10:]:
        fleet.monitor.leases.renew(worker_id, 1000.0, 0.0)
    fleet.begin(0.0)
    await fleet.events()

    await fleet.sweep_through(7.0)  # 10 of 20: exactly half is not more than half

    assert kinds(await fleet.events()) == [
        *[(WorkerEventKind.LOST, worker_id) for worker_id in workers[:10]],
        *[(WorkerEventKind.EXPIRED, worker_id) for worker_id in workers[:10]],
    ]
    assert not fleet.monitor.slowed


# --- store faults: the store commits, then memory follows -----------------------------------------------


def faulty_fleet(config: LivenessConfig) -> tuple[Fleet, FaultyStore]:
    fleet = Fleet(config)
    store = FaultyStore(MemoryRegistryStore())
    fleet.registry = WorkerRegistry(store)
    fleet.monitor = LivenessMonitor(
        fleet.registry, config, monotonic=fleet.clock, on_removed=fleet._on_removed
    )
    fleet._watcher = fleet.registry.events.watch()
    return fleet, store


async def test_a_lost_transition_the_store_refused_keeps_the_lease_and_is_made_at_the_next_sweep() -> None:
    fleet, store = faulty_fleet(CONFIG)
    await fleet.register("w1")  # write 1
    fleet.begin(0.0)
    await fleet.sweep_through(3.0)
    store.fail_write(2)  # the sweep's transition to LOST

    with pytest.raises(SchedulerUnavailable):
        await fleet.sweep(4.0)

    assert await fleet.status("w1") is WorkerStatus.AVAILABLE
    assert fleet.monitor.leases.expires_at("w1") == 3.0
    assert not fleet.monitor.is_lost("w1")

    await fleet.sweep(5.0)

    assert await fleet.status("w1") is WorkerStatus.LOST
    assert "w1" not in fleet.monitor.leases
    assert fleet.monitor.is_lost("w1")


async def test_a_removal_the_store_refused_keeps_the_worker_noted_lost_and_is_made_at_the_next_sweep() -> (
    None
):
    fleet, store = faulty_fleet(CONFIG)
    await fleet.register("w1")  # write 1
    fleet.begin(0.0)
    await fleet.sweep_through(8.0)  # LOST at 4 (write 2)
    store.fail_write(3)  # the removal at 9

    with pytest.raises(SchedulerUnavailable):
        await fleet.sweep(9.0)

    assert await fleet.status("w1") is WorkerStatus.LOST
    assert fleet.monitor.is_lost("w1")
    assert fleet.removed == []

    await fleet.sweep(10.0)

    assert await fleet.registry.get("w1") is None
    assert not fleet.monitor.is_lost("w1")
    assert fleet.removed == ["w1"]


async def test_a_lease_the_store_does_not_hold_is_dropped_without_making_the_worker_lost() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("pushed", leased=False)
    fleet.monitor.leases.renew(
        "pushed", CONFIG.lease_ttl, 0.0
    )  # e.g. from a hello whose write never committed
    fleet.begin(0.0)
    await fleet.events()

    await fleet.sweep_through(10.0)

    assert await fleet.status("pushed") is WorkerStatus.AVAILABLE
    assert "pushed" not in fleet.monitor.leases
    assert await fleet.events() == []


# --- stall compensation ---------------------------------------------------------------------------------


async def test_a_sweep_that_runs_far_too_late_extends_every_lease_by_the_lateness_instead_of_expiring() -> (
    None
):
    fleet = Fleet(CONFIG)
    await fleet.register("w1", "w2")  # leases run out at 3
    fleet.monitor.leases.renew("w2", CONFIG.lease_ttl, 1.0)  # this one at 4
    fleet.begin(0.0)
    await fleet.sweep_through(2.0)
    await fleet.events()

    await fleet.sweep(12.0)  # due at 3: 9 s late

    assert fleet.monitor.stall_compensations == 1
    assert fleet.monitor.leases.expires_at("w1") == 12.0
    assert fleet.monitor.leases.expires_at("w2") == 13.0
    assert await fleet.status("w1") is WorkerStatus.AVAILABLE
    assert await fleet.status("w2") is WorkerStatus.AVAILABLE
    assert await fleet.events() == []


async def test_after_a_stall_an_extended_lease_still_expires_on_normally_timed_sweeps() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)
    await fleet.sweep_through(2.0)
    await fleet.sweep(12.0)  # extended to 12

    await fleet.sweep(13.0)

    assert fleet.monitor.stall_compensations == 1
    assert await fleet.status("w1") is WorkerStatus.LOST


async def test_normally_timed_sweeps_expire_the_lease_without_compensation() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")
    fleet.begin(0.0)

    await fleet.sweep_through(4.0)

    assert fleet.monitor.stall_compensations == 0
    assert await fleet.status("w1") is WorkerStatus.LOST


async def test_a_sweep_a_little_late_is_not_a_stall() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")  # lease runs out at 3
    fleet.begin(0.0)
    await fleet.sweep_through(2.0)

    await fleet.sweep(3.5)  # half a second late
    assert fleet.monitor.leases.expires_at("w1") == 3.0
    await fleet.sweep(4.5)

    assert fleet.monitor.stall_compensations == 0
    assert await fleet.status("w1") is WorkerStatus.LOST


async def test_every_stalled_sweep_is_counted_and_compensated() -> None:
    fleet = Fleet(CONFIG)
    await fleet.register("w1")  # lease runs out at 3
    fleet.begin(0.0)

    await fleet.sweep(10.0)  # 9 s late
    await fleet.sweep(20.0)  # 9 s late again

    assert fleet.monitor.stall_compensations == 2
    assert fleet.monitor.leases.expires_at("w1") == 21.0
    assert await fleet.status("w1") is WorkerStatus.AVAILABLE
