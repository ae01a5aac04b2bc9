"""The pool autoscaler against a small in-memory scheduler (its own collaborator: the pools, the demand and the
registry it reads) and hodei's MockWorkerProvider, through the real management service and registration
adapter. Ticks are called directly, at instants the test chooses."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from hodei import (
    DynamicWorker,
    ErrorCode,
    RegistrationConfig,
    UnregistrationStatus,
    WorkerRegistrationAdapter,
)
from hodei.domain import (
    DynamicWorkerConfig,
    FieldViolation,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
    record_of,
    utcnow,
)
from hodei.errors import (
    ProviderError,
    SchedulerError,
    SchedulerUnavailable,
    WorkerNotIdle,
    scheduler_error_for,
)
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.management import (
    PoolAutoscaler,
    PoolAutoscalerConfig,
    PoolsFile,
    PoolTick,
    WorkerManagementConfig,
    WorkerManagementService,
)
from hodei.observability._metrics import ControlPlaneMetrics
from hodei.pools import (
    PoolKind,
    PoolSpec,
    PoolStatus,
    Requirements,
    ScaleEvent,
    ScaleReason,
    WaitingDemand,
    parse_pools,
    waiting_by_pool,
)
from hodei.ports import DrainOutcome, RegistrationReceipt, WorkerFilter, WorkerPage
from hodei.testing import FakeClock, MockWorkerProvider
from tests.helpers import metric, wait_for


class PoolScheduler:
    """The scheduler as the autoscaler sees it (SchedulerPort and PoolPort), over a dict of records."""

    def __init__(self, *pools: PoolSpec) -> None:
        self.specs = {p.name: p for p in pools}
        self.records: dict[str, WorkerRecord] = {}
        self.demand: list[WaitingDemand] = []
        self.applied: list[tuple[str, str]] = []
        self.refuse_apply: list[SchedulerError] = []
        self.refuse_drain: list[SchedulerError] = []
        self.fail_list_pools: list[Exception] = []
        self.listed_pages = 0
        self.scale_events: list[ScaleEvent] = []
        self.refuse_reports: list[SchedulerError] = []
        self.listed_pools = 0
        self.before_listing: Callable[[], None] | None = None  # what happens just before a page is read
        self.events: asyncio.Queue[WorkerEvent | Exception] = asyncio.Queue()
        self.watches = 0
        self.watched_kinds: Collection[WorkerEventKind] | None = None

    # SchedulerPort
    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        self.records[worker.worker_id] = record_of(worker)
        return RegistrationReceipt(self.records[worker.worker_id], created=True)

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list:
        return [await self.register_worker(w) for w in workers]

    async def unregister_worker(
        self,
        worker_id: str,
        *,
        reason: str = "",
        incarnation: int | None = None,
        timeout: float | None = None,
    ) -> UnregistrationStatus:
        gone = self.records.pop(worker_id, None)
        return UnregistrationStatus.SUCCESS if gone else UnregistrationStatus.NOT_REGISTERED

    async def get_worker(self, worker_id: str, *, timeout: float | None = None) -> WorkerRecord | None:
        return self.records.get(worker_id)

    async def list_workers(
        self,
        worker_filter: WorkerFilter | None = None,
        *,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> WorkerPage:
        self.listed_pages += 1
        if self.before_listing is not None:
            self.before_listing()
        chosen = [
            r
            for i, r in sorted(self.records.items())
            if i > page_token and (worker_filter is None or worker_filter.matches(r))
        ]
        page = chosen[:page_size]
        return WorkerPage(page, page[-1].worker_id if len(chosen) > page_size else "")

    async def drain_worker(
        self,
        worker_id: str,
        *,
        deadline: float = 0.0,
        reason: str = "",
        only_if_available: bool = False,
        timeout: float | None = None,
    ) -> DrainOutcome:
        if self.refuse_drain:
            raise self.refuse_drain.pop(0)
        record = self.records.get(worker_id)
        if record is None:
            raise scheduler_error_for(ErrorCode.NOT_FOUND, "no such worker")
        if only_if_available and record.status is not WorkerStatus.AVAILABLE:
            raise WorkerNotIdle("busy", violations=[FieldViolation("status", f"is {record.status.value}")])
        self.records[worker_id] = replace(record, status=WorkerStatus.DRAINING)
        return DrainOutcome(self.records[worker_id], delivered=False)

    async def report_orphan_removed(
        self, worker_id: str, *, reason: str = "", timeout: float | None = None
    ) -> None:
        return None

    async def close(self) -> None:
        return None

    # PoolPort (the part the autoscaler uses)
    async def list_pools(self, *, timeout: float | None = None) -> list[PoolStatus]:
        self.listed_pools += 1
        if self.fail_list_pools:
            raise self.fail_list_pools.pop(0)
        statuses = []
        for spec in self.specs.values():
            counts: dict[WorkerStatus, int] = {}
            for record in self.records.values():
                if record.pool == spec.name:
                    counts[record.status] = counts.get(record.status, 0) + 1
            statuses.append(PoolStatus(spec, counts))
        # As the scheduler counts them (hodei.pools.waiting_by_pool: a shape for the first pool that fits it).
        waiting = waiting_by_pool(self.demand, self.specs)
        return [replace(status, waiting=waiting.get(status.spec.name, 0)) for status in statuses]

    async def get_demand(self, *, timeout: float | None = None) -> list[WaitingDemand]:
        return list(self.demand)

    async def apply_pools(self, source: str, text: str, *, timeout: float | None = None) -> list[PoolStatus]:
        if self.refuse_apply:
            raise self.refuse_apply.pop(0)
        self.specs = parse_pools(text, source=source)
        self.applied.append((source, text))
        return await self.list_pools()

    async def report_scale_event(self, event: ScaleEvent, *, timeout: float | None = None) -> None:
        if self.refuse_reports:
            raise self.refuse_reports.pop(0)
        self.scale_events.append(event)

    async def watch_workers(
        self, *, include_snapshot: bool = False, kinds: Collection[WorkerEventKind] | None = None
    ) -> AsyncIterator[WorkerEvent]:
        self.watches += 1
        self.watched_kinds = kinds
        while True:
            item = await self.events.get()
            if isinstance(item, Exception):
                raise item  # the stream broke (or a bug)
            yield item

    # what the tests do
    def tell_demand(self, *demand: WaitingDemand) -> None:
        """What waits changed: the scheduler's DEMAND event."""
        self.demand = list(demand)
        self.events.put_nowait(
            WorkerEvent(1, WorkerEventKind.DEMAND, "", None, f"{len(demand)} shapes", utcnow(), demand)
        )

    def pool_records(self, pool: str, *statuses: WorkerStatus) -> list[WorkerRecord]:
        return [r for r in self.records.values() if r.pool == pool and (not statuses or r.status in statuses)]

    def set_status(self, worker_id: str, status: WorkerStatus, **changes: object) -> None:
        self.records[worker_id] = replace(self.records[worker_id], status=status, **changes)  # type: ignore[arg-type]


