"""The benchmark's scenarios. Each drives load through the real adapter and client (or raw grpc.aio for the
baseline) and returns what it measured; the runner adds the scheduler's CPU and memory. The shapes of that
load (closed loop, all at once, open loop) are :mod:`hodei.bench._load`'s."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc

from hodei.agent import AgentConfig, WorkerAgent
from hodei.bench._load import Load, Progress, all_at_once, closed_loop, open_loop
from hodei.bench.baseline import METHOD, request_bytes
from hodei.bench.security import PLAINTEXT, PreparedSecurity
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerType
from hodei.errors import SchedulerError
from hodei.pools import Requirements
from hodei.registration import RegistrationConfig, WorkerRegistrationAdapter
from hodei.transport._client import SchedulerPortClient

_CONFIG = DynamicWorkerConfig(labels={"bench": "true"})


def worker(prefix: str, index: int) -> DynamicWorker:
    return DynamicWorker(f"{prefix}-{index:07}", WorkerType.DOCKER, _CONFIG)


def adapter_for(client: SchedulerPortClient, **config: object) -> WorkerRegistrationAdapter:
    return WorkerRegistrationAdapter(client, RegistrationConfig(**config))  # type: ignore[arg-type]


async def baseline(target: str, count: int, in_flight: int, progress: Progress) -> Load:
    """Raw grpc.aio unary calls, as large as a registration and its answer."""
    payload = request_bytes()
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)

        async def raw(index: int) -> object:
            return await call(payload, timeout=30)

        return await closed_loop(count, in_flight, raw, progress)


async def registrations(
    client: SchedulerPortClient, prefix: str, count: int, in_flight: int, progress: Progress
) -> Load:
    adapter = adapter_for(client, registration_timeout=30.0)
    return await closed_loop(count, in_flight, lambda i: adapter.register_worker(worker(prefix, i)), progress)


async def storm(client: SchedulerPortClient, prefix: str, count: int, progress: Progress) -> Load:
    adapter = adapter_for(client, registration_timeout=60.0, max_retries=10)
    return await all_at_once(count, lambda i: adapter.register_worker(worker(prefix, i)), progress)


async def paced(
    client: SchedulerPortClient, prefix: str, rate: float, duration: float, progress: Progress
) -> Load:
    adapter = adapter_for(client)
    return await open_loop(rate, duration, lambda i: adapter.register_worker(worker(prefix, i)), progress)


async def batch(
    client: SchedulerPortClient, prefix: str, count: int, rounds: int, progress: Progress
) -> Load:
    """``rounds`` calls of register_workers_batch with ``count`` workers each (after a warm-up batch); each
    latency is one whole batch's, and the client's peak task count shows that no batch ever holds a coroutine
    per worker."""
    adapter = adapter_for(client, registration_timeout=30.0)
    await adapter.register_workers_batch([worker(f"{prefix}-warm", i) for i in range(min(count, 1000))])
    peak_tasks = 0
    done = asyncio.Event()

    async def watch_tasks() -> None:
        nonlocal peak_tasks
        while not done.is_set():
            peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch_tasks())
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    elapsed = 0.0
    for round_ in range(rounds):
        workers = [worker(f"{prefix}{round_}", i) for i in range(count)]
        started = time.perf_counter()
        results = await adapter.register_workers_batch(workers)
        latencies.append(time.perf_counter() - started)
        elapsed += latencies[-1]
        errors.update(r.error.code.name for r in results if r.error is not None)
        progress(count)
    done.set()
    await watcher
    return Load(
        latencies, errors, elapsed, {"client_tasks_peak": float(peak_tasks), "batches": float(rounds)}
    )


async def churn(
    client: SchedulerPortClient, prefix: str, cycles: int, in_flight: int, progress: Progress
) -> Load:
    """Register and unregister the same small set of ids over and over."""
    adapter = adapter_for(client)
    pool = max(in_flight, 1)

    async def cycle(index: int) -> None:
        one = worker(prefix, index % pool)
        await adapter.register_worker(one)
        await adapter.unregister_worker(one.worker_id)

    return await closed_loop(cycles, in_flight, cycle, progress)


async def agents(
    target: str,
    count: int,
    duration: float,
    progress: Progress,
    security: PreparedSecurity = PLAINTEXT,
) -> Load:
    """``count`` in-process agents connect (each with a join token of its own when auth is on), then heartbeat
    for ``duration`` seconds."""
    ids = [f"bench-agent-{i:05}" for i in range(count)]
    fleet = [
        WorkerAgent(
            AgentConfig(
                schedulers=(target,),
                worker_id=worker_id,
                cpu_cores=1,
                memory_mb=512,
                token=security.join_token(worker_id),
                tls=security.client_tls,
            )
        )
        for worker_id in ids
    ]
    started = time.perf_counter()
    tasks = [asyncio.create_task(agent.run()) for agent in fleet]
    latencies: list[float] = []

    async def connected(agent: WorkerAgent) -> None:
        await agent.connected.wait()
        latencies.append(time.perf_counter() - started)
        progress(1)

    await asyncio.wait_for(asyncio.gather(*(connected(a) for a in fleet)), 120)
    all_connected = time.perf_counter() - started
    await asyncio.sleep(duration)
    heartbeats = sum(a.heartbeats_sent for a in fleet)
    for agent in fleet:
        agent.request_shutdown("benchmark over")
    await asyncio.gather(*tasks, return_exceptions=True)
    return Load(
        latencies,
        Counter(),
        all_connected,
        {"heartbeats_per_second": heartbeats / duration, "agents_connected_s": all_connected},
    )


async def _warm_pool(client: SchedulerPortClient, pool: str, size: int) -> None:
    """``size`` workers of ``pool`` registered (without agents: their holders use them themselves)."""
    config = DynamicWorkerConfig(cpu_cores=2, memory_mb=4096, pool=pool, labels={"bench": "true"})
    workers = [DynamicWorker(f"{pool}-{i:05}", WorkerType.PROCESS, config) for i in range(size)]
    for start in range(0, size, 1000):
        await client.register_workers(workers[start : start + 1000], timeout=60)


async def pool_acquires(client: SchedulerPortClient, workers: int, count: int, progress: Progress) -> Load:
    """From a warm pool of ``workers``, ``count`` acquires one at a time, each released before the next; the
    latencies are the acquires' (the releases are not timed)."""
    await _warm_pool(client, "warm", workers)
    wanted = Requirements(pool="warm", cpu_cores=1)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    for index in range(count):
        began = time.perf_counter()
        try:
            acquired = await client.acquire_worker(f"seq-{index:06}", wanted, wait=5.0)
        except SchedulerError as error:
            errors[error.code.name] += 1
        else:
            latencies.append(time.perf_counter() - began)
            await client.release_worker(acquired.assignment.assignment_id)
        progress(1)
    return Load(latencies, errors, time.perf_counter() - started, {"pool_workers": float(workers)})


