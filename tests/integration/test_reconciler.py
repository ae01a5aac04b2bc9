"""The reconciler against a real scheduler over gRPC, with the in-memory provider (the Docker one is in
test_docker_provider.py). The clock is the test's, so that "past the grace" is exact, not a matter of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    ProviderError,
    SchedulerUnavailable,
    WorkerManagementService,
    WorkerRegistrationAdapter,
    WorkerType,
)
from hodei._ownership import DEFAULT_OWNER, owned
from hodei.agent import AgentConfig, WorkerAgent
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.management import Reconciler, ReconcilerConfig
from hodei.ports import WorkerFilter
from hodei.testing import EmbeddedScheduler, MockWorkerProvider
from hodei.transport._client import SchedulerPortClient
from tests.helpers import metric, wait_for, wait_until

MOCK = DynamicWorkerConfig(worker_type=WorkerType.MOCK, cpu_cores=1, memory_mb=512)
OURS = owned(MOCK, DEFAULT_OWNER)  # a registration of a worker this control plane provisioned
SCOPE = WorkerFilter(worker_type=WorkerType.MOCK)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(hodei_scheduler_client: SchedulerPortClient) -> SchedulerPortClient:
    return hodei_scheduler_client


@pytest.fixture
async def events(client: SchedulerPortClient) -> AsyncIterator[list[WorkerEvent]]:
    """Every event the scheduler publishes from the start of the test, as a watcher sees it."""
    seen: list[WorkerEvent] = []
    ready = asyncio.Event()

    async def watch() -> None:
        stream = client.watch_workers(include_snapshot=True)
        ready.set()
        async for event in stream:
            seen.append(event)

    task = asyncio.create_task(watch())
    await ready.wait()
    # The watch is open once the scheduler counts the watcher.
    yield seen
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _watching(scheduler: EmbeddedScheduler) -> None:
    await wait_until(lambda: scheduler.scheduler.events.watchers == 1)


def _reconciler(
    provider: MockWorkerProvider, client: SchedulerPortClient, clock: Clock, **config: object
) -> Reconciler:
    options: dict[str, object] = {"grace": 30.0, "scope": SCOPE} | config
    return Reconciler(provider, client, config=ReconcilerConfig(**options), clock=clock)  # type: ignore[arg-type]


async def test_an_orphan_is_destroyed_only_after_the_grace_and_watchers_hear_of_it(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, events: list[WorkerEvent]
) -> None:
    await _watching(scheduler)
    provider, clock = MockWorkerProvider(), Clock()
    await provider.provision("orphan-1", MOCK)
    reconciler = _reconciler(provider, client, clock)

    first = await reconciler.reconcile_once()
    assert (first.orphans_destroyed, first.suspects) == ([], ["orphan-1"])
    clock.now += 29.9
    assert (await reconciler.reconcile_once()).orphans_destroyed == []
    assert provider.destroyed == []
    clock.now += 0.1
    report = await reconciler.reconcile_once()

    assert (report.orphans_destroyed, report.ghosts_unregistered, report.suspects) == (["orphan-1"], [], [])
    assert provider.destroyed == ["orphan-1"]
    assert (
        metric(reconciler.metrics.registry, "hodei_reconciler_actions_total", action="orphan_destroyed") == 1
    )
    assert metric(reconciler.metrics.registry, "hodei_reconciler_passes_total", result="ok") == 3
    await wait_until(lambda: any(e.kind is WorkerEventKind.ORPHAN_REMOVED for e in events))
    (event,) = [e for e in events if e.kind is WorkerEventKind.ORPHAN_REMOVED]
    assert event.worker_id == "orphan-1"
    assert event.record is None
    assert (
        event.reason == "reconciler: the provider's machine had no registration for 30.0s (orphan); destroyed"
    )
    assert await scheduler.workers() == []


async def test_a_ghost_is_unregistered_after_the_grace_with_the_reason_in_the_event(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, events: list[WorkerEvent]
) -> None:
    await _watching(scheduler)
    await scheduler.add_worker(DynamicWorker("ghost-1", WorkerType.MOCK, OURS))
    provider, clock = MockWorkerProvider(), Clock()
    reconciler = _reconciler(provider, client, clock, grace=5.0)

    assert (await reconciler.reconcile_once()).suspects == ["ghost-1"]
    clock.now += 5.0
    report = await reconciler.reconcile_once()

    assert (report.ghosts_unregistered, report.orphans_destroyed) == (["ghost-1"], [])
    assert await scheduler.workers() == []
    assert (
        metric(reconciler.metrics.registry, "hodei_reconciler_actions_total", action="ghost_unregistered")
        == 1
    )
    await wait_until(lambda: any(e.kind is WorkerEventKind.UNREGISTERED for e in events))
    (event,) = [e for e in events if e.kind is WorkerEventKind.UNREGISTERED]
    assert (event.worker_id, event.reason) == (
        "ghost-1",
        "reconciler: no machine behind this registration for 5.0s (ghost)",
    )


async def test_matched_workers_and_registrations_outside_the_scope_are_left_alone(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    provider, clock = MockWorkerProvider(), Clock()
    await provider.provision("both-1", MOCK)
    await scheduler.add_worker(DynamicWorker("both-1", WorkerType.MOCK, OURS))
    await scheduler.add_worker(DynamicWorker("static-1", WorkerType.STATIC))
    reconciler = _reconciler(provider, client, clock, grace=0.0)

    report = await reconciler.reconcile_once()

    assert (report.orphans_destroyed, report.ghosts_unregistered, report.suspects) == ([], [], [])
    assert sorted(r.worker_id for r in await scheduler.workers()) == ["both-1", "static-1"]
    assert provider.orphans == ["both-1"]


async def test_a_mismatch_that_heals_within_the_grace_is_forgotten(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    provider, clock = MockWorkerProvider(), Clock()
    await provider.provision("late-1", MOCK)
    reconciler = _reconciler(provider, client, clock, grace=10.0)
    assert (await reconciler.reconcile_once()).suspects == ["late-1"]
    await scheduler.add_worker(DynamicWorker("late-1", WorkerType.MOCK, OURS))  # registered at last
    clock.now += 9.0
    assert (await reconciler.reconcile_once()).suspects == []
    await scheduler.registry.unregister("late-1")  # a mismatch again: its grace starts from here, not before
    clock.now += 9.0
    report = await reconciler.reconcile_once()
    assert (report.orphans_destroyed, report.suspects) == ([], ["late-1"])
    clock.now += 10.0
    assert (await reconciler.reconcile_once()).orphans_destroyed == ["late-1"]


async def test_a_failed_destroy_is_reported_and_tried_again_on_the_next_pass(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    provider, clock = MockWorkerProvider(), Clock()
    await provider.provision("stuck-1", MOCK)
    provider.fail_destroy(1, ProviderError("engine said no", worker_id="stuck-1"))
    reconciler = _reconciler(provider, client, clock, grace=0.0)

    report = await reconciler.reconcile_once()
    assert report.orphans_destroyed == []
    assert [(i, str(e)) for i, e in report.failures.items()] == [("stuck-1", "engine said no")]
    assert provider.orphans == ["stuck-1"]

    again = await reconciler.reconcile_once()
    assert (again.orphans_destroyed, again.failures) == (["stuck-1"], {})
    assert provider.orphans == []


async def test_a_pass_that_cannot_read_the_registry_changes_nothing_and_says_so(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    provider, clock = MockWorkerProvider(), Clock()
    await provider.provision("orphan-2", MOCK)
    reconciler = _reconciler(provider, client, clock, grace=0.0, call_timeout=2.0)
    await scheduler.stop()

    with pytest.raises(SchedulerUnavailable):
        await reconciler.reconcile_once()

    assert provider.orphans == ["orphan-2"]
    assert metric(reconciler.metrics.registry, "hodei_reconciler_passes_total", result="failed") == 1
    assert metric(reconciler.metrics.registry, "hodei_reconciler_passes_total", result="ok") == 0


class HeldProvider(MockWorkerProvider):
    """Creates the machine at once, then holds ``provision`` until released (a slow start)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def provision(self, worker_id: str, config: DynamicWorkerConfig) -> DynamicWorker:
        worker = await super().provision(worker_id, config)
        await self.release.wait()
        return worker