def dynamic(name: str = "builders", **fields: object) -> PoolSpec:
    return PoolSpec(name=name, kind=PoolKind.DYNAMIC, provider=WorkerType.PROCESS, **fields)  # type: ignore[arg-type]


def static(name: str = "fixed", size: int = 3, **fields: object) -> PoolSpec:
    return PoolSpec.static(name, size, provider=WorkerType.PROCESS, **fields)


def waiting(count: int, *pools: str) -> WaitingDemand:
    return WaitingDemand(Requirements(cpu_cores=1), count, 1.0, pools)


class Rig:
    """The autoscaler, its scheduler, provider and clock."""

    def __init__(self, *pools: PoolSpec, provider: MockWorkerProvider | None = None, **config: float) -> None:
        self.scheduler = PoolScheduler(*pools)
        self.provider = provider or MockWorkerProvider()
        self.clock = FakeClock(1000.0)
        self.metrics = ControlPlaneMetrics()
        adapter = WorkerRegistrationAdapter(
            self.scheduler, RegistrationConfig(max_retries=0), metrics=self.metrics
        )
        self.service = WorkerManagementService(
            self.provider,
            registration=adapter,
            config=WorkerManagementConfig(drain_timeout=0.0, stop_grace=0.0),
            metrics=self.metrics,
        )
        self.autoscaler = PoolAutoscaler(
            self.service,
            self.scheduler,
            config=PoolAutoscalerConfig(**config),
            clock=self.clock,
        )

    async def tick(self, at: float | None = None) -> dict[str, PoolTick]:
        if at is not None:
            self.clock.now = at
        return {t.spec.name: t for t in await self.autoscaler.tick()}

    async def settled_tick(self, at: float | None = None) -> dict[str, PoolTick]:
        ticks = await self.tick(at)
        await self.autoscaler.settle()
        return ticks

    def scale_events(self, pool: str, direction: str, reason: str) -> float:
        return metric(
            self.metrics.registry,
            "hodei_pool_scale_events_total",
            pool=pool,
            direction=direction,
            reason=reason,
        )


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


