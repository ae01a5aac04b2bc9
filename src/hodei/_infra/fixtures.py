"""Internal: the fixtures hodei's own suite gets its real services from (loaded by ``tests/conftest.py``).

PostgreSQL: ``postgres_cluster`` is one throw-away :class:`PostgresCluster` per test session (started on first
use, stopped and its directory removed at the end); ``postgres_dsn`` is the DSN of a fresh, empty database on
it, one per test, dropped afterwards. When PostgreSQL is not installed, the tests that use them are skipped
with a message that names what is missing — unless the environment variable ``CI`` is ``true``, where a
missing dependency fails them instead (see :func:`skip_or_fail_for_missing`).

Podman: ``podman_service`` is one private :class:`PodmanService` per test session (its own storage, stopped
with every container removed and its directory deleted at the end); ``docker_url`` is its Docker API endpoint
(``unix:///…/podman.sock``, the ``base_url`` of a ``docker.DockerClient``); ``agent_image`` is the tag of the
worker image in its storage, built from this source tree on first use and cached across sessions (see
:mod:`hodei._infra.agent_image`). Without Podman, runc or root, or without mmdebstrap for the image, they skip
(or fail under ``CI=true``) the same way. A cold build of the image takes about a minute: a test that is the
first to use ``agent_image`` needs a ``timeout`` mark above pytest-timeout's default.

Nothing here starts unless a test asks for it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

from hodei._infra.agent_image import (
    AgentImageError,
    ensure_agent_image,
    find_project_dir,
    missing_image_builder,
)
from hodei._infra.podman import PodmanService, missing_podman
from hodei._infra.postgres import PostgresCluster, missing_postgres

__all__ = [
    "agent_image",
    "docker_url",
    "podman_service",
    "postgres_cluster",
    "postgres_dsn",
    "skip_or_fail_for_missing",
]


def skip_or_fail_for_missing(what_is_missing: str) -> NoReturn:
    """Skip the current test because ``what_is_missing`` is missing; fail it instead when ``CI`` is ``true``.

    On a developer's machine a missing system dependency is a skip; in CI it means the pipeline lost tests
    without anyone noticing, so it is a failure.
    """
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{what_is_missing} (a failure, not a skip, because CI=true)", pytrace=False)
    pytest.skip(what_is_missing)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    missing = missing_postgres()
    if missing is not None:
        skip_or_fail_for_missing(f"PostgreSQL is needed: {missing}")
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    # The test's name in the database's name makes a leftover database (or a server log line) say whose it is.
    test_name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    database = f"test_{test_name}_{uuid.uuid4().hex[:8]}"
    yield postgres_cluster.create_database(database)
    postgres_cluster.drop_database(database)


@pytest.fixture(scope="session")
def podman_service() -> Iterator[PodmanService]:
    missing = missing_podman()
    if missing is not None:
        skip_or_fail_for_missing(f"Podman is needed: {missing}")
    with PodmanService() as service:
        yield service


@pytest.fixture(scope="session")
def docker_url(podman_service: PodmanService) -> str:
    return podman_service.url


@pytest.fixture(scope="session")
def agent_image(podman_service: PodmanService) -> str:
    missing = missing_image_builder()
    if missing is not None:
        skip_or_fail_for_missing(f"the agent image cannot be built: {missing}")
    try:
        project_dir = find_project_dir()
    except AgentImageError as exc:
        skip_or_fail_for_missing(f"the agent image cannot be built: {exc}")
    return ensure_agent_image(podman_service, project_dir=project_dir)
