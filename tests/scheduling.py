"""Helpers for the tests that drive a :class:`~hodei.scheduler._core.Scheduler` directly, on a
:class:`~hodei.testing.FakeClock`, with the liveness monitor swept explicitly (tests/unit, and the integration
tests that run the same scenarios on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from hodei.domain import DynamicWorker, ResourceUsage, WorkerStatus
from hodei.lifecycle import CommandKind, LivenessConfig, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.ports import RegistryStore, WorkerFilter
from hodei.scheduler._core import AgentSession, Scheduler
from hodei.scheduler._events import Watcher
from hodei.testing import FakeClock
from tests.helpers import make_worker

EPOCH = FakeClock().epoch  # the wall moment a FakeClock reads at 0 s

# A 3 s lease renewed every second: a silent worker is LOST 4 s after its last heartbeat (the lease, then one
# heartbeat interval of confirmation) and removed 5 s later.
LIVENESS = LivenessConfig(
    heartbeat_interval=1.0, lease_ttl=3.0, lost_grace=5.0, recovery_window=0.0, sweep_interval=1.0
)


class EventLog:
    """The scheduler's events, read in batches: :meth:`take` returns those published since the last call."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._watcher: Watcher = scheduler.events.watch()

    async def take(self) -> list[WorkerEvent]:
        watcher, self._watcher = self._watcher, self._scheduler.events.watch()
        watcher.close()

        async def read() -> list[WorkerEvent]:
            return [event async for event in watcher]

        return await asyncio.wait_for(read(), 1)

    async def kinds(self) -> list[tuple[WorkerEventKind, str]]:
        return [(event.kind, event.worker_id) for event in await self.take()]


def agent(worker_id: str = "agent-1", incarnation: int = 1) -> DynamicWorker:
    return replace(make_worker(worker_id), incarnation=incarnation)


def pending(session: AgentSession) -> list[WorkerCommand | None]:
    """The commands pushed to the session and not read yet (None: the stream was ended)."""
    found: list[WorkerCommand | None] = []
    while not session.commands.empty():
        found.append(session.commands.get_nowait())
    return found


async def sweep_through(scheduler: Scheduler, clock: FakeClock, until: float) -> None:
    """Sweep on time, every sweep_interval after the current moment, up to and including ``until``."""
    step = scheduler.liveness.sweep_interval
    moment = clock.now + step
    while moment <= until:
        clock.now = moment
        await scheduler.monitor.sweep(moment)
        moment += step


async def status(scheduler: Scheduler, worker_id: str) -> WorkerStatus | None:
    record = await scheduler.get(worker_id)
    return None if record is None else record.status


# --- a mass silence, the same on every store --------------------------------------------------------------------------

FLEET = 1000
MASS = LivenessConfig(
    heartbeat_interval=1.0,
    lease_ttl=3.0,
    lost_grace=5.0,
    recovery_window=0.0,
    sweep_interval=1.0,
    slowed_expiry_per_sweep=1,
)


async def available(scheduler: Scheduler) -> list[str]:
    page = await scheduler.list(WorkerFilter(statuses=frozenset({WorkerStatus.AVAILABLE})), page_size=1000)
    return [record.worker_id for record in page.workers]


async def silent_fleet(store: RegistryStore, clock: FakeClock) -> tuple[Scheduler, list[AgentSession]]:
    """1,000 agents that said hello at 0 and then went silent together (their streams stay open: a partition)."""
    scheduler = Scheduler(store, liveness=MASS, clock=clock.wall, monotonic=clock.monotonic)
    await scheduler.start(sweep=False)
    sessions = [(await scheduler.hello(agent(f"agent-{index:04d}")))[1] for index in range(FLEET)]
    return scheduler, sessions


async def mass_silence_tells_the_truth_and_paces_removals(store: RegistryStore) -> None:
    """1,000 leased workers silent together: none AVAILABLE after the lease and two sweeps; removals one per
    sweep; when the partition heals, the rest are AVAILABLE again without registering anew."""
    clock = FakeClock()
    scheduler, sessions = await silent_fleet(store, clock)
    events = EventLog(scheduler)
    try:
        await sweep_through(scheduler, clock, 3.0)  # leases ran out at 3: suspect, still AVAILABLE
        assert len(await available(scheduler)) == FLEET

        await sweep_through(scheduler, clock, 5.0)  # the lease, then two sweeps

        assert await available(scheduler) == []
        assert await store.count_by_status() == {WorkerStatus.LOST: FLEET}
        assert scheduler.monitor.slowed
        silenced = await events.kinds()
        assert sorted(worker for kind, worker in silenced if kind is WorkerEventKind.LOST) == [
            f"agent-{index:04d}" for index in range(FLEET)
        ]
        assert [kind for kind, _ in silenced].count(WorkerEventKind.EXPIRY_SLOWED) == 1
        removed_per_sweep = []
        for moment in range(6, 13):  # due for removal from 9 (LOST at 4, a 5 s grace)
            await sweep_through(scheduler, clock, float(moment))
            removed_per_sweep.append(
                [worker for kind, worker in await events.kinds() if kind is WorkerEventKind.EXPIRED]
            )
        assert removed_per_sweep == [
            [],
            [],
            [],
            ["agent-0000"],
            ["agent-0001"],
            ["agent-0002"],
            ["agent-0003"],
        ]

        clock.now = 12.5
        for session in sessions:  # the partition heals: heartbeats resume on the same streams
            await scheduler.heartbeat(session, ResourceUsage())
        clock.now = 13.0
        await scheduler.monitor.sweep(13.0)

        back = await available(scheduler)
        assert back == [f"agent-{index:04d}" for index in range(4, FLEET)]
        assert await store.count_by_status() == {WorkerStatus.AVAILABLE: FLEET - 4}
        kinds = await events.kinds()
        assert [kind for kind, _ in kinds].count(WorkerEventKind.AVAILABLE) == FLEET - 4
        assert WorkerEventKind.REGISTERED not in [kind for kind, _ in kinds]
        assert kinds[-1] == (WorkerEventKind.EXPIRY_RESUMED, "")
        for session in sessions[:4]:  # removed meanwhile: told to register again
            assert pending(session) == [
                WorkerCommand(CommandKind.REREGISTER, "the scheduler forgot this worker")
            ]
    finally:
        await scheduler.stop()