async def test_a_dynamic_pool_scales_from_zero_within_one_tick_of_jobs_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    rig = Rig(dynamic(max=10))
    assert (await rig.tick(0.0))["builders"].plan.provision == 0
    rig.scheduler.demand = [waiting(3, "builders")]

    ticks = await rig.tick(1.0)

    assert ticks["builders"].plan.provision == 3
    assert ticks["builders"].plan.reason is ScaleReason.WAITING_JOBS
    assert len(rig.autoscaler.provisioning("builders")) == 3
    await rig.autoscaler.settle()
    workers = rig.scheduler.pool_records("builders", WorkerStatus.AVAILABLE)
    assert len(workers) == 3
    assert all(
        r.worker_id.startswith("builders-") and len(r.worker_id) == len("builders-") + 8 for r in workers
    )
    assert all(r.labels["hodei.owner"] == "hodei" for r in workers)
    assert sorted(rig.provider.running) == sorted(r.worker_id for r in workers)
    [scale] = events(caplog, "pool.scale")
    assert (scale.pool, scale.desired, scale.provision, scale.retire, scale.reason) == (  # type: ignore[attr-defined]
        "builders",
        3,
        3,
        "",
        "waiting_jobs",
    )
    assert rig.scale_events("builders", "up", "waiting_jobs") == 3
    assert metric(rig.metrics.registry, "hodei_pool_desired_workers", pool="builders") == 3


async def test_the_workers_provisioned_carry_the_pools_template() -> None:
    spec = dynamic(max=2, min=1)
    spec = replace(spec, template=replace(spec.template, cpu_cores=3, memory_mb=1024, labels={"os": "linux"}))
    rig = Rig(spec)
    await rig.settled_tick(0.0)
    [worker] = rig.provider.running.values()
    assert (worker.config.cpu_cores, worker.config.memory_mb, worker.config.pool) == (3, 1024, "builders")
    assert worker.config.labels == {"os": "linux", "hodei.owner": "hodei"}


