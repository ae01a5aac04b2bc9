"""``hodei demo``: the main job on the embedded default, end to end, in one process.

A scheduler starts on a free loopback port; the management service provisions workers (through the in-memory
provider until the process provider lands), registers them over real gRPC, shows them AVAILABLE in the
scheduler, decommissions them, and prints what happened and how long it took.
"""

from __future__ import annotations

import time

from rich.console import Console

from hodei.bootstrap import build_control_plane, build_scheduler
from hodei.domain import DynamicWorkerConfig, WorkerStatus, WorkerType
from hodei.ports import WorkerFilter
from hodei.testing import MockWorkerProvider
from hodei.views import workers_table

__all__ = ["run_demo"]


async def run_demo(console: Console, count: int) -> None:
    server = build_scheduler(listen="127.0.0.1:0")
    address = await server.start()
    console.print(f"[bold]1.[/bold] scheduler listening on [cyan]{address}[/cyan] (in-process, memory store)")
    provider = MockWorkerProvider()
    service = build_control_plane(provider, scheduler=address)
    assert service.registration is not None
    client = service.registration.port
    try:
        config = DynamicWorkerConfig(
            worker_type=WorkerType.DOCKER, cpu_cores=4, memory_mb=8192, labels={"demo": "true"}
        )
        started = time.perf_counter()
        results = await service.provision_workers(count, config)
        provisioned = time.perf_counter() - started
        ok = [r.worker for r in results if r.worker is not None]
        console.print(
            f"[bold]2.[/bold] provisioned and registered {len(ok)}/{count} workers in {provisioned * 1000:.1f} ms"
        )
        for failure in (r for r in results if r.error is not None):
            console.print(f"   [red]{failure.worker_id}[/red]: {failure.error}")

        page = await client.list_workers(WorkerFilter(labels={"demo": "true"}), page_size=1000)
        console.print(workers_table(list(page.workers), "[bold]3.[/bold] the scheduler's view"))
        available = sum(r.status is WorkerStatus.AVAILABLE for r in page.workers)

        started = time.perf_counter()
        for worker in ok:
            await service.decommission_worker(worker.worker_id)
        decommissioned = time.perf_counter() - started
        left = await client.list_workers(page_size=1000)
        console.print(
            f"[bold]4.[/bold] decommissioned {len(ok)} workers in {decommissioned * 1000:.1f} ms; "
            f"{len(left.workers)} left registered, {len(provider.orphans)} left running"
        )
        verdict = (
            "[green]OK[/green]"
            if available == count and not left.workers and not provider.orphans
            else ("[red]FAILED[/red]")
        )
        console.print(
            f"[bold]summary[/bold] {verdict}: {count} provisioned, {available} AVAILABLE, "
            f"{len(ok)} decommissioned, 0 orphans expected / {len(provider.orphans)} found"
        )
    finally:
        await client.close()
        await server.stop()
