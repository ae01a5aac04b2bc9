"""pytest fixtures for testing against hodei (registered as the ``hodei`` pytest plugin).

``embedded_scheduler`` (a started :class:`EmbeddedScheduler`), ``scheduler_client`` (a
:class:`SchedulerPortClient` connected to it), ``mock_worker_provider``, and ``failing_scheduler`` — a factory:
``scheduler = await failing_scheduler(2, code=ErrorCode.ABORTED)``, stopped at the end of the test.
Async fixtures need pytest-asyncio (``pip install hodei[testing]``).

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
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn

import pytest

from hodei._infra.agent_image import (
    AgentImageError,
    ensure_agent_image,
    find_project_dir,
    missing_image_builder,
)
from hodei._infra.podman import PodmanService, missing_podman
from hodei._infra.postgres import PostgresCluster, missing_postgres
from hodei.testing._embedded import EmbeddedScheduler
from hodei.testing._failing import FailingScheduler
from hodei.testing._provider import MockWorkerProvider
from hodei.transport._client import SchedulerPortClient

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - only the sync fixture is offered then
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture
def mock_worker_provider() -> MockWorkerProvider:
    return MockWorkerProvider()


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


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def embedded_scheduler() -> AsyncIterator[EmbeddedScheduler]:
        async with EmbeddedScheduler() as scheduler:
            yield scheduler

    @pytest_asyncio.fixture
    async def scheduler_client(embedded_scheduler: EmbeddedScheduler) -> AsyncIterator[SchedulerPortClient]:
        async with SchedulerPortClient(embedded_scheduler.target) as client:
            yield client

    @pytest_asyncio.fixture
    async def failing_scheduler() -> AsyncIterator[Callable[..., Awaitable[FailingScheduler]]]:
        started: list[FailingScheduler] = []

        async def make(failures: int = 1, **options: Any) -> FailingScheduler:
            scheduler = await FailingScheduler(failures, **options).start()
            started.append(scheduler)
            return scheduler

        yield make
        for scheduler in started:
            await scheduler.stop()