async def test_a_pool_never_exceeds_max_under_200_waiting_jobs_and_a_provider_that_fails_every_third() -> (
    None
):
    class Flaky(MockWorkerProvider):
        """Takes a random time; every third provision fails. Watches how many exist or are being made."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.making = 0
            self.peak = 0
            self.random = random.Random(19)

        async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
            self.calls += 1
            number = self.calls
            self.making += 1
            self.peak = max(self.peak, self.making + len(self.running))
            try:
                await asyncio.sleep(self.random.uniform(0.0, 0.02))
                if number % 3 == 0:
                    raise ProviderError("every third provision fails")
                return await super().provision(worker_id, config)
            finally:
                self.making -= 1

    provider = Flaky()
    rig = Rig(
        dynamic(max=20, max_provisioning=50), provider=provider, backoff_initial=0.001, backoff_max=0.001
    )
    rig.scheduler.demand = [waiting(1, "builders") for _ in range(200)]
    for second in range(200):
        ticks = await rig.tick(float(second))
        assert len(provider.running.keys() | rig.autoscaler.provisioning("builders")) <= 20
        assert ticks["builders"].plan.desired == 20
        if len(rig.scheduler.pool_records("builders", WorkerStatus.AVAILABLE)) == 20:
            break
        in_flight = [
            t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("hodei-provision-builders-")
        ]
        if in_flight:  # let one provision end before the next tick, whichever it is
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
    assert len(rig.scheduler.pool_records("builders", WorkerStatus.AVAILABLE)) == 20
    assert provider.peak == 20
    assert provider.calls - provider.calls // 3 == 20  # every worker provisioned was kept: none beyond max
    assert len(provider.running) == 20
    assert (
        metric(rig.metrics.registry, "hodei_pool_provision_failures_total", pool="builders")
        == provider.calls // 3
    )


@pytest.mark.parametrize("least", [0, 1])
async def test_a_dynamic_pool_scales_down_after_idle_timeout_and_never_below_min(least: int) -> None:
    rig = Rig(dynamic(min=least, max=5, idle_timeout=10.0, scale_down_cooldown=0.0))
    rig.scheduler.demand = [waiting(3, "builders")]
    await rig.settled_tick(0.0)
    rig.scheduler.demand = []

    assert (await rig.settled_tick(1.0))["builders"].plan.retire == ()  # first seen idle now
    assert (await rig.settled_tick(10.5))["builders"].plan.retire == ()  # idle 9.5 s only
    ticks = await rig.settled_tick(11.0)

    assert len(ticks["builders"].plan.retire) == 3 - least
    assert ticks["builders"].plan.reason is ScaleReason.IDLE
    assert len(rig.scheduler.pool_records("builders")) == least
    assert len(rig.provider.running) == least
    assert sorted(rig.provider.destroyed) == sorted(ticks["builders"].plan.retire)
    assert (await rig.settled_tick(1000.0))["builders"].plan.retire == ()
    assert len(rig.scheduler.pool_records("builders")) == least
    assert rig.scale_events("builders", "down", "idle") == 3 - least


async def test_a_worker_that_ran_a_job_between_two_ticks_starts_its_idle_time_again() -> None:
    rig = Rig(dynamic(min=0, max=5, idle_timeout=10.0, scale_down_cooldown=0.0))
    rig.scheduler.demand = [waiting(1, "builders")]
    await rig.settled_tick(0.0)
    rig.scheduler.demand = []
    await rig.settled_tick(1.0)
    [worker] = rig.scheduler.pool_records("builders")
    rig.scheduler.set_status(worker.worker_id, WorkerStatus.AVAILABLE, use_count=1)  # a job came and went

    assert (await rig.settled_tick(11.0))["builders"].plan.retire == ()
    assert (await rig.settled_tick(21.0))["builders"].plan.retire == (worker.worker_id,)


async def test_a_static_pool_is_provisioned_at_once_and_replaces_a_lost_worker_within_one_tick() -> None:
    rig = Rig(static(size=3))
    ticks = await rig.settled_tick(0.0)
    assert (ticks["fixed"].plan.provision, ticks["fixed"].plan.reason) == (3, ScaleReason.SIZE)
    lost = sorted(rig.provider.running)[0]
    rig.scheduler.set_status(lost, WorkerStatus.LOST)
    del rig.provider.running[lost]  # its machine died with it

    ticks = await rig.settled_tick(1.0)

    assert ticks["fixed"].written_off == (lost,)
    assert ticks["fixed"].plan.provision == 1
    assert lost not in rig.scheduler.records
    assert len(rig.scheduler.pool_records("fixed", WorkerStatus.AVAILABLE)) == 3
    assert len(rig.provider.running) == 3
    assert rig.scale_events("fixed", "down", "lost") == 1


async def test_a_registered_worker_whose_machine_vanished_is_written_off_and_replaced_in_the_same_tick() -> (
    None
):
    rig = Rig(static(size=2))
    await rig.settled_tick(0.0)
    gone = sorted(rig.provider.running)[0]
    del rig.provider.running[gone]  # the process died; its record is still AVAILABLE

    ticks = await rig.settled_tick(1.0)

    assert (ticks["fixed"].written_off, ticks["fixed"].plan.provision) == ((gone,), 1)
    assert gone not in rig.scheduler.records
    assert len(rig.scheduler.pool_records("fixed", WorkerStatus.AVAILABLE)) == 2


async def test_a_lost_worker_whose_machine_is_still_there_counts_until_it_is_destroyed() -> None:
    rig = Rig(static(size=2))
    await rig.settled_tick(0.0)
    lost = sorted(rig.provider.running)[0]
    rig.scheduler.set_status(lost, WorkerStatus.LOST)

    ticks = await rig.tick(1.0)
    assert ticks["fixed"].written_off == (lost,)
    assert ticks["fixed"].observation.leaving == 1
    assert ticks["fixed"].plan.provision == 0  # two machines exist: at max
    assert rig.autoscaler.retiring == {lost}
    ticks = await rig.tick(1.5)  # the retirement is still in flight
    assert (ticks["fixed"].written_off, ticks["fixed"].observation.leaving) == ((), 1)
    await rig.autoscaler.settle()
    assert lost in rig.provider.destroyed

    ticks = await rig.settled_tick(2.0)
    assert ticks["fixed"].plan.provision == 1
    assert len(rig.provider.running) == 2


async def test_provisioning_failures_back_off_exponentially_and_a_success_resets_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    rig = Rig(dynamic(max=3), backoff_initial=1.0, backoff_max=3.0)
    rig.provider.fail_provision(3, ProviderError("no capacity \x1b[31m"))
    rig.scheduler.demand = [waiting(1, "builders")]

    plans = {}
    for at in (0.0, 0.5, 1.0, 2.5, 3.0, 5.5, 6.0, 6.1):
        plans[at] = (await rig.settled_tick(at))["builders"].plan
    assert {at: (p.provision, p.reason) for at, p in plans.items()} == {
        0.0: (1, ScaleReason.WAITING_JOBS),  # fails: 1 s back-off
        0.5: (0, ScaleReason.BACKOFF),
        1.0: (1, ScaleReason.WAITING_JOBS),  # fails: 2 s
        2.5: (0, ScaleReason.BACKOFF),
        3.0: (1, ScaleReason.WAITING_JOBS),  # fails: 4 s, capped at 3 s
        5.5: (0, ScaleReason.BACKOFF),
        6.0: (1, ScaleReason.WAITING_JOBS),  # succeeds
        6.1: (0, ScaleReason.STEADY),
    }
    assert rig.autoscaler._history["builders"].failures == []
    assert metric(rig.metrics.registry, "hodei_pool_provision_failures_total", pool="builders") == 3
    failed = events(caplog, "pool.provision_failed")
    assert [r.failures for r in failed] == [1, 2, 3]  # type: ignore[attr-defined]
    assert failed[0].pool == "builders"  # type: ignore[attr-defined]
    assert "\x1b" not in failed[0].error and "\\x1b" in failed[0].error  # type: ignore[attr-defined]


async def test_a_provision_slower_than_the_pools_provision_timeout_fails_and_leaves_nothing() -> None:
    rig = Rig(dynamic(max=1, provision_timeout=0.01), provider=MockWorkerProvider(delay=30.0))
    rig.scheduler.demand = [waiting(1, "builders")]
    await rig.tick(0.0)
    [worker_id] = rig.autoscaler.provisioning("builders")
    await rig.autoscaler.settle()
    assert rig.provider.running == {}
    assert rig.scheduler.records == {}
    assert metric(rig.metrics.registry, "hodei_pool_provision_failures_total", pool="builders") == 1
    assert (await rig.tick(0.5))["builders"].plan.reason is ScaleReason.BACKOFF
    assert worker_id.startswith("builders-")


async def test_idle_workers_that_ran_max_use_count_jobs_are_recycled_and_replaced() -> None:
    rig = Rig(dynamic(min=2, max=2, max_use_count=3))
    await rig.settled_tick(0.0)
    worn, fresh = sorted(rig.provider.running)
    rig.scheduler.set_status(worn, WorkerStatus.AVAILABLE, use_count=3)
    rig.scheduler.set_status(fresh, WorkerStatus.AVAILABLE, use_count=2)

    ticks = await rig.settled_tick(1.0)
    assert ticks["builders"].recycled == (worn,)
    assert ticks["builders"].plan.provision == 0  # the worn one is still there: at max
    assert worn in rig.provider.destroyed and worn not in rig.scheduler.records

    ticks = await rig.settled_tick(2.0)
    assert (ticks["builders"].plan.provision, ticks["builders"].plan.reason) == (1, ScaleReason.MIN)
    assert len(rig.scheduler.pool_records("builders", WorkerStatus.AVAILABLE)) == 2
    assert fresh in rig.provider.running
    assert rig.scale_events("builders", "down", "recycle") == 1


async def test_a_shape_that_two_pools_fit_scales_only_the_first_in_name_order() -> None:
    rig = Rig(dynamic("beta", max=5), dynamic("alpha", max=5))
    rig.scheduler.demand = [waiting(2, "beta", "alpha"), waiting(1, "beta"), waiting(4, "gone")]

    ticks = await rig.settled_tick(0.0)

    assert ticks["alpha"].observation.waiting == 2
    assert ticks["beta"].observation.waiting == 1
    assert len(rig.scheduler.pool_records("alpha")) == 2
    assert len(rig.scheduler.pool_records("beta")) == 1


async def test_busy_draining_and_unregistered_machines_count_toward_max() -> None:
    rig = Rig(dynamic(max=4, scale_down_cooldown=0.0), page_size=1)
    rig.scheduler.demand = [waiting(3, "builders")]
    await rig.settled_tick(0.0)
    busy, draining, _ = sorted(rig.provider.running)
    rig.scheduler.set_status(busy, WorkerStatus.BUSY)
    rig.scheduler.set_status(draining, WorkerStatus.DRAINING)
    # A machine of this pool that has not registered yet, and machines that are not this control plane's.
    await rig.provider.provision("builders-unregistered", dynamic().worker_config)
    rig.provider.running["theirs"] = DynamicWorker(
        "theirs", WorkerType.PROCESS, replace(dynamic().worker_config, labels={"hodei.owner": "another"})
    )
    rig.scheduler.demand = [waiting(5, "builders")]

    observation = (await rig.tick(1.0))["builders"].observation

    assert (observation.busy, len(observation.idle), observation.leaving, observation.provisioning) == (
        1,
        1,
        1,
        1,
    )
    assert rig.autoscaler.provisioning("builders") == frozenset()  # 4 exist: at max
    assert rig.scheduler.listed_pages >= 3  # read a page of one at a time


async def test_a_pool_removed_from_the_scheduler_is_no_longer_sized_nor_shown() -> None:
    rig = Rig(dynamic("alpha", max=2), dynamic("beta", max=2))
    await rig.settled_tick(0.0)
    assert metric(rig.metrics.registry, "hodei_pool_desired_workers", pool="beta") == 0
    del rig.scheduler.specs["beta"]

    assert list(await rig.settled_tick(1.0)) == ["alpha"]

    assert rig.metrics.registry.get_sample_value("hodei_pool_desired_workers", {"pool": "beta"}) is None
    assert metric(rig.metrics.registry, "hodei_pool_desired_workers", pool="alpha") == 0


async def test_pools_of_another_provider_are_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hodei.management")

    class DockerProvider(MockWorkerProvider):
        worker_type = WorkerType.DOCKER

    rig = Rig(dynamic(min=1, max=2), provider=DockerProvider())
    assert await rig.settled_tick(0.0) == {}
    assert await rig.settled_tick(1.0) == {}
    assert rig.provider.provisioned == []
    [skipped] = events(caplog, "pool.skipped")
    assert (skipped.pool, skipped.provider) == ("builders", "process")  # type: ignore[attr-defined]


async def test_a_job_bound_while_a_tick_reads_is_never_counted_twice() -> None:
    """The job waits when the tick begins and is bound to the idle worker while the registry is read: the tick
    sees it busy or waiting, never both (it would provision a machine nobody waits for)."""
    rig = Rig(dynamic(max=10))
    rig.scheduler.demand = [waiting(1, "builders")]
    await rig.settled_tick(0.0)
    [worker_id] = rig.provider.provisioned  # the job's worker, idle now

    def bound_meanwhile() -> None:
        rig.scheduler.set_status(worker_id, WorkerStatus.BUSY, use_count=1)
        rig.scheduler.demand = []
        rig.scheduler.before_listing = None

    rig.scheduler.before_listing = bound_meanwhile
    tick = (await rig.settled_tick(1.0))["builders"]

    assert (tick.observation.busy, tick.observation.waiting, tick.plan.provision) == (1, 0, 0)
    assert rig.provider.provisioned == [worker_id]  # no second machine


async def test_an_idle_worker_bound_to_a_job_before_its_retirement_began_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    rig = Rig(dynamic(min=0, max=1, idle_timeout=0.0, scale_down_cooldown=0.0))
    rig.scheduler.demand = [waiting(1, "builders")]
    await rig.settled_tick(0.0)
    rig.scheduler.demand = []

    [worker_id] = (await rig.tick(1.0))["builders"].plan.retire
    rig.scheduler.set_status(worker_id, WorkerStatus.BUSY, use_count=1)  # acquired before the drain
    await rig.autoscaler.settle()

    assert worker_id in rig.provider.running
    assert rig.scheduler.records[worker_id].status is WorkerStatus.BUSY
    [skipped] = events(caplog, "pool.retire_skipped")
    assert (skipped.worker_id, skipped.reason) == (worker_id, "busy")  # type: ignore[attr-defined]
    assert rig.scheduler.records[worker_id].status is WorkerStatus.BUSY  # the drain was refused: unchanged


async def test_a_retirement_that_fails_is_logged_and_tried_again_at_a_later_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    rig = Rig(dynamic(min=0, max=1, idle_timeout=0.0, scale_down_cooldown=0.0))
    rig.scheduler.demand = [waiting(1, "builders")]
    await rig.settled_tick(0.0)
    rig.scheduler.demand = []
    rig.scheduler.refuse_drain.append(scheduler_error_for(ErrorCode.PERMISSION_DENIED, "not yours"))

    [worker_id] = (await rig.settled_tick(1.0))["builders"].plan.retire
    [failed] = events(caplog, "pool.retire_failed")
    assert (failed.pool, failed.worker_id, failed.reason) == ("builders", worker_id, "idle")  # type: ignore[attr-defined]
    assert worker_id in rig.provider.running

    assert (await rig.settled_tick(2.0))["builders"].plan.retire == (worker_id,)
    assert rig.provider.running == {}


async def test_the_loop_survives_a_failed_tick_and_stops_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    rig = Rig(dynamic(min=2, max=2), interval=0.01)
    rig.scheduler.fail_list_pools += [
        RuntimeError("a bug in one tick"),
        scheduler_error_for(ErrorCode.UNAVAILABLE, "the scheduler is away"),
    ]

    async with rig.autoscaler as autoscaler:
        with pytest.raises(RuntimeError, match="started already"):
            autoscaler.start()

        async def two_workers() -> bool:
            return len(rig.scheduler.pool_records("builders", WorkerStatus.AVAILABLE)) == 2

        await wait_for(two_workers)
    await rig.autoscaler.stop()  # idempotent
    [bug, away] = events(caplog, "pools.tick_failed")
    assert bug.exc_info is not None and "a bug in one tick" in str(bug.exc_info[1])
    assert (away.levelname, away.exc_info) == ("WARNING", None)
    assert "the scheduler is away" in away.error  # type: ignore[attr-defined]


async def test_more_acquires_waiting_wake_the_loop_before_its_interval_and_fewer_do_not() -> None:
    rig = Rig(dynamic(max=10), provider=MockWorkerProvider(delay=30.0), interval=3600.0, wake_gap=0.0)
    rig.scheduler.demand = [waiting(3, "builders")]
    async with rig.autoscaler as autoscaler:

        async def provisioning(count: int) -> bool:
            return len(autoscaler.provisioning("builders")) == count

        await wait_for(lambda: provisioning(3))  # the first tick: three wait, three are being made
        assert rig.scheduler.listed_pools == 1
        rig.scheduler.tell_demand(waiting(2, "builders"))  # fewer wait: nothing to add, no tick

        async def heard() -> bool:
            return rig.scheduler.events.empty()

        await wait_for(heard)
        for _ in range(5):  # the listener had its turn: a wake-up would have begun a tick by now
            await asyncio.sleep(0)
        assert rig.scheduler.listed_pools == 1
        rig.scheduler.tell_demand(waiting(4, "builders"))  # more wait than the last tick saw: a tick now
        await wait_for(lambda: provisioning(4))
        assert rig.scheduler.listed_pools == 2
        assert rig.scheduler.watches == 1
        assert rig.scheduler.watched_kinds == {WorkerEventKind.DEMAND}  # nothing else is sent its way


async def test_the_loop_watches_again_after_its_demand_stream_breaks_and_stops_while_watching(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(dynamic(max=10), provider=MockWorkerProvider(delay=30.0), interval=0.01, wake_gap=0.0)
    async with rig.autoscaler as autoscaler:
        rig.scheduler.events.put_nowait(scheduler_error_for(ErrorCode.UNAVAILABLE, "the stream broke"))
        rig.scheduler.events.put_nowait(RuntimeError("a bug in the watch"))

        async def watching_again() -> bool:
            return rig.scheduler.watches == 3

        await wait_for(watching_again)
        rig.scheduler.tell_demand(waiting(1, "builders"))

        async def provisioning() -> bool:
            return len(autoscaler.provisioning("builders")) == 1

        await wait_for(provisioning)
    assert autoscaler.provisioning("builders") == frozenset()  # stopped: the provision was cancelled
    [bug] = events(caplog, "pools.demand_watch_failed")
    assert bug.exc_info is not None and "a bug in the watch" in str(bug.exc_info[1])


async def test_a_wake_up_at_the_moment_of_stop_does_not_keep_the_loop_running() -> None:
    """``stop()`` cancels the loop while the wake-up it waits for is being set: the loop still ends (Python
    3.11's ``asyncio.wait_for`` returned the wake-up and lost the cancellation; the stop then waited forever)."""
    rig = Rig(dynamic(max=10), interval=3600.0, wake_gap=0.0)
    async with rig.autoscaler:

        async def ticked() -> bool:
            return rig.scheduler.listed_pools == 1

        await wait_for(ticked)
        rig.autoscaler._wake.set()  # the wake-up and the stop in the same turn of the loop
        await asyncio.wait_for(rig.autoscaler.stop(), 5)
    assert rig.scheduler.listed_pools == 1


async def test_stopping_cancels_the_provisions_in_flight_and_leaves_no_machine() -> None:
    rig = Rig(dynamic(min=2, max=2), provider=MockWorkerProvider(delay=30.0))
    await rig.tick(0.0)
    assert len(rig.autoscaler.provisioning("builders")) == 2
    await rig.autoscaler.stop()
    assert rig.autoscaler.provisioning("builders") == frozenset()
    assert rig.provider.running == {}


def test_an_autoscaler_needs_a_registry_to_read() -> None:
    service = WorkerManagementService(MockWorkerProvider())
    with pytest.raises(ValueError, match="reads the registry"):
        PoolAutoscaler(service, PoolScheduler())
    assert PoolAutoscaler(service, PoolScheduler(), registry=PoolScheduler()).registry is not None


def test_the_autoscaler_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"interval must be > 0.*backoff_max must be >= backoff_initial"):
        PoolAutoscalerConfig(interval=0, backoff_initial=2.0, backoff_max=1.0)


