"""A container worker joins a scheduler with auth on: the control plane mints its join token, the DockerProvider
puts it in the container's environment (``environment_for=JoinTokens(...).environment``), the agent inside
registers with it, and decommissioning leaves nothing behind. Needs the private Podman service of
hodei.testing (skipped with the reason where it cannot run; a failure under CI=true)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from hodei import DynamicWorkerConfig, WorkerRegistrationAdapter, WorkerType
from hodei.lifecycle import LivenessConfig
from hodei.management import WorkerManagementService
from hodei.providers import DockerProvider, DockerProviderConfig
from hodei.security import (
    AccessPolicy,
    ClientTlsConfig,
    JoinTokens,
    SchedulerSecurity,
    TlsConfig,
    TokenAuthority,
    write_test_pki,
)
from hodei.security._provisioning import JOIN_TOKEN_VARIABLE
from hodei.testing import EmbeddedScheduler
from tests.helpers import connected, wait_for

pytestmark = pytest.mark.timeout(600)  # the first test to use the agent image may build it

SECRET = b"d" * 48
CONFIG = DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=1, memory_mb=256, labels={"team": "ci"})


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


async def test_a_container_worker_joins_a_mutual_tls_scheduler_with_the_certificates_mounted_read_only(
    agent_image: str, docker_url: str, owner: str, engine: docker.DockerClient, tmp_path: Path
) -> None:
    pki = write_test_pki(tmp_path / "pki")
    # The image runs as uid 65532: the directory and the client's key must be its to read.
    (tmp_path / "pki").chmod(0o755)
    os.chown(pki.client_key_file, 65532, 65532)
    authority = TokenAuthority(SECRET)
    security = SchedulerSecurity(
        access=AccessPolicy(authority),
        tls=TlsConfig(pki.server_cert_file, pki.server_key_file, ca_file=pki.ca_file),
    )
    liveness = LivenessConfig(heartbeat_interval=0.5, lease_ttl=3.0, recovery_window=0.0)
    inside = "/etc/hodei/tls"
    async with EmbeddedScheduler(security=security, liveness=liveness) as scheduler:
        config = DockerProviderConfig(
            schedulers=(scheduler.target,),
            image=agent_image,
            base_url=docker_url,
            owner=owner,
            environment={
                "HODEI_TLS_CA": f"{inside}/{pki.ca_file.name}",
                "HODEI_TLS_CERT": f"{inside}/{pki.client_cert_file.name}",
                "HODEI_TLS_KEY": f"{inside}/{pki.client_key_file.name}",
            },
            environment_for=JoinTokens(authority, ttl=120).environment,
            mounts=(f"{tmp_path / 'pki'}:{inside}:ro",),
        )
        tls = ClientTlsConfig(
            ca_file=pki.ca_file, cert_file=pki.client_cert_file, key_file=pki.client_key_file
        )
        async with DockerProvider(config) as provider:
            control = scheduler.client(credential=authority.mint_operator_token("control-plane"), tls=tls)
            service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(control))
            await service.provision_worker(CONFIG, worker_id="docker-mtls-1")
            await wait_for(lambda: connected(scheduler, "docker-mtls-1"), timeout=60, interval=0.05)
            container = await provider.container("docker-mtls-1")
            assert container is not None
            mounts = [(m["Source"], m["Destination"], m["RW"]) for m in container.attrs["Mounts"]]
            result = await service.decommission_worker("docker-mtls-1")
            assert (result.was_registered, await provider.list_workers(), await scheduler.workers()) == (
                True,
                [],
                [],
            )
    assert mounts == [(str(tmp_path / "pki"), inside, False)]


def test_a_malformed_mount_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="mounts"):
        DockerProviderConfig(schedulers=("127.0.0.1:1",), image="i", mounts=("relative:/etc/x",))
    with pytest.raises(ValueError, match="mounts"):
        DockerProviderConfig(schedulers=("127.0.0.1:1",), image="i", mounts=("/a:/b:rx",))
    assert DockerProviderConfig(schedulers=("127.0.0.1:1",), image="i", mounts=("/a:/b", "/c:/d:ro")).mounts
