"""The scheduler's pool metrics say the truth: a real scheduler on loopback, pools applied and workers registered,
bound and released through the public client, and every value read back from the scheduler's metrics registry.

The pool gauges (``hodei_pool_workers``, ``hodei_pool_max_workers``, ``hodei_pool_waiting``) are set by the
scheduler about once a second, so each expected state is waited for with a deadline; the counters and the
histogram change with the call that makes them, and are read at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    JobOutcome,
    SchedulerPortClient,
    SchedulerTimeout,
    WorkerStatus,
    WorkerType,
)
from hodei.observability._metrics import SchedulerMetrics
from hodei.pools import Requirements
from hodei.testing import EmbeddedScheduler
from tests.helpers import metric, wait_for

pytestmark = pytest.mark.timeout(60)

GAUGE_DEADLINE = 10.0  # seconds: the gauges are refreshed about once a second

GPUS = """\
[pools.gpus]
kind = "static"
provider = "process"
size = 2

[pools.gpus.template]
cpu_cores = 8
memory_mb = 8192
gpu_count = 1
"""
POOLS = (
    """\
[pools.builders]
kind = "dynamic"
provider = "process"
max = 3

[pools.builders.template]
cpu_cores = 2
memory_mb = 1024

"""
    + GPUS
)

OUTCOMES = ("succeeded", "failed", "timed_out", "cancelled", "worker_lost", "abandoned")


def worker(worker_id: str, pool: str, cpu: int = 2) -> DynamicWorker:
    config = DynamicWorkerConfig(cpu_cores=cpu, memory_mb=1024, pool=pool)
    return DynamicWorker(worker_id, WorkerType.PROCESS, config, incarnation=1)


@pytest_asyncio.fixture
async def metrics() -> SchedulerMetrics:
    return SchedulerMetrics()


@pytest_asyncio.fixture
async def client(metrics: SchedulerMetrics) -> AsyncIterator[SchedulerPortClient]:
    async with EmbeddedScheduler(metrics=metrics) as scheduler, scheduler.client() as port:
        yield port


def pool_workers(registry: CollectorRegistry, pool: str) -> dict[str, float] | None:
    """The pool's ``hodei_pool_workers`` by status, or None when it has no series."""
    found = {
        status.value: registry.get_sample_value("hodei_pool_workers", {"pool": pool, "status": status.value})
        for status in WorkerStatus
    }
    present = {status: value for status, value in found.items() if value is not None}
    if not present:
        return None
    assert len(present) == len(found), f"pool {pool} has series for only some statuses: {found}"
    return {status: value for status, value in present.items() if value}


def pool_gauges(registry: CollectorRegistry, pool: str) -> tuple[object, ...]:
    """(workers by status without the zeros, max, waiting) of one pool; None where a series does not exist."""
    labels = {"pool": pool}
    return (
        pool_workers(registry, pool),
        registry.get_sample_value("hodei_pool_max_workers", labels),
        registry.get_sample_value("hodei_pool_waiting", labels),
    )


async def gauges_become(registry: CollectorRegistry, expected: dict[str, tuple[object, ...]]) -> None:
    """Wait until each pool's gauges read as ``expected`` (the message names what they read last)."""
    seen: dict[str, tuple[object, ...]] = {}

    async def read() -> bool:
        seen.clear()
        seen.update({pool: pool_gauges(registry, pool) for pool in expected})
        return seen == expected

    try:
        await wait_for(read, timeout=GAUGE_DEADLINE, interval=0.05)
    except AssertionError:
        raise AssertionError(f"pool gauges: expected {expected}, last read {seen}") from None


def ended(registry: CollectorRegistry) -> dict[str, float]:
    return {
        outcome: metric(registry, "hodei_assignments_ended_total", outcome=outcome) for outcome in OUTCOMES
    }


def waits(registry: CollectorRegistry) -> dict[str, float]:
    return {
        result: metric(registry, "hodei_acquire_wait_seconds_count", result=result)
        for result in ("bound", "timeout")
    }