POOLS = """\
[pools.builders]
kind = "dynamic"
provider = "process"
max = 4
"""


async def test_the_pools_file_is_applied_at_start_and_again_only_when_its_content_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    scheduler = PoolScheduler()
    pools_file = PoolsFile(path, scheduler)

    applied = await pools_file.sync()
    assert [p.spec.name for p in applied or []] == ["builders"]
    assert await pools_file.sync() is None
    path.write_text(POOLS)  # rewritten, the same content
    assert await pools_file.sync() is None
    path.write_text(POOLS.replace("max = 4", "max = 5"))  # the same size, maybe the same modification time
    assert await pools_file.sync() is not None
    assert scheduler.specs["builders"].max == 5
    path.write_text(POOLS.replace("max = 4", "max = 6"))
    os.utime(path, (1_000_000, 1_000_000))  # an old modification time: read once, then only stat
    assert await pools_file.sync() is not None
    path.write_text(POOLS.replace("max = 4", "max = 7"))
    os.utime(path, (1_000_000, 1_000_000))  # the same size, inode and old time: it is not read again
    assert await pools_file.sync() is None
    assert scheduler.specs["builders"].max == 6
    assert scheduler.specs["builders"].max == 6
    assert len(scheduler.applied) == 3
    assert [(r.file, r.pools) for r in events(caplog, "pools.applied")] == [  # type: ignore[attr-defined]
        (str(path), "builders")
    ] * 3


