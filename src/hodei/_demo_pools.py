"""``hodei demo --pools``: a dynamic pool grows from zero on a burst of jobs, runs them, and shrinks back.

A scheduler starts in-process (its registry in a SQLite file, the embedded default) and is given one dynamic
pool (process provider, ``min = 0``); the control plane's pool autoscaler sizes it. A burst of jobs is acquired
at once: the pool grows to serve them, each job runs on its worker's real ``hodei agent`` process, and once the
workers have idled past the pool's ``idle_timeout`` the autoscaler drains, unregisters and stops them, back to
zero. The demo prints the timeline (first provision, all running, all done, back to zero) and checks that no
agent process is left.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console

from hodei._bootstrap import SchedulerHost, build_control_plane
from hodei._demo import agents_left
from hodei._views import plain
from hodei.domain import Job, JobOutcome, JobResult, WorkerStatus
from hodei.lifecycle import LivenessConfig
from hodei.management._config import WorkerManagementConfig
from hodei.management._pools import PoolAutoscaler, PoolAutoscalerConfig
from hodei.observability._metrics import ControlPlaneMetrics, SchedulerMetrics, process_registry
from hodei.pools import PoolStatus, Requirements
from hodei.providers._process import ProcessProvider
from hodei.transport._client import SchedulerPortClient

__all__ = ["run_pools_demo"]

DEMO_LIVENESS = LivenessConfig(heartbeat_interval=1.0, lease_ttl=3.0, lost_grace=30.0, recovery_window=0.0)
POOL = "demo"


def pools_file(max_workers: int, idle_timeout: float) -> str:
    return f"""\
[pools.{POOL}]
kind = "dynamic"
provider = "process"
min = 0
max = {max_workers}
idle_timeout = {idle_timeout}
max_provisioning = {max_workers}
scale_down_cooldown = 0
provision_timeout = 60

[pools.{POOL}.template]
cpu_cores = 1
memory_mb = 256
"""


async def run_pools_demo(console: Console, jobs: int = 8, *, idle_timeout: float = 5.0) -> bool:
    registry = process_registry()
    with tempfile.TemporaryDirectory(prefix="hodei-demo-pools-") as state:
        host = await SchedulerHost.open(
            f"sqlite:///{Path(state) / 'registry.db'}",
            metrics=SchedulerMetrics(registry),
            listen="127.0.0.1:0",
            liveness=DEMO_LIVENESS,
        )
        async with host:
            console.print(f"[bold]1.[/bold] scheduler on [cyan]{host.address}[/cyan] (store: {host.shown})")
            provider = ProcessProvider(
                host.address, stop_grace=5.0, environment={"HODEI_WORK_DIR": str(Path(state) / "work")}
            )
            try:
                async with (
                    SchedulerPortClient(host.address) as client,
                    build_control_plane(
                        provider,
                        scheduler=client,
                        management=WorkerManagementConfig(drain_timeout=5.0, stop_grace=5.0),
                        metrics=ControlPlaneMetrics(registry),
                    ) as service,
                ):
                    await client.apply_pools("demo-pools.toml", pools_file(jobs, idle_timeout))
                    console.print(
                        f"[bold]2.[/bold] pool [cyan]{POOL}[/cyan]: dynamic, process agents, 0 to {jobs} "
                        f"workers, idle timeout {idle_timeout:g} s"
                    )
                    async with PoolAutoscaler(service, client, config=PoolAutoscalerConfig(interval=0.25)):
                        return await _burst(console, client, jobs, idle_timeout, host)
            finally:
                await provider.aclose()


async def _burst(
    console: Console, client: SchedulerPortClient, jobs: int, idle_timeout: float, host: SchedulerHost
) -> bool:
    started = time.perf_counter()

    def at() -> str:
        return f"{time.perf_counter() - started:5.1f} s"

    async def size() -> PoolStatus:
        [pool] = [p for p in await client.list_pools() if p.spec.name == POOL]
        return pool

    console.print(
        f"[bold]3.[/bold] {at()}  {jobs} jobs submitted at once; the pool has {(await size()).size}"
    )
    job = Job(("sh", "-c", 'echo "job $HODEI_JOB_ID ran in $PWD"; sleep 2'), timeout=60.0)
    runs = [asyncio.create_task(_run_one(client, f"demo-job-{i}", job)) for i in range(jobs)]
    grown = await _until(lambda: _has(size, lambda p: p.size > 0), 60)
    console.print(f"   {at()}  first worker provisioned" if grown else "   [red]no worker provisioned[/red]")
    busy = await _until(lambda: _has(size, lambda p: p.count(WorkerStatus.BUSY) == jobs), 60)
    console.print(f"   {at()}  {jobs} jobs running on {jobs} workers" if busy else "   not all ran at once")
    results = await asyncio.gather(*runs)
    succeeded = sum(r.outcome is JobOutcome.SUCCEEDED for r in results)
    console.print(
        f"   {at()}  {succeeded}/{jobs} jobs succeeded; e.g. {plain(results[0].output_tail.strip())}"
    )
    console.print(f"[bold]4.[/bold] {at()}  the workers idle; after {idle_timeout:g} s the pool shrinks")
    shrunk = await _until(lambda: _has(size, lambda p: p.size == 0), idle_timeout + 60)
    children = await _until(lambda: _no_agents(host), 15)
    console.print(
        f"   {at()}  the pool has {(await size()).size} workers; {len(agents_left(host))} agent processes left"
    )
    success = grown and succeeded == jobs and shrunk and children
    verdict = "[green]OK[/green]" if success else "[red]FAILED[/red]"
    console.print(
        f"[bold]summary[/bold] {verdict}: grew from 0 on {jobs} waiting jobs, ran them "
        f"({succeeded} succeeded), shrank back to 0 in {time.perf_counter() - started:.1f} s"
    )
    return success


async def _run_one(client: SchedulerPortClient, job_id: str, job: Job) -> JobResult:
    acquired = await client.acquire_worker(job_id, Requirements(pool=POOL), job=job, wait=120)
    while True:
        view = await client.renew_assignment(acquired.assignment.assignment_id, wait=5)
        if view.result is not None:
            return view.result


async def _has(read: Callable[[], Awaitable[PoolStatus]], holds: Callable[[PoolStatus], bool]) -> bool:
    return holds(await read())


async def _no_agents(host: SchedulerHost) -> bool:
    return not agents_left(host)


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    give_up = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > give_up:
            return False
        await asyncio.sleep(0.1)
    return True
