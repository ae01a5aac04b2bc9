"""DockerProvider against a real Docker-API engine: a private ``podman system service`` (hodei._infra.podman),
and containers of the agent image built locally (hodei._infra.agent_image) that really run ``hodei agent`` and
register themselves with a scheduler on the host's loopback (``network_mode=host``).
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest
from rich.console import Console

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    JobOutcome,
    ProviderError,
    WorkerManagementService,
    WorkerRegistrationAdapter,
    WorkerStatus,
    WorkerType,
)
from hodei._infra.agent_image import (
    AGENT_IMAGE_ENTRYPOINT,
    AGENT_IMAGE_ENV,
    AGENT_IMAGE_STOPSIGNAL,
    AGENT_IMAGE_USER,
)
from hodei._infra.podman import PodmanService
from hodei._ownership import owned
from hodei.bench.containers import run
from hodei.domain import WorkerRecord
from hodei.lifecycle import LivenessConfig, WorkerEvent, WorkerEventKind
from hodei.management import Reconciler, ReconcilerConfig
from hodei.providers import DockerProvider, DockerProviderConfig
from hodei.testing import EmbeddedScheduler, FakeClock
from hodei.transport._client import SchedulerPortClient
from tests.helpers import metric, wait_for, wait_until

# The first test to use the agent image may build it (about a minute on a cold cache).
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
SMALL = DynamicWorkerConfig(
    worker_type=WorkerType.DOCKER, cpu_cores=1, memory_mb=256, labels={"team": "ci", "note": "a,b=c"}
)
FAST_LEASES = LivenessConfig(heartbeat_interval=0.5, lease_ttl=3.0, recovery_window=0.0)


@pytest.fixture
async def scheduler() -> AsyncIterator[EmbeddedScheduler]:
    async with EmbeddedScheduler(liveness=FAST_LEASES) as started:
        yield started


@pytest.fixture
async def client(scheduler: EmbeddedScheduler) -> AsyncIterator[SchedulerPortClient]:
    async with SchedulerPortClient(scheduler.target) as port:
        yield port


def provider_config(
    scheduler: EmbeddedScheduler, image: str, url: str, owner: str, **options: object
) -> DockerProviderConfig:
    settings: dict[str, object] = {
        "schedulers": (scheduler.target,),
        "image": image,
        "base_url": url,
        "owner": owner,
        "stop_grace": 10.0,
    } | options
    return DockerProviderConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
async def provider(
    scheduler: EmbeddedScheduler, agent_image: str, docker_url: str, owner: str, engine: docker.DockerClient
) -> AsyncIterator[DockerProvider]:
    async with DockerProvider(provider_config(scheduler, agent_image, docker_url, owner)) as opened:
        yield opened


async def connected(scheduler: EmbeddedScheduler, worker_id: str) -> WorkerRecord:
    """The worker once its agent's stream is up and it is AVAILABLE (its container registered it)."""
    found: list[WorkerRecord] = []

    async def up() -> bool:
        record = await scheduler.scheduler.get(worker_id)
        if record is not None and record.connected and record.status is WorkerStatus.AVAILABLE:
            found.append(record)
            return True
        return False

    await wait_for(up, timeout=60, interval=0.05)
    return found[0]


async def test_a_container_runs_the_agent_registers_itself_and_decommission_leaves_nothing(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, provider: DockerProvider, owner: str
) -> None:
    service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(client))
    started = time.monotonic()
    worker = await service.provision_worker(SMALL, worker_id="docker-1")
    registered = time.monotonic()
    record = await connected(scheduler, "docker-1")
    available = time.monotonic()
    print(
        f"\ncontainer provision_worker -> REGISTERED {registered - started:.3f} s, "
        f"-> AVAILABLE with its agent connected {available - started:.3f} s"
    )

    assert (worker.worker_id, worker.status) == ("docker-1", WorkerStatus.REGISTERED)
    # The id the control plane chose is the one the agent inside the container says it is.
    assert record.worker_id == "docker-1"
    assert record.worker_type is WorkerType.DOCKER
    assert dict(record.labels) == {"team": "ci", "note": "a,b=c", "hodei.owner": owner}
    assert (record.capabilities.cpu_cores, record.capabilities.memory_mb) == (1, 256)
    assert record.incarnation >= 1  # the agent's hello, after the control plane's registration

    container = await provider.container("docker-1")
    assert container is not None
    attrs = container.attrs
    assert attrs["Config"]["Labels"] == {
        "hodei.worker": "true",
        "hodei.worker.id": "docker-1",
        "hodei.pool": "default",
        "hodei.owner": owner,
    }
    host = attrs["HostConfig"]
    assert (host["NanoCpus"], host["Memory"]) == (1_000_000_000, 256 * MIB)
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["NetworkMode"] == "host"
    environment = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert environment["HODEI_WORKER_ID"] == "docker-1"
    assert environment["HODEI_SCHEDULER"] == scheduler.target
    assert environment["HODEI_WORKER_TYPE"] == "docker"
    assert await provider.status("docker-1") is WorkerStatus.AVAILABLE
    assert [w.worker_id for w in await provider.list_workers()] == ["docker-1"]

    result = await service.decommission_worker("docker-1")

    assert result.was_registered is True
    assert await provider.container("docker-1") is None
    assert await provider.list_workers() == []
    assert await scheduler.get_worker("docker-1") is None


