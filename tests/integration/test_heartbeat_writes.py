"""Heartbeats and lease renewals never write per heartbeat, on any store: a fleet's steady state costs the
registry store nothing (SQLite, memory) or one lease sync per tick for every replica's news (PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from hodei.domain import ResourceUsage
from hodei.lifecycle import LivenessConfig
from hodei.ports import RegistryStore, TouchedLeases
from hodei.scheduler._core import Scheduler
from hodei.stores import PostgresRegistryStore
from hodei.stores._memory import MemoryRegistryStore
from hodei.stores._sqlite import SqliteRegistryStore
from hodei.testing import FakeClock, FaultyStore
from tests.helpers import make_worker

LIVENESS = LivenessConfig(heartbeat_interval=1.0, lease_ttl=3.0, recovery_window=0.0, sweep_interval=1.0)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_hundred_heartbeats_of_ten_agents_write_nothing_after_their_hellos(
    kind: str, tmp_path: Path
) -> None:
    inner: RegistryStore = (
        MemoryRegistryStore()
        if kind == "memory"
        else await SqliteRegistryStore.open(tmp_path / "registry.db")
    )
    store = FaultyStore(inner)
    clock = FakeClock(1000.0)
    scheduler = Scheduler(store, liveness=LIVENESS, monotonic=clock)
    await scheduler.start(sweep=False)
    try:
        sessions = [(await scheduler.hello(make_worker(f"w-{n}")))[1] for n in range(10)]
        assert store.writes == ["upsert"] * 10
        for _ in range(100):
            clock.advance(1.0)
            for session in sessions:
                await scheduler.heartbeat(session, ResourceUsage(cpu_percent=12.5, memory_used_mb=100))
            await scheduler.tick(clock.now)
        assert store.writes == ["upsert"] * 10  # no write per heartbeat, per renewal or per tick
    finally:
        await scheduler.stop()
        await inner.close()


class CountingPostgres(PostgresRegistryStore):
    """The real PostgreSQL store, counting the lease syncs it is asked for."""

    touches: list[int]

    async def touch(
        self, worker_ids: Sequence[str], *, stream_at: str = "", left: Sequence[str] = ()
    ) -> TouchedLeases:
        self.touches.append(len(worker_ids))
        return await super().touch(worker_ids, stream_at=stream_at, left=left)


async def test_on_postgresql_a_replica_shares_its_agents_heartbeats_once_per_tick_not_once_per_heartbeat(
    postgres_dsn: str,
) -> None:
    store = await CountingPostgres.open(postgres_dsn)
    store.touches = []
    clock = FakeClock(1000.0)
    scheduler = Scheduler(store, liveness=LIVENESS, monotonic=clock)
    await scheduler.start(sweep=False)
    try:
        sessions = [(await scheduler.hello(make_worker(f"w-{n}")))[1] for n in range(10)]
        await scheduler.tick(clock.now)
        store.touches.clear()
        for _ in range(20):
            clock.advance(1.0)
            for session in sessions:
                for _ in range(5):  # even five heartbeats each within one tick
                    await scheduler.heartbeat(session, ResourceUsage())
            await scheduler.tick(clock.now)
        assert store.touches == [10] * 20  # one sync per tick, for all ten agents
    finally:
        await scheduler.stop()
        await store.close()
