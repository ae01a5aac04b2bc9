"""A heartbeat budget (Nomad-style): the interval and lease each agent is handed grow with the fleet connected
when it says hello, so that the scheduler receives about ``heartbeat_budget`` heartbeats a second whatever the
fleet's size; off by default."""

from __future__ import annotations

import asyncio

import pytest

from hodei.agent import WorkerAgent
from hodei.agent._config import AgentConfig
from hodei.domain import ResourceUsage
from hodei.lifecycle import LivenessConfig
from hodei.scheduler._core import Scheduler
from hodei.stores._memory import MemoryRegistryStore
from hodei.testing import EmbeddedScheduler, FakeClock
from tests.helpers import make_worker, wait_until


@pytest.mark.parametrize(
    ("budget", "agents", "paced"),
    [
        (0.0, 10_000, (5.0, 15.0)),  # off: the configured pace, whatever the fleet
        (100.0, 400, (5.0, 15.0)),  # 400 agents at 5 s make 80/s: under the budget
        (100.0, 1_000, (10.0, 30.0)),  # 1,000 at 10 s make 100/s
        (50.0, 10_000, (200.0, 600.0)),  # Nomad's default budget for 10,000 nodes
    ],
)
def test_the_pace_stretches_interval_and_lease_together_to_keep_under_the_budget(
    budget: float, agents: int, paced: tuple[float, float]
) -> None:
    assert LivenessConfig(heartbeat_budget=budget).pace(agents) == pytest.approx(paced)


def test_a_negative_budget_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="heartbeat_budget"):
        LivenessConfig(heartbeat_budget=-1.0)


async def test_each_hello_is_handed_the_pace_of_the_fleet_connected_then_and_renewals_keep_its_lease() -> (
    None
):
    clock = FakeClock(100.0)
    liveness = LivenessConfig(
        heartbeat_interval=1.0, lease_ttl=3.0, heartbeat_budget=2.0, recovery_window=0.0
    )
    scheduler = Scheduler(MemoryRegistryStore(), liveness=liveness, monotonic=clock)
    await scheduler.start(sweep=False)
    try:
        sessions = [(await scheduler.hello(make_worker(f"w-{n}")))[1] for n in range(1, 6)]
        assert [(s.heartbeat_interval, s.lease_ttl) for s in sessions] == [
            (1.0, 3.0),
            (1.0, 3.0),
            (1.5, 4.5),
            (2.0, 6.0),
            (2.5, 7.5),
        ]
        # The stored lease follows (a restarted scheduler restores it), and a renewal renews that lease.
        assert [(await scheduler.get(f"w-{n}")).lease_ttl for n in (1, 5)] == [3.0, 7.5]  # type: ignore[union-attr]
        clock.advance(4.0)
        await scheduler.heartbeat(sessions[4], ResourceUsage())
        assert scheduler.monitor.leases.expires_at("w-5") == 104.0 + 7.5
        assert scheduler.monitor.leases.expires_at("w-1") == 100.0 + 3.0
        # A reconnect of a connected worker does not count it twice.
        _, again = await scheduler.hello(make_worker("w-5"))
        assert (again.heartbeat_interval, again.lease_ttl) == (2.5, 7.5)
    finally:
        await scheduler.stop()


async def test_agents_heartbeat_at_the_interval_the_budget_gave_them() -> None:
    liveness = LivenessConfig(
        heartbeat_interval=0.2, lease_ttl=1.0, heartbeat_budget=10.0, recovery_window=0.0
    )
    async with EmbeddedScheduler(liveness=liveness) as scheduler:
        agents = [
            WorkerAgent(AgentConfig(schedulers=(scheduler.target,), worker_id=f"paced-{n}", cpu_cores=1))
            for n in range(4)
        ]
        tasks = []
        try:
            for agent in agents:  # one after the other: each hello sees the fleet before it
                tasks.append(asyncio.create_task(agent.run()))
                await asyncio.wait_for(agent.connected.wait(), 10)
            # 1 and 2 agents: 0.2 s; 3 agents at 10/s: 0.3 s; 4: 0.4 s.
            assert [agent.heartbeat_interval for agent in agents] == pytest.approx([0.2, 0.2, 0.3, 0.4])
            await wait_until(lambda: agents[3].heartbeats_sent >= 2, timeout=10)
            stored = await scheduler.client().get_worker("paced-3")
            assert stored is not None and stored.lease_ttl == pytest.approx(2.0)
        finally:
            for agent in agents:
                agent.request_shutdown("test over")
            await asyncio.gather(*tasks, return_exceptions=True)