async def pool_burst(client: SchedulerPortClient, workers: int, progress: Progress) -> Load:
    """``workers`` acquires started at once on a warm pool of as many workers: all bound, each once."""
    await _warm_pool(client, "burst", workers)
    wanted = Requirements(pool="burst")
    bound: set[str] = set()

    async def acquire(index: int) -> None:
        acquired = await client.acquire_worker(f"burst-{index:06}", wanted, wait=30.0)
        bound.add(acquired.record.worker_id)

    load = await all_at_once(workers, acquire, progress)
    load.extra["all_bound_s"] = load.elapsed
    load.extra["distinct_workers_bound"] = float(len(bound))
    return load


class _TimedProvider:
    """A provider whose provision calls are timed (when each began), otherwise the provider it wraps."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
        self.calls.setdefault(worker_id, time.perf_counter())
        return await self._inner.provision(worker_id, config)  # type: ignore[no-any-return]


def burst_pools(jobs: int) -> str:
    """An empty dynamic pool of process agents that may grow to ``jobs`` at once."""
    return f"""\
[pools.burst]
kind = "dynamic"
provider = "process"
min = 0
max = {jobs}
max_provisioning = {jobs}
idle_timeout = 600
provision_timeout = 300

[pools.burst.template]
cpu_cores = 1
memory_mb = 256
"""


async def _first_tick(metrics: Any, timeout: float = 30.0) -> None:
    """Wait until the autoscaler has sized the bench's pool once (its desired size is shown)."""
    deadline = time.monotonic() + timeout
    while metrics.registry.get_sample_value("hodei_pool_desired_workers", {"pool": "burst"}) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the autoscaler did not size the pool within {timeout} s")
        await asyncio.sleep(0.01)


async def pool_from_zero(target: str, client: SchedulerPortClient, jobs: int, progress: Progress) -> Load:
    """``jobs`` jobs acquired at once on an empty dynamic pool (process agents, max ``jobs``) with the control
    plane's autoscaler at its defaults: when the first provision was asked for, how long the slowest worker
    took from its provision call to taking a job, and when all the jobs were running."""
    import tempfile

    from hodei._bootstrap import build_control_plane
    from hodei.domain import Job, JobOutcome
    from hodei.management._pools import PoolAutoscaler
    from hodei.providers._process import ProcessProvider

    await client.apply_pools("bench-pools.toml", burst_pools(jobs))
    with tempfile.TemporaryDirectory(prefix="hodei-bench-pool-") as work:
        provider = _TimedProvider(
            ProcessProvider(target, stop_grace=5.0, environment={"HODEI_WORK_DIR": work})
        )
        try:
            async with (
                build_control_plane(provider, scheduler=client) as service,
                PoolAutoscaler(service, client) as autoscaler,
            ):
                job = Job(("sleep", "30"))
                bound: dict[str, float] = {}
                assignments: list[str] = []

                async def acquire(index: int) -> None:
                    acquired = await client.acquire_worker(
                        f"burst-job-{index:04}", Requirements(pool="burst"), job=job, wait=600.0
                    )
                    bound[acquired.record.worker_id] = time.perf_counter()
                    assignments.append(acquired.assignment.assignment_id)

                # The burst comes after the autoscaler's first tick, not with it: the first provision call then
                # measures how soon a waiting job wakes the autoscaler, not how its start-up met the burst.
                await _first_tick(service.metrics)
                started = time.perf_counter()
                load = await all_at_once(jobs, acquire, progress)
                slowest = max(
                    (bound[w] - provider.calls[w] for w in bound if w in provider.calls), default=0.0
                )
                all_running = max(bound.values(), default=started) - started
                first_call = min(provider.calls.values(), default=started) - started
                load.extra |= {
                    "first_provision_s": first_call,
                    "slowest_provision_s": slowest,
                    "all_running_s": all_running,
                    "over_slowest_provision_s": all_running - slowest,
                    "provisioned": float(len(provider.calls)),
                }
                await autoscaler.stop()
                # The jobs (``sleep 30``) only kept every worker busy at once: cancelled, not waited for.
                await asyncio.gather(
                    *(
                        client.release_worker(a, outcome=JobOutcome.CANCELLED, reason="bench over")
                        for a in assignments
                    )
                )
                await asyncio.gather(*(service.decommission_worker(w) for w in provider.calls))
        finally:
            await provider.aclose()
    return load
