"""``hodei demo``: the main job on the embedded default, end to end.

A scheduler starts in-process on a free loopback port, its registry in a SQLite file (the embedded default,
here in a temporary directory); the management service provisions workers as real ``hodei agent`` child
processes, registers them over gRPC, and the agents connect their streams and heartbeat; the demo shows them
AVAILABLE, decommissions them (drain through the stream, unregister, stop), checks that no child process is
left, and prints what happened and how long it took. The scheduler's and the control plane's metrics are
served together on a free loopback port, printed at the start.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil
from rich.console import Console

from hodei._bootstrap import SchedulerHost, build_control_plane
from hodei._views import plain, workers_table
from hodei.domain import DynamicWorkerConfig, WorkerRecord, WorkerStatus, WorkerType
from hodei.lifecycle import LivenessConfig
from hodei.management._config import WorkerManagementConfig
from hodei.management._service import WorkerManagementService
from hodei.observability._metrics import ControlPlaneMetrics, SchedulerMetrics, process_registry
from hodei.ports import WorkerFilter
from hodei.providers._process import ProcessProvider
from hodei.transport._client import SchedulerPortClient

__all__ = ["run_demo"]

DEMO_LIVENESS = LivenessConfig(heartbeat_interval=1.0, lease_ttl=3.0, lost_grace=30.0, recovery_window=3.0)


async def _wait_connected(client: SchedulerPortClient, count: int, deadline: float) -> list[WorkerRecord]:
    records: list[WorkerRecord] = []
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        records = list(
            (await client.list_workers(WorkerFilter(labels={"demo": "true"}), page_size=1000)).workers
        )
        if sum(r.connected and r.status is WorkerStatus.AVAILABLE for r in records) == count:
            break
        await asyncio.sleep(0.1)
    return records


def _command() -> str:
    """How the user ran hodei (``.venv/bin/hodei``, as the README does), for hints they can paste."""
    given = sys.argv[0] if sys.argv else ""
    return given if Path(given).name == "hodei" else "hodei"


async def _died(client: SchedulerPortClient, provider: ProcessProvider, worker_ids: list[str]) -> list[str]:
    """The workers whose agent process has exited, or whose stream is no longer up."""
    records = {
        r.worker_id: r
        for r in (await client.list_workers(WorkerFilter(labels={"demo": "true"}), page_size=1000)).workers
    }
    gone = []
    for worker_id in worker_ids:
        record, pid = records.get(worker_id), provider.pid(worker_id)
        if record is None or not record.connected or pid is None or not _running(pid):
            gone.append(worker_id)
    return gone


def agents_left(host: SchedulerHost) -> list[psutil.Process]:
    """The processes this one started that still run, but for those the scheduler runs for itself."""
    own = host.own_processes()
    return [child for child in psutil.Process().children(recursive=True) if child.pid not in own]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def run_demo(console: Console, count: int, *, hold: float = 0.0) -> bool:
    registry = process_registry()  # one for the process: the scheduler's and the control plane's metrics
    with tempfile.TemporaryDirectory(prefix="hodei-demo-") as state:
        host = await SchedulerHost.open(
            f"sqlite:///{Path(state) / 'registry.db'}",
            metrics=SchedulerMetrics(registry),
            metrics_listen="127.0.0.1:0",
            listen="127.0.0.1:0",
            liveness=DEMO_LIVENESS,
        )
        async with host:
            console.print(
                f"[bold]1.[/bold] scheduler listening on [cyan]{host.address}[/cyan] (in-process; store: "
                f"{host.shown})"
            )
            console.print(f"   metrics: [cyan]{host.metrics_url}[/cyan]")
            provider = ProcessProvider(host.address, stop_grace=5.0)
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
                    return await _demo(console, count, hold, host, provider, service, client)
            finally:
                await provider.aclose()


async def _demo(
    console: Console,
    count: int,
    hold: float,
    host: SchedulerHost,
    provider: ProcessProvider,
    service: WorkerManagementService,
    client: SchedulerPortClient,
) -> bool:
    config = DynamicWorkerConfig(
        worker_type=WorkerType.PROCESS, cpu_cores=1, memory_mb=512, labels={"demo": "true"}
    )
    started = time.perf_counter()
    results = await service.provision_workers(count, config)
    registered = time.perf_counter() - started
    ok = [r.worker for r in results if r.worker is not None]
    console.print(
        f"[bold]2.[/bold] started {len(ok)}/{count} agent processes and registered them "
        f"in {registered * 1000:.0f} ms"
    )
    for failure in (r for r in results if r.error is not None):
        console.print(plain(f"   {failure.worker_id}: {failure.error}", "red"))

    records = await _wait_connected(client, len(ok), deadline=30.0)
    connected = time.perf_counter() - started
    available = sum(r.connected and r.status is WorkerStatus.AVAILABLE for r in records)
    console.print(workers_table(records, f"[bold]3.[/bold] the scheduler's view after {connected:.1f} s"))
    died: list[str] = []
    if hold:
        pids = ", ".join(f"{w.worker_id}={provider.pid(w.worker_id)}" for w in ok)
        console.print(
            f"   holding {hold:g} s: watch with `{_command()} workers watch --scheduler {host.address}`, "
            f"or kill an agent ({pids}) to see it go LOST",
            markup=False,
        )
        await asyncio.sleep(hold)
        died = await _died(client, provider, [w.worker_id for w in ok])
        if died:
            console.print(f"   [red]died during the hold[/red]: {', '.join(died)}")

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(service.decommission_worker(w.worker_id) for w in ok))
    decommissioned = time.perf_counter() - started
    left = await client.list_workers(page_size=1000)
    children = agents_left(host)
    drained = sum(o.drained for o in outcomes)
    console.print(
        f"[bold]4.[/bold] decommissioned {len(ok)} workers ({drained} drained through their stream) in "
        f"{decommissioned * 1000:.0f} ms; {len(left.workers)} left registered, {len(children)} child processes left"
    )
    success = available == count and not died and not left.workers and not children
    verdict = "[green]OK[/green]" if success else "[red]FAILED[/red]"
    console.print(
        f"[bold]summary[/bold] {verdict}: {count} provisioned, {available} AVAILABLE and heartbeating, "
        f"{len(died)} died during the hold, {len(ok)} decommissioned, {len(children)} orphans"
    )
    return success
