"""WorkerRegistrationAdapter: registers workers with the scheduler through a SchedulerPort, and keeps trying.

Only transient errors are retried (:attr:`hodei.errors.SchedulerError.retryable`); permanent ones fail at once
with :class:`~hodei.errors.RegistrationFailed`, and exhaustion raises :class:`~hodei.errors.MaxRetriesExceeded`
with the attempt count and the last error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from hodei.domain import DynamicWorker, FieldViolation, validate_worker
from hodei.errors import (
    InvalidWorkerData,
    MaxRetriesExceeded,
    RegistrationError,
    RegistrationFailed,
    SchedulerError,
    WorkerNotFound,
)
from hodei.ports import RegistrationReceipt, SchedulerPort, UnregistrationStatus
from hodei.registration.config import RegistrationConfig

__all__ = ["BatchRegistrationResult", "DrainResult", "WorkerRegistrationAdapter"]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class BatchRegistrationResult:
    """The fate of one worker of a batch: ``receipt`` when it is registered, ``error`` when it is not."""

    worker_id: str
    receipt: RegistrationReceipt | None = None
    error: RegistrationError | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def is_ok(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class DrainResult:
    """``registered``: the scheduler knew the worker; ``delivered``: its agent got the drain command;
    ``drained``: the agent reported its work finished before the deadline."""

    worker_id: str
    registered: bool
    delivered: bool = False
    drained: bool = False


class WorkerRegistrationAdapter:
    """``WorkerRegistrationAdapter(SchedulerPortClient(target), RegistrationConfig(max_retries=2))``.

    ``sleep`` and ``random`` are injectable so that tests can check the backoff without waiting.
    """

    def __init__(
        self,
        port: SchedulerPort,
        config: RegistrationConfig | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.port = port
        self.config = config or RegistrationConfig()
        self._sleep = sleep
        self._random = random

    def _delay(self, retry: int, error: SchedulerError) -> float:
        if error.retry_after is not None:
            return error.retry_after
        return self.config.backoff(retry, self._random())

    def _rejected_locally(
        self, worker: DynamicWorker, checked_configs: dict[int, list[FieldViolation]] | None = None
    ) -> RegistrationFailed | None:
        if not self.config.validate_before_send:
            return None
        if checked_configs is None:
            violations = worker.violations()
        else:  # a batch: a config shared by many workers is checked once
            config = worker.config
            if (known := checked_configs.get(id(config))) is None:
                known = checked_configs[id(config)] = config.violations()
            violations = validate_worker(worker, config_violations=known)
        if not violations:
            return None
        cause = InvalidWorkerData(
            f"worker {worker.worker_id!r} is invalid; not sent",
            worker_id=worker.worker_id,
            violations=violations,
        )
        return RegistrationFailed(worker.worker_id, cause, attempts=0)

    async def _with_retries(self, worker_id: str, call: Callable[[float], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call(self.config.registration_timeout)
            except SchedulerError as error:
                if not error.retryable:
                    raise RegistrationFailed(worker_id, error, attempts=attempt) from error
                if attempt >= self.config.max_attempts:
                    raise MaxRetriesExceeded(worker_id, error, attempts=attempt) from error
                await self._sleep(self._delay(attempt, error))

    async def register_worker(self, worker: DynamicWorker) -> RegistrationReceipt:
        """Register one worker; raises a :class:`~hodei.errors.RegistrationError` kind when it cannot."""
        rejected = self._rejected_locally(worker)
        if rejected is not None:
            raise rejected
        return await self._with_retries(
            worker.worker_id, lambda timeout: self.port.register_worker(worker, timeout=timeout)
        )

    async def unregister_worker(self, worker_id: str) -> UnregistrationStatus:
        """Unregister one worker; ``NOT_REGISTERED`` if the scheduler did not know it."""
        return await self._with_retries(
            worker_id, lambda timeout: self.port.unregister_worker(worker_id, timeout=timeout)
        )

    async def drain_worker(
        self, worker_id: str, *, deadline: float, poll_interval: float = 0.05
    ) -> DrainResult:
        """Ask the worker to drain and wait, at most ``deadline`` seconds, until its agent reports it drained.

        A worker the scheduler does not know is not an error (``registered=False``); nor is one with no agent
        connected (``delivered=False``: there is nobody to wait for).
        """
        try:
            outcome = await self._with_retries(
                worker_id,
                lambda timeout: self.port.drain_worker(worker_id, deadline=deadline, timeout=timeout),
            )
        except RegistrationFailed as failure:
            if isinstance(failure.cause, WorkerNotFound):
                return DrainResult(worker_id, registered=False)
            raise
        if not outcome.delivered or outcome.record.drained:
            return DrainResult(worker_id, True, outcome.delivered, outcome.record.drained)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline
        while loop.time() < give_up:
            await self._sleep(poll_interval)
            try:
                record = await self.port.get_worker(worker_id, timeout=self.config.registration_timeout)
            except SchedulerError as error:
                if not error.retryable:
                    raise RegistrationFailed(worker_id, error, attempts=1) from error
                continue
            if record is None:  # it unregistered itself: nothing left to drain
                return DrainResult(worker_id, True, True, True)
            if record.drained:
                return DrainResult(worker_id, True, True, True)
        return DrainResult(worker_id, True, True, False)

    async def register_workers_batch(self, workers: Sequence[DynamicWorker]) -> list[BatchRegistrationResult]:
        """Register many workers: one result per worker, in input order; one failure never fails the others.

        Workers go ``batch_size`` per call with at most ``batch_concurrency`` calls in flight (a fixed set of
        tasks, whatever the batch's size); only the workers that failed transiently are sent again.
        """
        results: list[BatchRegistrationResult | None] = [None] * len(workers)
        valid: list[int] = []
        checked_configs: dict[int, list[FieldViolation]] = {}
        for index, worker in enumerate(workers):
            rejected = self._rejected_locally(worker, checked_configs)
            if rejected is None:
                valid.append(index)
            else:
                results[index] = BatchRegistrationResult(worker.worker_id, error=rejected)
        size = self.config.batch_size
        chunks = iter([valid[start : start + size] for start in range(0, len(valid), size)])

        async def drain(chunk_source: Iterator[list[int]]) -> None:
            for chunk in chunk_source:
                await self._register_chunk(workers, chunk, results)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.config.batch_concurrency, (len(valid) + size - 1) // size)):
                group.create_task(drain(chunks))
        return [result for result in results if result is not None]

    async def _register_chunk(
        self,
        workers: Sequence[DynamicWorker],
        pending: list[int],
        results: list[BatchRegistrationResult | None],
    ) -> None:
        attempt = 0
        while pending:
            attempt += 1
            batch = [workers[i] for i in pending]
            outcomes: Sequence[RegistrationReceipt | SchedulerError]
            try:
                outcomes = await self.port.register_workers(batch, timeout=self.config.registration_timeout)
            except SchedulerError as error:
                outcomes = [error] * len(batch)
            retry: list[int] = []
            delay = 0.0
            for index, worker, outcome in zip(pending, batch, outcomes, strict=True):
                if isinstance(outcome, RegistrationReceipt):
                    results[index] = BatchRegistrationResult(worker.worker_id, outcome, attempts=attempt)
                elif not outcome.retryable:
                    failed = RegistrationFailed(worker.worker_id, outcome, attempts=attempt)
                    results[index] = BatchRegistrationResult(worker.worker_id, error=failed, attempts=attempt)
                elif attempt >= self.config.max_attempts:
                    exhausted = MaxRetriesExceeded(worker.worker_id, outcome, attempts=attempt)
                    results[index] = BatchRegistrationResult(
                        worker.worker_id, error=exhausted, attempts=attempt
                    )
                else:
                    retry.append(index)
                    delay = max(delay, self._delay(attempt, outcome))
            pending = retry
            if pending:
                await self._sleep(delay)
