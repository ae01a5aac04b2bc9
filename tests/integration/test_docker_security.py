"""A container worker joins a scheduler with auth on: the control plane mints its join token, the DockerProvider
puts it in the container's environment (``environment_for=JoinTokens(...).environment``), the agent inside
registers with it, and decommissioning leaves nothing behind. Needs the private Podman service of
hodei.testing (skipped with the reason where it cannot run; a failure under CI=true)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import docker
import pytest

from hodei import DynamicWorkerConfig, WorkerRegistrationAdapter, WorkerStatus, WorkerType
from hodei.lifecycle import LivenessConfig
from hodei.management import WorkerManagementService
from hodei.providers.docker import DockerProvider, DockerProviderConfig
from hodei.security import AccessPolicy, JoinTokens, SchedulerSecurity, TokenAuthority
from hodei.security.provisioning import JOIN_TOKEN_VARIABLE
from hodei.testing import EmbeddedScheduler
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(600)  # the first test to use the agent image may build it

SECRET = b"d" * 48
CONFIG = DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=1, memory_mb=256, labels={"team": "ci"})


@pytest.fixture
def owner() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def engine(docker_url: str, owner: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_url, timeout=60)
    yield client
    for container in client.containers.list(all=True, filters={"label": f"hodei.owner={owner}"}):
        container.remove(force=True)
    client.close()


@pytest.fixture
async def scheduler() -> AsyncIterator[EmbeddedScheduler]:
    security = SchedulerSecurity(access=AccessPolicy(TokenAuthority(SECRET)))
    liveness = LivenessConfig(heartbeat_interval=0.5, lease_ttl=3.0, recovery_window=0.0)
    async with EmbeddedScheduler(security=security, liveness=liveness) as started:
        yield started


async def test_a_container_worker_joins_with_the_join_token_in_its_environment_and_leaves_nothing(
    scheduler: EmbeddedScheduler,
    agent_image: str,
    docker_url: str,
    owner: str,
    engine: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei")
    authority = TokenAuthority(SECRET)
    config = DockerProviderConfig(
        schedulers=(scheduler.target,),
        image=agent_image,
        base_url=docker_url,
        owner=owner,
        environment_for=JoinTokens(authority, ttl=120).environment,
    )
    async with DockerProvider(config) as provider:
        control = scheduler.client(credential=authority.mint_operator_token("control-plane"))
        service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(control))

        await service.provision_worker(CONFIG, worker_id="docker-secure-1")
        await wait_for(lambda: connected(scheduler, "docker-secure-1"), timeout=60, interval=0.05)
        container = await provider.container("docker-secure-1")
        assert container is not None
        environment = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        command = " ".join(container.attrs["Config"]["Cmd"] or [])

        result = await service.decommission_worker("docker-secure-1")
        left = await provider.list_workers()

    token = environment[JOIN_TOKEN_VARIABLE]
    assert authority.identify(token).worker_id == "docker-secure-1"  # type: ignore[union-attr]
    assert token not in command
    assert result.was_registered
    assert left == []
    assert await scheduler.workers() == []
    assert [r for r in caplog.records if r.getMessage() == "auth.refused"] == []


async def connected(scheduler: EmbeddedScheduler, worker_id: str) -> bool:
    record = await scheduler.get_worker(worker_id)
    return record is not None and record.connected and record.status is WorkerStatus.AVAILABLE