async def test_workers_being_provisioned_are_neither_orphans_nor_ghosts(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    """A provisioning that takes longer than the grace (a slow image pull) is not the reconciler's business."""
    provider = HeldProvider()
    service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(client))
    reconciler = service.reconciler(ReconcilerConfig(grace=0.0, scope=SCOPE))

    provisioning = asyncio.create_task(service.provision_worker(MOCK, worker_id="slow-1"))
    await wait_until(lambda: provider.orphans == ["slow-1"])  # the machine runs, unregistered
    assert service.in_flight == {"slow-1"}
    assert (await reconciler.reconcile_once()).suspects == []
    provider.release.set()
    await provisioning
    assert service.in_flight == frozenset()
    assert (await reconciler.reconcile_once()).suspects == []
    assert provider.destroyed == []
    assert [r.worker_id for r in await scheduler.workers()] == ["slow-1"]


async def test_reconciling_runs_passes_in_the_background_until_the_block_ends(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    provider = MockWorkerProvider()
    service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(client))
    await provider.provision("orphan-3", MOCK)
    await scheduler.add_worker(DynamicWorker("ghost-3", WorkerType.MOCK, OURS))

    async def ghost_gone() -> bool:
        return await scheduler.get_worker("ghost-3") is None

    async with service.reconciling(ReconcilerConfig(interval=0.02, grace=0.0, scope=SCOPE)) as reconciler:
        await wait_until(lambda: provider.destroyed == ["orphan-3"])
        await wait_for(ghost_gone)
    # The block's end cancelled and awaited the reconciler's task: no pass can run any more.
    assert [task for task in asyncio.all_tasks() if task.get_name() == "hodei-reconciler"] == []
    assert metric(reconciler.metrics.registry, "hodei_reconciler_passes_total", result="ok") >= 1


