"""A scripted SchedulerPort and what goes with it, for the unit tests of the registration adapter and of what
it logs: the port is the adapter's own collaborator, so a scripted one is right there."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hodei import (
    DynamicWorker,
    ErrorCode,
    RegistrationConfig,
    SchedulerError,
    UnregistrationStatus,
    WorkerRegistrationAdapter,
)
from hodei.domain import WorkerRecord
from hodei.errors import scheduler_error_for
from hodei.ports import DrainOutcome, RegistrationReceipt, WorkerFilter, WorkerPage
from tests.helpers import make_worker

Outcome = RegistrationReceipt | SchedulerError


def receipt(worker: DynamicWorker) -> RegistrationReceipt:
    record = WorkerRecord(
        worker_id=worker.worker_id,
        worker_type=worker.worker_type,
        capabilities=worker.capabilities,
        registered_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return RegistrationReceipt(record, created=True)


def error(code: ErrorCode, retry_after: float | None = None) -> SchedulerError:
    return scheduler_error_for(code, f"scripted {code.name}", retry_after=retry_after)


class ScriptedPort:
    """Answers each call from a script: an error to raise, or (for batches) a per-worker outcome function."""

    def __init__(self) -> None:
        self.single: list[SchedulerError | None] = []  # None: succeed
        self.batch_calls: list[list[str]] = []
        self.batch_script: list[SchedulerError | dict[str, SchedulerError]] = []
        self.calls = 0
        self.timeouts: list[float | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.drain_answer: DrainOutcome | SchedulerError | None = None
        self.records: list[WorkerRecord | SchedulerError | None] = []  # answers of get_worker, in turn
        self.args: list[tuple[Any, ...]] = []  # (method, its arguments) of the calls below, in turn

    def _next(self) -> SchedulerError | None:
        self.calls += 1
        return self.single.pop(0) if self.single else None

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        self.timeouts.append(timeout)
        if (failure := self._next()) is not None:
            raise failure
        return receipt(worker)

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[Outcome]:
        self.args.append(("register_workers", len(workers), timeout))
        self.batch_calls.append([w.worker_id for w in workers])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # let the other chunk tasks run, so that concurrency is observable
            step = self.batch_script.pop(0) if self.batch_script else {}
            if isinstance(step, SchedulerError):
                raise step
            return [step.get(w.worker_id) or receipt(w) for w in workers]
        finally:
            self.in_flight -= 1

    async def unregister_worker(
        self, worker_id: str, *, incarnation: int | None = None, timeout: float | None = None
    ) -> UnregistrationStatus:
        self.args.append(("unregister_worker", worker_id, timeout))
        if (failure := self._next()) is not None:
            raise failure
        return UnregistrationStatus.SUCCESS

    async def get_worker(self, worker_id: str, *, timeout: float | None = None) -> WorkerRecord | None:
        self.args.append(("get_worker", worker_id, timeout))
        answer = self.records.pop(0)
        if isinstance(answer, SchedulerError):
            raise answer
        return answer

    async def drain_worker(
        self,
        worker_id: str,
        *,
        deadline: float = 0.0,
        reason: str = "",
        only_if_available: bool = False,
        timeout: float | None = None,
    ) -> DrainOutcome:
        self.args.append(("drain_worker", worker_id, deadline, timeout))
        self.calls += 1
        if isinstance(self.drain_answer, SchedulerError):
            raise self.drain_answer
        assert self.drain_answer is not None
        return self.drain_answer

    async def list_workers(
        self,
        worker_filter: WorkerFilter | None = None,
        *,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> WorkerPage:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def adapter(port: ScriptedPort, **config: object) -> tuple[WorkerRegistrationAdapter, RecordedSleep]:
    """An adapter over ``port`` that records its sleeps instead of sleeping, with no jitter."""
    sleep = RecordedSleep()
    registration = WorkerRegistrationAdapter(
        port,
        RegistrationConfig(**config),  # type: ignore[arg-type]
        sleep=sleep,
        random=lambda: 0.0,
    )
    return registration, sleep


def drained_record(worker_id: str = "w-1", *, drained: bool) -> WorkerRecord:
    return replace(receipt(make_worker(worker_id)).record, drained=drained)