async def test_twenty_containers_provisioned_at_once_all_register_and_all_go_away(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, provider: DockerProvider
) -> None:
    service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(client))
    config = DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=1, memory_mb=192)
    started = time.monotonic()
    results = await service.provision_workers(20, config)
    assert [r.error for r in results] == [None] * 20
    ids = sorted(r.worker_id for r in results)
    await asyncio.gather(*(connected(scheduler, worker_id) for worker_id in ids))
    print(
        f"\n20 containers: provision_workers -> all AVAILABLE and connected {time.monotonic() - started:.3f} s"
    )

    assert sorted(w.worker_id for w in await provider.list_workers()) == ids
    assert sorted(r.worker_id for r in await scheduler.workers()) == ids

    outcomes = await asyncio.gather(*(service.decommission_worker(worker_id) for worker_id in ids))
    assert [o.was_registered for o in outcomes] == [True] * 20
    assert await provider.list_workers() == []
    assert await scheduler.workers() == []


async def test_sigterm_makes_the_agent_unregister_itself_before_its_container_exits(
    scheduler: EmbeddedScheduler, provider: DockerProvider
) -> None:
    await provider.provision("docker-term", SMALL)  # no registration by the control plane: the agent's own
    await connected(scheduler, "docker-term")

    await provider.stop("docker-term", grace=10)

    assert await scheduler.get_worker("docker-term") is None
    assert await provider.status("docker-term") is WorkerStatus.TERMINATED  # exit code 0, not killed
    await provider.destroy("docker-term")
    assert await provider.status("docker-term") is None


async def test_a_missing_image_is_a_provider_error_that_says_what_to_do_and_leaves_nothing(
    scheduler: EmbeddedScheduler, client: SchedulerPortClient, provider: DockerProvider
) -> None:
    service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(client))
    missing = DynamicWorkerConfig(
        worker_type=WorkerType.DOCKER, cpu_cores=1, memory_mb=128, image="localhost/no-such:0"
    )

    with pytest.raises(ProviderError) as caught:
        await service.provision_worker(missing, worker_id="docker-noimage")

    assert caught.value.worker_id == "docker-noimage"
    message = str(caught.value)
    assert message.startswith(
        "could not provision worker 'docker-noimage': no such image: localhost/no-such:0"
    )
    assert message.endswith(
        "(build or load the worker image on the engine first (see deploy/docker/README.md))"
    )
    assert await provider.list_workers() == []
    assert await scheduler.workers() == []


async def test_an_unreachable_engine_is_a_provider_error_naming_the_engine(
    scheduler: EmbeddedScheduler, agent_image: str, owner: str, tmp_path: Path
) -> None:
    url = f"unix://{tmp_path}/no-engine.sock"
    async with DockerProvider(provider_config(scheduler, agent_image, url, owner)) as unreachable:
        with pytest.raises(ProviderError) as caught:
            await unreachable.provision("docker-noengine", SMALL)
        with pytest.raises(ProviderError) as listing:
            await unreachable.list_workers()
    assert str(caught.value).startswith(f"could not provision worker 'docker-noengine': cannot reach {url}: ")
    assert "start the engine (podman system service, or dockerd) or fix the provider's base_url" in str(
        caught.value
    )
    assert str(listing.value).startswith(f"could not list worker containers: cannot reach {url}: ")


