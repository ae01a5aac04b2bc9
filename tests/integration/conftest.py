"""Fixtures of the integration suite's container tests (the engine itself comes from hodei's pytest plugin)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import docker
import pytest


@pytest.fixture
def owner() -> str:
    """A ``hodei.owner`` label value of this test's own: its containers, and only them, are its provider's."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def engine(docker_url: str, owner: str) -> Iterator[docker.DockerClient]:
    """The engine, through the SDK; every container of this test's owner is removed at the end."""
    client = docker.DockerClient(base_url=docker_url, timeout=60)
    yield client
    for container in client.containers.list(all=True, filters={"label": f"hodei.owner={owner}"}):
        container.remove(force=True)
    client.close()
