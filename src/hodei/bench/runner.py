"""Runs the benchmark: each scenario against a scheduler process of its own (or ``--target``), the baseline
against a raw grpc.aio server process, with the scheduler's CPU and memory sampled around the load."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hodei.bench import _load as shapes
from hodei.bench import scenarios
from hodei.bench.disk import fsync_rate
from hodei.bench.processes import ProcessProbe, ServerProcess, free_port, scrape
from hodei.bench.report import ScenarioResult, Target
from hodei.bench.security import PLAIN, PLAINTEXT, BenchSecurity, PreparedSecurity
from hodei.bench.stores import STORES, registry_store
from hodei.domain import UpsertOutcome
from hodei.transport._client import SchedulerPortClient

__all__ = ["POOL_SCENARIOS", "SCENARIOS", "STORES", "Scale", "run_benchmark"]


@dataclass(frozen=True, slots=True)
class Scale:
    """How much load each scenario offers; ``quick`` is for smoke runs."""

    sequential: int = 3_000
    concurrent: int = 30_000
    storm: int = 10_000
    batch: int = 10_000
    batch_rounds: int = 5
    open_loop_seconds: float = 10.0
    churn: int = 100_000
    agents: int = 300
    agents_seconds: float = 10.0
    baseline: int = 30_000
    pool_workers: int = 1_000
    pool_acquires: int = 2_000
    pool_burst: int = 500
    pool_from_zero: int = 50

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            sequential=50,
            concurrent=300,
            storm=200,
            batch=500,
            batch_rounds=2,
            open_loop_seconds=0.3,
            churn=200,
            agents=5,
            agents_seconds=0.5,
            baseline=300,
            pool_workers=50,
            pool_acquires=50,
            pool_burst=20,
            pool_from_zero=3,
        )


Scenario = Callable[["Context"], Awaitable[shapes.Load]]


@dataclass
class Context:
    target: str
    client: SchedulerPortClient
    scale: Scale
    progress: shapes.Progress
    baseline_target: str = ""
    security: PreparedSecurity = PLAINTEXT


# Single registrations with 500 in flight, as a share of the same run's raw grpc.aio baseline, by store.
_CONCURRENT_RATIO = {"memory": 0.65, "sqlite": 0.6, "postgres": 0.5}
# Batches of 10,000 (workers/s): what each store reached before group commit, not to be lost.
_BATCH = {"memory": 50_000, "sqlite": 25_000, "postgres": 23_000}


def _targets(name: str, store: str) -> list[Target]:
    ratio = _CONCURRENT_RATIO.get(store, 0.6)
    return {
        "concurrent-500": [
            Target("workers_per_second", 2000),
            Target(
                "ratio_to_baseline",
                ratio,
                label=f"throughput >= {ratio:.0%} of the raw grpc.aio baseline ({store})",
            ),
            Target("p95_ms", 2000, at_most=True),
            Target("p95_ratio_to_baseline", 1.5, at_most=True, label="p95 <= 1.5x the baseline's p95"),
        ],
        "batch-10000": [
            Target("workers_per_second", _BATCH.get(store, 50_000)),
            Target("rss_mb_per_1000_workers", 2.0, at_most=True),
            Target(
                "client_tasks_peak", 64, at_most=True, label="client tasks at most 64 (no gather per worker)"
            ),
        ],
        "open-loop-1000": [Target("p95_ms", 10, at_most=True)],
        "concurrent-10000": [
            Target("errors", 0, at_most=True),
            Target(
                "health_max_ms",
                100,
                at_most=True,
                label="health checks answer within 100 ms during the storm",
            ),
        ],
        "churn": [Target("rss_growth_after_warmup_mb", 2.0, at_most=True)],
        "sequential": [Target("workers_per_second", 500, label="workers/s >= 500 (the story's target)")],
        "pool-acquire": [
            Target("p95_ms", 10, at_most=True, label="acquire p95 < 10 ms, 1,000 workers registered")
        ],
        "pool-from-zero-50": [
            Target(
                "first_provision_s",
                1.0,
                at_most=True,
                label="first waiting job to first provision call < 1 s",
            ),
            Target(
                "over_slowest_provision_s",
                2.0,
                at_most=True,
                label="all jobs running within the slowest provision + 2 s",
            ),
            Target("errors", 0, at_most=True),
        ],
        "pool-burst-500": [
            Target(
                "all_bound_s",
                1.0,
                at_most=True,
                label="500 acquires on 500 warm workers all bound within 1 s",
            ),
            Target("errors", 0, at_most=True),
        ],
    }.get(name, [])


SCENARIOS: dict[str, tuple[str, Callable[[Scale], int]]] = {
    "baseline-sequential": ("raw grpc.aio unary calls, one at a time", lambda s: s.sequential),
    "baseline-concurrent": ("raw grpc.aio unary calls, 500 in flight", lambda s: s.baseline),
    "sequential": ("single registrations, one at a time", lambda s: s.sequential),
    "concurrent-500": ("single registrations, 500 in flight", lambda s: s.concurrent),
    "concurrent-10000": ("10,000 registrations started at once", lambda s: s.storm),
    "batch-10000": ("register_workers_batch of 10,000, 5 times", lambda s: s.batch * s.batch_rounds),
    "open-loop-1000": ("1,000 registrations/s offered", lambda s: int(1000 * s.open_loop_seconds)),
    "churn": ("register/unregister cycles", lambda s: s.churn),
    "agents": ("connected agents heartbeating", lambda s: s.agents),
    "pool-acquire": ("acquire + release one at a time, warm pool", lambda s: s.pool_acquires),
    "pool-burst-500": ("acquires started at once on a warm pool as large", lambda s: s.pool_burst),
    "pool-from-zero-50": ("jobs at once on an empty dynamic pool of agents", lambda s: s.pool_from_zero),
}
POOL_SCENARIOS = ("pool-acquire", "pool-burst-500", "pool-from-zero-50")
"""``--scenario pools``."""


async def _load(name: str, ctx: Context) -> shapes.Load:
    s = ctx.scale
    if name == "baseline-sequential":
        return await scenarios.baseline(ctx.baseline_target, s.sequential, 1, ctx.progress)
    if name == "baseline-concurrent":
        return await scenarios.baseline(ctx.baseline_target, s.baseline, 500, ctx.progress)
    if name == "sequential":
        return await scenarios.registrations(ctx.client, "seq", s.sequential, 1, ctx.progress)
    if name == "concurrent-500":
        return await scenarios.registrations(ctx.client, "c500", s.concurrent, 500, ctx.progress)
    if name == "concurrent-10000":
        return await scenarios.storm(ctx.client, "storm", s.storm, ctx.progress)
    if name == "batch-10000":
        return await scenarios.batch(ctx.client, "batch", s.batch, s.batch_rounds, ctx.progress)
    if name == "open-loop-1000":
        return await scenarios.paced(ctx.client, "open", 1000, s.open_loop_seconds, ctx.progress)
    if name == "churn":
        return await scenarios.churn(ctx.client, "churn", s.churn, 50, ctx.progress)
    if name == "agents":
        return await scenarios.agents(ctx.target, s.agents, s.agents_seconds, ctx.progress, ctx.security)
    if name == "pool-acquire":
        return await scenarios.pool_acquires(ctx.client, s.pool_workers, s.pool_acquires, ctx.progress)
    if name == "pool-burst-500":
        return await scenarios.pool_burst(ctx.client, s.pool_burst, ctx.progress)
    if name == "pool-from-zero-50":
        return await scenarios.pool_from_zero(ctx.target, ctx.client, s.pool_from_zero, ctx.progress)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


@contextlib.asynccontextmanager
async def _server(
    name: str, target: str | None, security: PreparedSecurity, store: str
) -> AsyncIterator[tuple[str, ProcessProbe | None, str | None]]:
    """The server's address, its probe (if the bench started it), and its ``/metrics`` (if a scheduler's)."""
    if name.startswith("baseline"):
        async with ServerProcess.baseline() as server:
            yield server.address, ProcessProbe(server.pid, with_children=True), None
    elif target:
        yield target, None, None
    else:
        liveness = ("--heartbeat-interval", "1", "--lease-ttl", "5") if name == "agents" else ()
        metrics = f"127.0.0.1:{free_port()}"
        args = (*liveness, *security.server_args, "--metrics-listen", metrics)
        async with registry_store(store) as url, ServerProcess.scheduler(*args, store=url) as server:
            yield server.address, ProcessProbe(server.pid, with_children=True), f"http://{metrics}/metrics"


# What the store decided (an invalid or refused registration never reaches it).
_STORED = frozenset(outcome.value for outcome in UpsertOutcome)


async def _writes(metrics_url: str) -> tuple[float, float]:
    """The registrations the scheduler's store wrote so far, and the transactions it wrote them in."""
    samples = await scrape(metrics_url)
    registrations = sum(
        value
        for labels, value in samples.get("hodei_scheduler_registrations_total", {}).items()
        if dict(labels).get("result") in _STORED
    )
    return registrations, sum(samples.get("hodei_store_registration_transactions_total", {}).values())