async def test_a_name_conflict_is_a_provider_error_and_the_running_container_is_untouched(
    scheduler: EmbeddedScheduler, provider: DockerProvider
) -> None:
    await provider.provision("docker-dup", SMALL)
    first = await provider.container("docker-dup")
    assert first is not None

    with pytest.raises(ProviderError) as caught:
        await provider.provision("docker-dup", SMALL)

    assert str(caught.value) == (
        "could not provision worker 'docker-dup': a container named 'hodei-docker-dup' exists already "
        "(destroy the old worker or choose another worker id)"
    )
    again = await provider.container("docker-dup")
    assert again is not None and (again.id, again.status) == (first.id, "running")


async def test_more_cpus_than_the_engine_has_are_refused_before_anything_is_created(
    provider: DockerProvider, engine: docker.DockerClient
) -> None:
    cpus = int(engine.info()["NCPU"])
    greedy = DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=cpus + 1, memory_mb=128)

    with pytest.raises(ProviderError) as caught:
        await provider.provision("docker-greedy", greedy)

    assert str(caught.value) == (
        f"worker 'docker-greedy' asks for {cpus + 1} CPU cores; the engine has {cpus} "
        "(lower cpu_cores, or provision on a larger engine)"
    )
    assert await provider.list_workers() == []


async def test_a_container_the_engine_cannot_start_is_removed_again(provider: DockerProvider) -> None:
    """1 MB of memory: the engine creates the container, then cannot start it under that limit."""
    starved = DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=1, memory_mb=1)

    with pytest.raises(ProviderError) as caught:
        await provider.provision("docker-starved", starved)

    assert str(caught.value).startswith(
        "could not provision worker 'docker-starved': the engine is out of resources: "
    )
    assert str(caught.value).endswith(
        "(lower the worker's cpu_cores or memory_mb, or free capacity on the engine)"
    )
    assert await provider.list_workers() == []


async def test_the_reconciler_destroys_a_hand_made_orphan_container_and_unregisters_a_ghost(
    scheduler: EmbeddedScheduler,
    client: SchedulerPortClient,
    provider: DockerProvider,
    engine: docker.DockerClient,
    agent_image: str,
    owner: str,
) -> None:
    # An orphan: a container with hodei's labels that nobody registered (it only sleeps).
    engine.containers.run(
        agent_image,
        ["-c", "import time; time.sleep(600)"],
        entrypoint=["python3"],
        name="hodei-orphan-1",
        labels={"hodei.worker": "true", "hodei.worker.id": "orphan-1", "hodei.owner": owner},
        network_mode="host",
        detach=True,
    )
    # A ghost: a docker worker registered with no container behind it.
    await client.register_worker(DynamicWorker("ghost-1", WorkerType.DOCKER, owned(SMALL, owner)), timeout=5)
    # A healthy worker: container and registration both there.
    service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(client))
    await service.provision_worker(SMALL, worker_id="healthy-1")
    events: list[WorkerEvent] = []
    watcher = scheduler.scheduler.events.watch()

    async def follow() -> None:
        async for event in watcher:
            events.append(event)

    following = asyncio.create_task(follow())
    clock = FakeClock()
    reconciler = Reconciler(provider, client, config=ReconcilerConfig(grace=10.0), clock=clock)

    first = await reconciler.reconcile_once()
    assert (first.orphans_destroyed, first.ghosts_unregistered, first.suspects) == (
        [],
        [],
        ["ghost-1", "orphan-1"],
    )
    clock.advance(10.0)
    report = await reconciler.reconcile_once()

    assert (report.orphans_destroyed, report.ghosts_unregistered, report.failures) == (
        ["orphan-1"],
        ["ghost-1"],
        {},
    )
    assert [c.name for c in engine.containers.list(all=True, filters={"label": f"hodei.owner={owner}"})] == [
        "hodei-healthy-1"
    ]
    assert sorted(r.worker_id for r in await scheduler.workers()) == ["healthy-1"]
    await wait_until(
        lambda: {e.kind for e in events} >= {WorkerEventKind.ORPHAN_REMOVED, WorkerEventKind.UNREGISTERED}
    )
    assert [
        (e.kind, e.worker_id)
        for e in events
        if e.kind in (WorkerEventKind.ORPHAN_REMOVED, WorkerEventKind.UNREGISTERED)
    ] == [
        (WorkerEventKind.ORPHAN_REMOVED, "orphan-1"),
        (WorkerEventKind.UNREGISTERED, "ghost-1"),
    ]
    registry = reconciler.metrics.registry
    assert metric(registry, "hodei_reconciler_actions_total", action="orphan_destroyed") == 1
    assert metric(registry, "hodei_reconciler_actions_total", action="ghost_unregistered") == 1
    watcher.close()
    await following


