"""How long a container worker takes to come into service: ``python -m hodei.bench.containers``.

A private ``podman system service`` (:class:`hodei._infra.podman.PodmanService`) and the locally built agent image;
a scheduler on loopback; the :class:`~hodei.providers.DockerProvider` behind the management service. Measured,
per worker: ``provider.provision`` (container created and started), ``provision_worker`` (… and registered by
the control plane: REGISTERED), and until the scheduler holds the worker ``AVAILABLE`` with its agent's stream
connected; then ``decommission_worker``. First one worker at a time (``--rounds``), then ``--concurrent``
workers in one ``provision_workers`` call. Needs root, Podman and mmdebstrap (``make system-deps``).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.console import Console
from rich.table import Table

from hodei._bootstrap import SchedulerHost, build_scheduler
from hodei._infra.agent_image import ensure_agent_image
from hodei._infra.podman import PodmanService
from hodei.bench.report import percentile
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerStatus, WorkerType
from hodei.lifecycle import LivenessConfig
from hodei.management import WorkerManagementService
from hodei.providers import DockerProvider, DockerProviderConfig
from hodei.registration._adapter import WorkerRegistrationAdapter
from hodei.transport._client import SchedulerPortClient

__all__ = ["main"]

CONFIG = DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=1, memory_mb=192)


async def _available(host: SchedulerHost, worker_id: str, since: float, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = await host.scheduler.get(worker_id)
        if record is not None and record.connected and record.status is WorkerStatus.AVAILABLE:
            return time.monotonic() - since
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{worker_id} not AVAILABLE within {timeout} s")


class _TimedProvider(DockerProvider):
    """Records how long each ``provision`` took."""

    def __init__(self, config: DockerProviderConfig) -> None:
        super().__init__(config)
        self.provision_seconds: dict[str, float] = {}

    async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
        started = time.monotonic()
        worker = await super().provision(worker_id, config)
        self.provision_seconds[worker_id] = time.monotonic() - started
        return worker


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _row(table: Table, name: str, values: list[float]) -> None:
    quantiles = (percentile(values, 0.5), percentile(values, 0.95), max(values))
    table.add_row(name, str(len(values)), *map(_ms, quantiles))


async def run(rounds: int, concurrent: int, console: Console, *, engine: PodmanService | None = None) -> None:
    """Measure and print; on ``engine`` if given (its image built if needed), else on a private one."""
    if engine is None:
        with PodmanService() as private:
            await run(rounds, concurrent, console, engine=private)
        return
    podman = engine
    started = time.monotonic()
    image = ensure_agent_image(podman)
    console.print(f"engine {podman.url}; image {image} ready in {time.monotonic() - started:.1f} s")
    liveness = LivenessConfig(heartbeat_interval=0.5, lease_ttl=3.0, recovery_window=0.0)
    async with (
        SchedulerHost(build_scheduler(listen="127.0.0.1:0", liveness=liveness)) as scheduler,
        SchedulerPortClient(scheduler.address) as port,
    ):
        config = DockerProviderConfig(
            schedulers=(scheduler.address,), image=image, base_url=podman.url, owner="bench"
        )
        async with _TimedProvider(config) as provider:
            service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(port))
            created: list[float] = []
            registered: list[float] = []
            available: list[float] = []
            decommissioned: list[float] = []
            for index in range(rounds):
                worker_id = f"bench-{index}"
                began = time.monotonic()
                await service.provision_worker(CONFIG, worker_id=worker_id)
                registered.append(time.monotonic() - began)
                available.append(await _available(scheduler, worker_id, began))
                created.append(provider.provision_seconds[worker_id])
                began = time.monotonic()
                await service.decommission_worker(worker_id)
                decommissioned.append(time.monotonic() - began)
            began = time.monotonic()
            results = await service.provision_workers(concurrent, CONFIG)
            failed = [r.worker_id for r in results if not r.ok]
            ids = [r.worker_id for r in results if r.ok]
            batch_registered = time.monotonic() - began
            each = await asyncio.gather(*(_available(scheduler, i, began) for i in ids))
            all_available = time.monotonic() - began
            await asyncio.gather(*(service.decommission_worker(i) for i in ids))

    table = Table(title=f"container workers, one at a time ({rounds} rounds)")
    for column in ("phase", "n", "p50", "p95", "max"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    _row(table, "container created and started", created)
    _row(table, "provision_worker -> REGISTERED", registered)
    _row(table, "provision_worker -> AVAILABLE, agent connected", available)
    _row(table, "decommission_worker", decommissioned)
    console.print(table)
    console.print(
        f"{concurrent} at once: all REGISTERED after {batch_registered:.2f} s, all AVAILABLE after "
        f"{all_available:.2f} s (each: p50 {percentile(list(each), 0.5):.2f} s, max {max(each):.2f} s); "
        f"failed: {failed or 'none'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hodei.bench.containers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="workers provisioned one at a time")
    parser.add_argument("--concurrent", type=int, default=20, help="workers provisioned in one call")
    options = parser.parse_args(argv)
    asyncio.run(run(options.rounds, options.concurrent, Console()))


if __name__ == "__main__":
    main()