def _health_probe(address: str, scale: Scale, security: PreparedSecurity) -> subprocess.Popen[str]:
    """Health checks from another process for about as long as the storm lasts."""
    seconds = max(1.0, scale.storm / 2000)
    return subprocess.Popen(
        [sys.executable, "-m", "hodei.bench.health_probe", address, str(seconds), *security.probe_args()],
        stdout=subprocess.PIPE,
        text=True,
    )


async def _registered(client: SchedulerPortClient) -> int:
    count, token = 0, ""
    while True:
        page = await client.list_workers(page_size=1000, page_token=token, timeout=30)
        count += len(page.workers)
        if not (token := page.next_page_token):
            return count


async def run_scenario(
    name: str,
    scale: Scale,
    *,
    target: str | None,
    progress: Progress,
    security: PreparedSecurity = PLAINTEXT,
    store: str = STORES[0],
) -> ScenarioResult:
    total = SCENARIOS[name][1](scale)
    task = progress.add_task(name, total=total)
    baseline = name.startswith("baseline")
    # The raw baseline speaks plaintext, without tokens, whatever the scheduler's security.
    reach = PLAINTEXT if baseline else security
    async with (
        _server(name, target, reach, store) as (address, probe, metrics_url),
        SchedulerPortClient(address, credential=reach.operator, tls=reach.client_tls) as client,
    ):
        before_count = 0 if baseline else await _registered(client)
        ctx = Context(address, client, scale, lambda n: progress.advance(task, n), address, reach)
        if name == "churn":
            # Warm up with a tenth of the cycles, then measure growth over the rest.
            warm = scale.churn // 10
            await scenarios.churn(client, "churn", warm, 50, lambda n: progress.advance(task, n))
            ctx.scale = replace(scale, churn=scale.churn - warm)
        gc.collect()
        health = _health_probe(address, scale, reach) if name == "concurrent-10000" else None
        if health is not None:
            assert health.stdout is not None
            await asyncio.to_thread(health.stdout.readline)
        own = ProcessProbe(os.getpid())
        writes_before = await _writes(metrics_url) if metrics_url else None
        client_before = own.sample()
        before = probe.sample() if probe else None
        load = await _load(name, ctx)
        after = probe.sample() if probe else None
        load.extra["client_cpu_percent"] = ProcessProbe.cpu_percent(client_before, own.sample())
        if writes_before is not None and metrics_url:
            registrations, transactions = (
                b - a for a, b in zip(writes_before, await _writes(metrics_url), strict=True)
            )
            if transactions:
                load.extra["registrations_per_transaction"] = registrations / transactions
        if health is not None:
            out, _ = await asyncio.to_thread(health.communicate)
            load.extra.update(json.loads(out))
        after_count = 0 if baseline else await _registered(client)
    result = ScenarioResult(
        name=name,
        store="" if baseline else ("(target)" if target else store),
        workers=total if name != "agents" else scale.agents,
        elapsed=load.elapsed,
        latencies=load.latencies,
        errors=load.errors,
        registered_before=before_count,
        registered_after=after_count,
        extra=dict(load.extra),
        targets=_targets(name, store),
    )
    if before and after:
        result.scheduler_cpu_percent = ProcessProbe.cpu_percent(before, after)
        result.scheduler_rss_before, result.scheduler_rss_after = before.rss, after.rss
        if name == "churn":
            result.extra["rss_growth_after_warmup_mb"] = (after.rss - before.rss) / 2**20
    if name == "churn":
        result.workers = scale.churn
    if name == "sequential" and store == "sqlite" and not target:
        # One registration at a time is one commit at a time: beside it, what the disk itself allows.
        result.extra["disk_fsyncs_per_second"] = await asyncio.to_thread(
            fsync_rate, Path(tempfile.gettempdir())
        )
    return result