def _dockerfile_final_stage() -> list[str]:
    lines = (ROOT / "deploy/docker/Dockerfile").read_text().splitlines()
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return [line for line in lines[last_from:] if line and not line.startswith("#")]


def test_the_dockerfile_and_the_local_test_image_share_one_contract() -> None:
    """The image the tests build without a registry runs the agent exactly as deploy/docker/Dockerfile's does."""
    stage = _dockerfile_final_stage()
    entrypoints = [line.removeprefix("ENTRYPOINT ") for line in stage if line.startswith("ENTRYPOINT ")]
    assert entrypoints == ['["' + '", "'.join(AGENT_IMAGE_ENTRYPOINT) + '"]']
    environment = dict(line.removeprefix("ENV ").split("=", 1) for line in stage if line.startswith("ENV "))
    assert {k: environment[k] for k in AGENT_IMAGE_ENV} == dict(AGENT_IMAGE_ENV)
    assert [line for line in stage if line.startswith(("USER ", "STOPSIGNAL "))] == [
        f"STOPSIGNAL {AGENT_IMAGE_STOPSIGNAL}",
        f"USER {AGENT_IMAGE_USER}",
    ]


async def test_the_container_benchmark_measures_every_phase(
    podman_service: PodmanService, agent_image: str
) -> None:
    out = io.StringIO()
    await run(1, 2, Console(file=out, width=200), engine=podman_service)
    text = out.getvalue()
    assert f"image {agent_image} ready in " in text
    for phase in (
        "container created and started",
        "provision_worker -> REGISTERED",
        "provision_worker -> AVAILABLE, agent connected",
        "decommission_worker",
    ):
        assert re.search(rf"│ {re.escape(phase)} +│ 1 │ +\d+ ms │ +\d+ ms │ +\d+ ms │", text), (phase, text)
    assert re.search(r"2 at once: all REGISTERED after \d+\.\d\d s, all AVAILABLE after \d+\.\d\d s", text)
    assert text.rstrip().endswith("failed: none")


BOXES = """\
[pools.boxes]
kind = "dynamic"
provider = "docker"
min = 0
max = 2
idle_timeout = 600

[pools.boxes.template]
cpu_cores = 1
memory_mb = 256
"""


async def test_a_pool_of_containers_keeps_its_busy_worker_bound_when_its_control_plane_is_replaced(
    scheduler: EmbeddedScheduler,
    client: SchedulerPortClient,
    agent_image: str,
    docker_url: str,
    owner: str,
    engine: docker.DockerClient,
) -> None:
    from hodei import Job
    from hodei.management import PoolAutoscaler, PoolAutoscalerConfig
    from hodei.pools import Requirements

    await client.apply_pools("pools.toml", BOXES)
    fast = PoolAutoscalerConfig(interval=0.1)
    first = DockerProvider(provider_config(scheduler, agent_image, docker_url, owner))
    autoscaler = PoolAutoscaler(
        WorkerManagementService(first, registration=WorkerRegistrationAdapter(client)), client, config=fast
    )
    autoscaler.start()
    acquired = await client.acquire_worker(
        "boxed", Requirements(pool="boxes"), job=Job(("sleep", "600")), wait=120
    )
    box = acquired.record.worker_id
    # The control plane goes away without cleaning anything up (as a SIGKILL would): its container and its job
    # stay, as containers outlive the process that started them.
    await autoscaler.stop()
    await first.aclose()

    async with DockerProvider(provider_config(scheduler, agent_image, docker_url, owner)) as second:
        service = WorkerManagementService(second, registration=WorkerRegistrationAdapter(client))
        successor = PoolAutoscaler(service, client, config=fast)
        ticks = [(await successor.tick())[0] for _ in range(3)]

        assert [(t.observation.busy, t.observation.provisioning, t.plan.provision) for t in ticks] == [
            (1, 0, 0)
        ] * 3
        assert [w.worker_id for w in await second.list_workers()] == [box]  # the new one found the container
        view = await client.renew_assignment(acquired.assignment.assignment_id)
        assert view.result is None  # still bound to its job, which still runs
        stored = await scheduler.get_worker(box)
        assert stored is not None and (stored.status, stored.assignment) == (
            WorkerStatus.BUSY,
            acquired.assignment,
        )

        released = await client.release_worker(
            acquired.assignment.assignment_id, outcome=JobOutcome.CANCELLED
        )
        assert released.result is not None and released.result.outcome is JobOutcome.CANCELLED
        await service.decommission_worker(box)
        assert await second.list_workers() == []
