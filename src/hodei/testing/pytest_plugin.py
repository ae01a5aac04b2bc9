"""pytest fixtures for testing against hodei (registered as the ``hodei`` pytest plugin).

``embedded_scheduler`` (a started :class:`EmbeddedScheduler`), ``scheduler_client`` (a
:class:`SchedulerPortClient` connected to it), ``mock_worker_provider``, and ``failing_scheduler`` — a factory:
``scheduler = await failing_scheduler(2, code=ErrorCode.ABORTED)``, stopped at the end of the test.
Async fixtures need pytest-asyncio (``pip install hodei[testing]``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hodei.testing._embedded import EmbeddedScheduler
from hodei.testing._failing import FailingScheduler
from hodei.testing._provider import MockWorkerProvider
from hodei.transport.client import SchedulerPortClient

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - only the sync fixture is offered then
    pytest_asyncio = None  # type: ignore[assignment]


@pytest.fixture
def mock_worker_provider() -> MockWorkerProvider:
    return MockWorkerProvider()


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
