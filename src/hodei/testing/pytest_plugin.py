"""pytest fixtures for testing against hodei (registered as the ``hodei`` pytest plugin).

``hodei_embedded_scheduler`` (a started :class:`EmbeddedScheduler`), ``hodei_scheduler_client`` (a
:class:`SchedulerPortClient` connected to it), ``hodei_mock_worker_provider``, and ``hodei_failing_scheduler`` — a
factory: ``scheduler = await hodei_failing_scheduler(2, code=ErrorCode.ABORTED)``, stopped at the end of the test.
Async fixtures need pytest-asyncio (``pip install hodei[testing]``). Each fixture is a double on loopback or in
memory: none starts a database, a container engine or any other service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hodei.testing._embedded import EmbeddedScheduler
from hodei.testing._failing import FailingScheduler
from hodei.testing._provider import MockWorkerProvider
from hodei.transport._client import SchedulerPortClient

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - only the sync fixture is offered then
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture
def hodei_mock_worker_provider() -> MockWorkerProvider:
    return MockWorkerProvider()


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def hodei_embedded_scheduler() -> AsyncIterator[EmbeddedScheduler]:
        async with EmbeddedScheduler() as scheduler:
            yield scheduler

    @pytest_asyncio.fixture
    async def hodei_scheduler_client(
        hodei_embedded_scheduler: EmbeddedScheduler,
    ) -> AsyncIterator[SchedulerPortClient]:
        async with SchedulerPortClient(hodei_embedded_scheduler.target) as client:
            yield client

    @pytest_asyncio.fixture
    async def hodei_failing_scheduler() -> AsyncIterator[Callable[..., Awaitable[FailingScheduler]]]:
        started: list[FailingScheduler] = []

        async def make(failures: int = 1, **options: Any) -> FailingScheduler:
            scheduler = await FailingScheduler(failures, **options).start()
            started.append(scheduler)
            return scheduler

        yield make
        for scheduler in started:
            await scheduler.stop()
