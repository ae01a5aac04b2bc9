"""Helpers shared by the tests. The fixtures hodei_embedded_scheduler, hodei_scheduler_client,
hodei_failing_scheduler and hodei_mock_worker_provider come from hodei's own pytest
plugin (hodei.testing.pytest_plugin)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from hodei import DynamicWorker, DynamicWorkerConfig, WorkerRecord, WorkerStatus, WorkerType
from hodei._infra.directories import free_loopback_port as free_port  # noqa: F401  (for the tests)
from hodei.domain import WorkerCapabilities
from hodei.errors import (
    AccessDenied,
    ErrorCode,
    InvalidWorkerData,
    RegistrationCancelled,
    SchedulerConflict,
    SchedulerError,
    SchedulerInternalError,
    SchedulerOverloaded,
    SchedulerTimeout,
    SchedulerUnavailable,
    StaleIncarnation,
    WorkerAlreadyExists,
    WorkerNotFound,
)
from hodei.testing import EmbeddedScheduler

MOMENT = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)


def stored_worker(worker_id: str, incarnation: int = 0, **fields: Any) -> WorkerRecord:
    """A docker worker's record as a store keeps it (2 cores, 512 MB, zone=eu-1, registered at :data:`MOMENT`);
    keyword arguments override its fields."""
    return WorkerRecord(
        **{
            "worker_id": worker_id,
            "worker_type": WorkerType.DOCKER,
            "capabilities": WorkerCapabilities(2, 512, 10, 0),
            "labels": {"zone": "eu-1"},
            "incarnation": incarnation,
            "registered_at": MOMENT,
            "updated_at": MOMENT,
            **fields,
        }
    )


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


# The table in the errors module's docstring; codes it does not name are internal errors.
KIND_BY_CODE: dict[ErrorCode, type[SchedulerError]] = {
    ErrorCode.OK: SchedulerInternalError,
    ErrorCode.CANCELLED: RegistrationCancelled,
    ErrorCode.UNKNOWN: SchedulerInternalError,
    ErrorCode.INVALID_ARGUMENT: InvalidWorkerData,
    ErrorCode.DEADLINE_EXCEEDED: SchedulerTimeout,
    ErrorCode.NOT_FOUND: WorkerNotFound,
    ErrorCode.ALREADY_EXISTS: WorkerAlreadyExists,
    ErrorCode.PERMISSION_DENIED: AccessDenied,
    ErrorCode.RESOURCE_EXHAUSTED: SchedulerOverloaded,
    ErrorCode.FAILED_PRECONDITION: StaleIncarnation,
    ErrorCode.ABORTED: SchedulerConflict,
    ErrorCode.OUT_OF_RANGE: InvalidWorkerData,
    ErrorCode.UNIMPLEMENTED: SchedulerInternalError,
    ErrorCode.INTERNAL: SchedulerInternalError,
    ErrorCode.UNAVAILABLE: SchedulerUnavailable,
    ErrorCode.DATA_LOSS: SchedulerInternalError,
    ErrorCode.UNAUTHENTICATED: AccessDenied,
}


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of one sample of ``registry``; a sample that does not exist fails (rather than reading 0)."""
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


# Support for the failure suite (tests/failure).
from collections.abc import Sequence  # noqa: E402

from hodei import RegistrationReceipt, SchedulerPortClient  # noqa: E402


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0, interval: float = 0.01) -> None:
    """:func:`wait_for` for a plain (not awaitable) condition."""

    async def holds() -> bool:
        return predicate()

    await wait_for(holds, timeout=timeout, interval=interval)


class AttemptRecordingClient(SchedulerPortClient):
    """The real port client, recording the outcome of every registration call it makes: ``"OK"`` or the
    error code's name (a batch call records one entry per call, the code of the whole call or ``"OK"``)."""

    def __init__(self, target: str, **options: Any) -> None:
        super().__init__(target, **options)
        self.attempts: list[str] = []

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        try:
            receipt = await super().register_worker(worker, timeout=timeout)
        except SchedulerError as error:
            self.attempts.append(error.code.name)
            raise
        self.attempts.append("OK")
        return receipt

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        try:
            outcomes = await super().register_workers(workers, timeout=timeout)
        except SchedulerError as error:
            self.attempts.append(error.code.name)
            raise
        self.attempts.append("OK")
        return outcomes


async def connected(scheduler: EmbeddedScheduler | SchedulerPortClient, worker_id: str) -> bool:
    """Whether the worker is AVAILABLE with its agent's stream connected."""
    record = await scheduler.get_worker(worker_id)
    return record is not None and record.connected and record.status is WorkerStatus.AVAILABLE