async def test_an_invalid_pools_file_is_refused_with_its_line_and_field_and_the_pools_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    scheduler = PoolScheduler()
    pools_file = PoolsFile(path, scheduler)
    await pools_file.sync()

    path.write_text(POOLS + "min = 9\n")
    assert await pools_file.sync() is None
    assert await pools_file.sync() is None  # refused once, not again each tick
    path.write_text(POOLS + "min = 9\n\n")
    assert await pools_file.sync() is None

    assert scheduler.specs["builders"].max == 4
    refused = events(caplog, "pools.file_refused")
    assert len(refused) == 1  # the same refusal, said once
    assert (refused[0].file, refused[0].line, refused[0].field) == (str(path), 5, "pools.builders.min")  # type: ignore[attr-defined]


async def test_a_pools_file_the_scheduler_refuses_is_not_sent_again_until_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    scheduler = PoolScheduler()
    scheduler.refuse_apply = [
        scheduler_error_for(ErrorCode.UNAVAILABLE, "down"),
        scheduler_error_for(ErrorCode.INVALID_ARGUMENT, "pools.toml:3: provider: not here"),
    ]
    pools_file = PoolsFile(path, scheduler)

    assert await pools_file.sync() is None  # unavailable: tried again
    assert await pools_file.sync() is None  # refused
    assert await pools_file.sync() is None
    assert scheduler.applied == []
    [failed] = events(caplog, "pools.apply_failed")
    assert "down" in failed.error  # type: ignore[attr-defined]
    [refused] = events(caplog, "pools.file_refused")
    assert "provider: not here" in refused.error  # type: ignore[attr-defined]