async def test_the_scope_defaults_to_the_providers_worker_type_and_is_required_without_one(
    client: SchedulerPortClient,
) -> None:
    class Typed(MockWorkerProvider):
        worker_type = WorkerType.DOCKER

    reconciler = Reconciler(Typed(), client, clock=Clock())
    assert reconciler.scope == WorkerFilter(worker_type=WorkerType.DOCKER, labels={"hodei.owner": "hodei"})
    with pytest.raises(
        ValueError, match=r"^MockWorkerProvider has no worker_type: give ReconcilerConfig\.scope"
    ):
        Reconciler(MockWorkerProvider(), client)


@pytest.mark.parametrize(
    ("options", "field"),
    [({"interval": 0}, "interval"), ({"grace": -1}, "grace"), ({"page_size": 0}, "page_size")],
)
def test_bad_reconciler_settings_are_refused_by_name(options: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ReconcilerConfig(**options)  # type: ignore[arg-type]


# --- it acts only on what its own control plane provisioned -------------------------------------------------


async def test_a_static_worker_and_another_control_planes_worker_are_untouched_after_three_graces(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    """Same worker type, same engine: only the owner id tells them apart. Ours are repaired meanwhile."""
    ours, clock = MockWorkerProvider(), Clock()
    theirs = MockWorkerProvider(owner="cp-2")
    theirs.running = ours.running  # one engine, two control planes: each sees every machine on it
    # Another control plane's worker, machine and registration, and one of its machines not yet registered.
    await client.register_worker(await theirs.provision("cp2-1", MOCK), timeout=5)
    await theirs.provision("cp2-starting", MOCK)
    # A static worker (a hand-started agent) of the same type: registered, with no owner, no machine of ours.
    await scheduler.add_worker(DynamicWorker("static-1", WorkerType.MOCK, MOCK))
    # And an orphan and a ghost of our own, which the same passes do repair.
    await ours.provision("orphan-1", MOCK)
    await scheduler.add_worker(DynamicWorker("ghost-1", WorkerType.MOCK, OURS))
    reconciler = _reconciler(ours, client, clock, grace=5.0)

    reports = []
    for _ in range(4):  # at 0, 5, 10 and 15 s: three graces
        reports.append(await reconciler.reconcile_once())
        clock.now += 5.0

    assert reports[0].suspects == ["ghost-1", "orphan-1"]
    assert (reports[1].orphans_destroyed, reports[1].ghosts_unregistered) == (["orphan-1"], ["ghost-1"])
    assert [(r.orphans_destroyed, r.ghosts_unregistered, r.suspects) for r in reports[2:]] == [
        ([], [], [])
    ] * 2
    assert sorted(r.worker_id for r in await scheduler.workers()) == ["cp2-1", "static-1"]
    assert sorted(ours.running) == ["cp2-1", "cp2-starting"]
    assert ours.destroyed == ["orphan-1"] and theirs.destroyed == []


async def test_a_hand_started_agent_beside_a_reconciling_control_plane_stays_connected(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    """A real agent of the provider's worker type, started by hand: passes for more than three graces leave it
    registered and connected (before, the first pass past the grace unregistered it, which shut it down)."""
    config = AgentConfig(
        schedulers=(scheduler.target,), worker_id="by-hand-1", worker_type=WorkerType.MOCK, cpu_cores=1
    )
    agent = WorkerAgent(config, random=lambda: 0.0)
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.connected.wait(), 5)
        service = WorkerManagementService(
            MockWorkerProvider(), registration=WorkerRegistrationAdapter(client)
        )
        grace = 0.05
        async with service.reconciling(
            ReconcilerConfig(interval=0.01, grace=grace, scope=SCOPE)
        ) as reconciler:
            started = asyncio.get_running_loop().time()

            def passes() -> float:
                found = reconciler.metrics.registry.get_sample_value(
                    "hodei_reconciler_passes_total", {"result": "ok"}
                )
                return found or 0.0

            # Passes keep coming for three graces and more after the first one saw the agent.
            await wait_until(
                lambda: passes() >= 2 and asyncio.get_running_loop().time() - started > 3 * grace
            )
            seen = passes()
            await wait_until(lambda: passes() >= seen + 2)
        record = await scheduler.get_worker("by-hand-1")
        assert record is not None and record.connected
        assert agent.connected.is_set() and not agent.unregistered and not running.done()
        assert (
            metric(reconciler.metrics.registry, "hodei_reconciler_actions_total", action="ghost_unregistered")
            == 0
        )
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_the_management_service_marks_what_it_provisions_with_its_owner(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient
) -> None:
    provider = MockWorkerProvider(owner="cp-7")
    service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(client))

    worker = await service.provision_worker(MOCK, worker_id="mine-1")
    record = await scheduler.get_worker("mine-1")

    assert service.owner == "cp-7"
    assert dict(worker.config.labels) == {"hodei.owner": "cp-7"}
    assert record is not None and dict(record.labels) == {"hodei.owner": "cp-7"}
    assert service.reconciler(ReconcilerConfig(scope=SCOPE)).scope == WorkerFilter(
        worker_type=WorkerType.MOCK, labels={"hodei.owner": "cp-7"}
    )
