"""Helpers shared by the tests. The fixtures embedded_scheduler, scheduler_client, failing_scheduler and
mock_worker_provider come from hodei's own pytest plugin (hodei.testing.pytest_plugin)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from hodei import DynamicWorker, DynamicWorkerConfig, WorkerType


def make_worker(worker_id: str = "test-worker", **config: object) -> DynamicWorker:
    """A valid docker worker; keyword arguments override DynamicWorkerConfig fields."""
    return DynamicWorker(worker_id, WorkerType.DOCKER, DynamicWorkerConfig(**config))  # type: ignore[arg-type]


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Wait until ``condition()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