def _relate_to_baseline(results: list[ScenarioResult]) -> None:
    by_name = {r.name: r for r in results}
    base = by_name.get("baseline-concurrent")
    for name in ("concurrent-500",):
        result = by_name.get(name)
        if base is None or result is None or not base.workers_per_second:
            continue
        result.extra["ratio_to_baseline"] = result.workers_per_second / base.workers_per_second
        if base.latency(0.95):
            result.extra["p95_ratio_to_baseline"] = result.latency(0.95) / base.latency(0.95)
    seq_base = by_name.get("baseline-sequential")
    seq = by_name.get("sequential")
    if seq_base and seq and seq_base.workers_per_second:
        seq.extra["ratio_to_baseline"] = seq.workers_per_second / seq_base.workers_per_second


async def run_benchmark(
    names: Sequence[str],
    scale: Scale,
    *,
    target: str | None,
    console: Console,
    security: BenchSecurity = PLAIN,
    store: str = STORES[0],
) -> list[ScenarioResult]:
    """Run ``names``; with ``security``, each scheduler the bench starts serves TLS and/or requires tokens, and
    the bench's clients use them (against ``target``, a scheduler of the caller's, they cannot)."""
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; known: {', '.join(STORES)}")
    if target and (security.tls or security.auth):
        raise ValueError("--tls and --auth apply to the schedulers the bench starts, not to --target")
    results: list[ScenarioResult] = []
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress, security.prepared() as prepared:
        for name in names:
            result = await run_scenario(
                name, scale, target=target, progress=progress, security=prepared, store=store
            )
            if not name.startswith("baseline"):
                result.extra |= {"tls": float(security.tls), "auth": float(security.auth)}
            results.append(result)
    _relate_to_baseline(results)
    return results