async def test_the_pool_gauges_follow_binds_waits_and_releases_and_the_counters_count_each_end(
    metrics: SchedulerMetrics, client: SchedulerPortClient
) -> None:
    registry = metrics.registry
    statuses = await client.apply_pools("pools.toml", POOLS)
    assert [s.spec.name for s in statuses] == ["builders", "gpus"]
    await client.register_workers([worker("b-1", "builders"), worker("b-2", "builders")])
    # In no declared pool: counted by none (and too small for the acquires below).
    await client.register_worker(worker("elsewhere", "default", cpu=1))

    await gauges_become(registry, {"builders": ({"available": 2}, 3.0, 0.0), "gpus": ({}, 2.0, 0.0)})
    assert waits(registry) == {"bound": 0, "timeout": 0}
    assert metric(registry, "hodei_acquires_waiting") == 0

    first = await client.acquire_worker("job-1", Requirements(pool="builders"))
    second = await client.acquire_worker("job-2", Requirements(pool="builders"))
    assert {first.record.worker_id, second.record.worker_id} == {"b-1", "b-2"}
    assert waits(registry) == {"bound": 2, "timeout": 0}
    await gauges_become(registry, {"builders": ({"busy": 2}, 3.0, 0.0), "gpus": ({}, 2.0, 0.0)})

    # A third job waits for pool builders; one that any pool's template fits counts for the first pool by name.
    third = asyncio.create_task(client.acquire_worker("job-3", Requirements(pool="builders"), wait=30))
    anywhere = asyncio.create_task(client.acquire_worker("job-any", Requirements(cpu_cores=2), wait=30))
    await gauges_become(registry, {"builders": ({"busy": 2}, 3.0, 2.0), "gpus": ({}, 2.0, 0.0)})
    assert metric(registry, "hodei_acquires_waiting") == 2
    assert waits(registry) == {"bound": 2, "timeout": 0}

    await client.release_worker(first.assignment.assignment_id, reason="done")
    await client.release_worker(second.assignment.assignment_id, outcome=JobOutcome.FAILED)
    bound = await asyncio.wait_for(asyncio.gather(third, anywhere), 10)
    assert {b.record.worker_id for b in bound} == {"b-1", "b-2"}
    assert metric(registry, "hodei_acquires_waiting") == 0
    assert waits(registry) == {"bound": 4, "timeout": 0}
    assert ended(registry) == dict.fromkeys(OUTCOMES, 0) | {"succeeded": 1, "failed": 1}
    await gauges_become(registry, {"builders": ({"busy": 2}, 3.0, 0.0), "gpus": ({}, 2.0, 0.0)})

    # Nothing is free: an acquire times out with nothing bound.
    with pytest.raises(SchedulerTimeout):
        await client.acquire_worker("job-late", Requirements(pool="builders"), wait=0.05)
    assert waits(registry) == {"bound": 4, "timeout": 1}
    assert metric(registry, "hodei_acquires_waiting") == 0

    for acquired, outcome in zip(bound, (JobOutcome.CANCELLED, JobOutcome.TIMED_OUT), strict=True):
        await client.release_worker(acquired.assignment.assignment_id, outcome=outcome)
    assert ended(registry) == dict.fromkeys(OUTCOMES, 0) | {
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "timed_out": 1,
    }
    await gauges_become(registry, {"builders": ({"available": 2}, 3.0, 0.0), "gpus": ({}, 2.0, 0.0)})

    # A holder that stops renewing: its assignment ends abandoned and the worker is free again.
    await client.acquire_worker("job-forgotten", Requirements(pool="builders"), lease_ttl=1.0)

    async def abandoned() -> bool:
        return metric(registry, "hodei_assignments_ended_total", outcome="abandoned") == 1

    await wait_for(abandoned, timeout=GAUGE_DEADLINE)
    assert ended(registry) == {
        "succeeded": 1,
        "failed": 1,
        "timed_out": 1,
        "cancelled": 1,
        "worker_lost": 0,
        "abandoned": 1,
    }
    assert waits(registry) == {"bound": 5, "timeout": 1}
    await gauges_become(registry, {"builders": ({"available": 2}, 3.0, 0.0), "gpus": ({}, 2.0, 0.0)})


async def test_a_pool_removed_by_a_new_apply_loses_its_series_and_the_others_keep_theirs(
    metrics: SchedulerMetrics, client: SchedulerPortClient
) -> None:
    registry = metrics.registry
    await client.apply_pools("pools.toml", POOLS)
    await client.register_worker(worker("b-1", "builders"))
    await gauges_become(registry, {"builders": ({"available": 1}, 3.0, 0.0), "gpus": ({}, 2.0, 0.0)})

    statuses = await client.apply_pools("pools.toml", GPUS)

    assert [s.spec.name for s in statuses] == ["gpus"]
    await gauges_become(registry, {"builders": (None, None, None), "gpus": ({}, 2.0, 0.0)})
    assert not [
        sample
        for family in registry.collect()
        for sample in family.samples
        if sample.labels.get("pool") == "builders"
    ]
    # Declared again, it comes back with what the registry holds.
    await client.apply_pools("pools.toml", POOLS)
    await gauges_become(registry, {"builders": ({"available": 1}, 3.0, 0.0), "gpus": ({}, 2.0, 0.0)})
