"""The pool autoscaler on a real scheduler, with real agent processes: a dynamic pool grows from zero on acquires
that wait and shrinks back once its workers idle; a static pool replaces an agent that was killed."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from hodei import SchedulerPortClient, WorkerStatus
from hodei._bootstrap import build_control_plane, build_pool_autoscaler
from hodei.lifecycle import LivenessConfig
from hodei.management import PoolAutoscaler, PoolAutoscalerConfig, WorkerManagementConfig
from hodei.observability._metrics import ControlPlaneMetrics
from hodei.pools import Requirements
from hodei.providers import ProcessProvider
from hodei.testing import EmbeddedScheduler
from tests.helpers import metric, wait_for

pytestmark = pytest.mark.timeout(120)

LIVENESS = LivenessConfig(
    heartbeat_interval=0.2, lease_ttl=1.0, lost_grace=30.0, recovery_window=0.0, sweep_interval=0.05
)

BURST = """\
[pools.burst]
kind = "dynamic"
provider = "process"
min = 0
max = 3
idle_timeout = "1s"
scale_down_cooldown = 0

[pools.burst.template]
cpu_cores = 1
memory_mb = 256
"""

FIXED = """\
[pools.fixed]
kind = "static"
provider = "process"
size = 2

[pools.fixed.template]
cpu_cores = 1
memory_mb = 256
"""


class ControlPlane:
    """A scheduler, its client, agent processes and the autoscaler, as ``hodei control-plane run`` wires them."""

    def __init__(
        self,
        scheduler: EmbeddedScheduler,
        client: SchedulerPortClient,
        provider: ProcessProvider,
        autoscaler: PoolAutoscaler,
        metrics: ControlPlaneMetrics,
    ) -> None:
        self.scheduler, self.client, self.provider = scheduler, client, provider
        self.autoscaler, self.metrics = autoscaler, metrics

    async def pool(self, name: str, *statuses: WorkerStatus) -> list[str]:
        return sorted(
            r.worker_id
            for r in await self.scheduler.workers()
            if r.pool == name and (not statuses or r.status in statuses)
        )

    async def machines(self) -> list[str]:
        return sorted(w.worker_id for w in await self.provider.list_workers())


@pytest_asyncio.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with (
        EmbeddedScheduler(liveness=LIVENESS) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
    ):
        provider = ProcessProvider(scheduler.target, log_dir=tmp_path / "agents", stop_grace=5.0)
        metrics = ControlPlaneMetrics()
        try:
            async with build_control_plane(
                provider,
                scheduler=client,
                management=WorkerManagementConfig(drain_timeout=5.0, stop_grace=5.0),
                metrics=metrics,
            ) as service:
                autoscaler = build_pool_autoscaler(service, config=PoolAutoscalerConfig(interval=0.1))
                async with autoscaler:
                    yield ControlPlane(scheduler, client, provider, autoscaler, metrics)
        finally:
            await provider.aclose()
    assert not [p for p in psutil.Process().children(recursive=True) if "agent" in " ".join(p.cmdline())]


async def test_a_dynamic_pool_grows_from_zero_on_waiting_acquires_and_shrinks_back_when_idle(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    await cp.client.apply_pools("pools.toml", BURST)
    assert await cp.pool("burst") == []

    acquired = await asyncio.gather(
        *(cp.client.acquire_worker(f"job-{i}", Requirements(pool="burst"), wait=60) for i in range(3))
    )

    bound = sorted(a.record.worker_id for a in acquired)
    assert len(set(bound)) == 3
    assert all(w.startswith("burst-") for w in bound)
    assert await cp.pool("burst", WorkerStatus.BUSY) == bound
    assert await cp.machines() == bound  # exactly as many as the jobs waiting: max is 3, and none more
    assert metric(cp.metrics.registry, "hodei_pool_scale_events_total", pool="burst", direction="up",
                  reason="waiting_jobs") == 3  # fmt: skip

    for a in acquired:
        await cp.client.release_worker(a.assignment.assignment_id)

    async def shrunk() -> bool:
        return await cp.pool("burst") == [] and await cp.machines() == []

    await wait_for(shrunk, timeout=30, interval=0.1)

    async def reported() -> bool:  # the decisions reach the scheduler in the background
        [pool] = await cp.client.list_pools()
        told: dict[tuple[str, str], int] = {}
        for e in pool.recent:  # one decision may come in several ticks (the idle timeouts of each worker)
            told[e.direction, e.reason] = told.get((e.direction, e.reason), 0) + e.count
        return told == {("up", "waiting_jobs"): 3, ("down", "idle"): 3}

    await wait_for(reported, timeout=10, interval=0.05)
    assert metric(cp.metrics.registry, "hodei_pool_scale_events_total", pool="burst", direction="down",
                  reason="idle") == 3  # fmt: skip
    assert metric(cp.metrics.registry, "hodei_pool_desired_workers", pool="burst") == 0


async def test_a_static_pool_is_started_whole_and_replaces_an_agent_that_was_killed(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    await cp.client.apply_pools("pools.toml", FIXED)

    async def two_connected() -> bool:
        records = [r for r in await cp.scheduler.workers() if r.pool == "fixed"]
        return len(records) == 2 and all(r.connected and r.status is WorkerStatus.AVAILABLE for r in records)

    await wait_for(two_connected, timeout=30, interval=0.1)
    first = await cp.pool("fixed")
    pid = cp.provider.pid(first[0])
    assert pid is not None

    os.kill(pid, signal.SIGKILL)

    async def replaced() -> bool:
        names = await cp.pool("fixed")
        return first[0] not in names and len(names) == 2 and await two_connected()

    await wait_for(replaced, timeout=30, interval=0.1)
    assert first[1] in await cp.pool("fixed")
    assert len(await cp.machines()) == 2


async def test_a_pool_never_exceeds_max_under_200_concurrent_acquires_and_a_provider_failing_every_third() -> (
    None
):
    import random

    from hodei import DynamicWorker, DynamicWorkerConfig, ProviderError
    from hodei.testing import MockWorkerProvider

    class Flaky(MockWorkerProvider):
        """Takes a random time; every third provision fails. Watches how many exist or are being made."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = self.making = self.peak = 0
            self.random = random.Random(7)

        async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
            self.calls += 1
            number = self.calls
            self.making += 1
            self.peak = max(self.peak, self.making + len(self.running))
            try:
                await asyncio.sleep(self.random.uniform(0.0, 0.05))
                if number % 3 == 0:
                    raise ProviderError("every third provision fails")
                return await super().provision(worker_id, config)
            finally:
                self.making -= 1

    pools = BURST.replace("max = 3", "max = 20\nmax_provisioning = 50").replace(
        'idle_timeout = "1s"', "idle_timeout = 600"
    )
    provider = Flaky()
    async with (
        EmbeddedScheduler(liveness=LIVENESS) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
        build_control_plane(provider, scheduler=client) as service,
    ):
        await client.apply_pools("pools.toml", pools)
        config = PoolAutoscalerConfig(interval=0.05, backoff_initial=0.01, backoff_max=0.05)
        async with build_pool_autoscaler(service, config=config) as autoscaler:
            bound: list[str] = []

            async def hold(
                index: int,
            ) -> None:  # a job-less holder: it uses its worker a moment, then lets go
                acquired = await client.acquire_worker(f"job-{index:03}", Requirements(pool="burst"), wait=90)
                bound.append(acquired.record.worker_id)
                await asyncio.sleep(0.01)
                await client.release_worker(acquired.assignment.assignment_id)

            await asyncio.wait_for(asyncio.gather(*(hold(i) for i in range(200))), 120)
            await autoscaler.settle()  # a provision asked for while jobs still waited may end after the last
            pool = [r for r in await scheduler.workers() if r.pool == "burst"]

    assert len(bound) == 200
    assert len(set(bound)) <= 20
    assert provider.peak <= 20  # never more machines existing or being made than max
    assert len(provider.running) == len(pool) == provider.calls - provider.calls // 3 <= 20  # all kept


async def test_a_job_that_starts_waiting_wakes_the_autoscaler_at_once_not_at_its_next_tick() -> None:
    from hodei.testing import MockWorkerProvider

    async with (
        EmbeddedScheduler(liveness=LIVENESS) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
        build_control_plane(MockWorkerProvider(), scheduler=client) as service,
    ):
        await client.apply_pools("pools.toml", BURST)
        lazy = PoolAutoscalerConfig(interval=60.0)  # its next tick would come a minute from now
        async with build_pool_autoscaler(service, config=lazy):

            async def first_tick_done() -> bool:  # it sized the pool once: desired 0, nothing waits
                sample = service.metrics.registry.get_sample_value(
                    "hodei_pool_desired_workers", {"pool": "burst"}
                )
                return sample == 0

            await wait_for(first_tick_done, timeout=10)
            acquired = await asyncio.wait_for(
                client.acquire_worker("woken", Requirements(pool="burst"), wait=30), 10
            )
    assert acquired.record.pool == "burst"