async def test_a_missing_pools_file_is_refused_once_and_applied_when_it_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "hodei.management")
    path = tmp_path / "pools.toml"
    scheduler = PoolScheduler()
    pools_file = PoolsFile(path, scheduler)
    assert await pools_file.sync() is None
    assert await pools_file.sync() is None
    [refused] = events(caplog, "pools.file_refused")
    assert (refused.file, refused.field) == (str(path), "file")  # type: ignore[attr-defined]
    path.write_bytes(b"\xff")
    assert await pools_file.sync() is None
    path.write_text(POOLS)
    assert await pools_file.sync() is not None


async def test_every_tick_syncs_the_pools_file_first(tmp_path: Path) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(POOLS.replace("max = 4", "min = 1\nmax = 4"))
    rig = Rig()
    rig.autoscaler.pools_file = PoolsFile(path, rig.scheduler)
    ticks = await rig.settled_tick(0.0)
    assert ticks["builders"].plan.provision == 1
    assert len(rig.provider.running) == 1


async def test_every_scale_decision_is_reported_to_the_scheduler_and_a_refused_report_holds_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(dynamic(min=0, max=5, idle_timeout=10.0, scale_down_cooldown=0.0))
    rig.scheduler.demand = [waiting(3, "builders")]
    await rig.settled_tick(0.0)
    rig.scheduler.demand = []
    await rig.settled_tick(1.0)  # first seen idle
    rig.scheduler.refuse_reports.append(SchedulerUnavailable("the scheduler restarts"))
    await rig.settled_tick(12.0)  # idle past the timeout: all three retired, the report refused

    assert [(e.pool, e.direction, e.reason, e.desired, e.count) for e in rig.scheduler.scale_events] == [
        ("builders", "up", "waiting_jobs", 3, 3)
    ]
    assert all(e.time is not None for e in rig.scheduler.scale_events)
    assert rig.scheduler.pool_records("builders") == []  # the retirement went on all the same
    [failed] = events(caplog, "pool.scale_report_failed")
    assert failed.__dict__["pool"] == "builders" and "the scheduler restarts" in failed.__dict__["error"]
