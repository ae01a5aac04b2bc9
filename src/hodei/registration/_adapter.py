"""WorkerRegistrationAdapter: registers workers with the scheduler through a SchedulerPort, and keeps trying.

Only transient errors are retried (:attr:`hodei.errors.SchedulerError.retryable`); permanent ones fail at once
with :class:`~hodei.errors.RegistrationFailed`, and exhaustion raises :class:`~hodei.errors.MaxRetriesExceeded`
with the attempt count and the last error.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from hodei.domain import DynamicWorker, WorkerType
from hodei.errors import (
    ErrorCode,
    InvalidWorkerData,
    MaxRetriesExceeded,
    RegistrationError,
    RegistrationFailed,
    SchedulerError,
    WorkerNotFound,
    WorkerNotIdle,
)
from hodei.observability._metrics import ControlPlaneMetrics
from hodei.ports import RegistrationReceipt, SchedulerPort, UnregistrationStatus
from hodei.registration import _telemetry
from hodei.registration._config import RegistrationConfig
from hodei.registration._metering import RegistrationMeter, result_of

__all__ = ["BatchRegistrationResult", "DrainResult", "WorkerRegistrationAdapter"]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[object]]


def _not_counted(error: SchedulerError) -> None:
    """Retries of calls other than registrations are not registration retries."""


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
    ``drained``: the agent reported its work finished before the deadline; ``busy``: asked only for an idle
    worker, it was not (nothing changed)."""

    worker_id: str
    registered: bool
    delivered: bool = False
    drained: bool = False
    busy: bool = False


class WorkerRegistrationAdapter:
    """``WorkerRegistrationAdapter(SchedulerPortClient(target), RegistrationConfig(max_retries=2))``.

    ``sleep`` and ``random`` are injectable so that tests can check the backoff without waiting. ``metrics``
    (:class:`~hodei.observability._metrics.ControlPlaneMetrics`, default: a private registry's) counts every
    registration by result and worker type, its duration and attempts, each retry's cause and batch sizes.
    """

    def __init__(
        self,
        port: SchedulerPort,
        config: RegistrationConfig | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = random.random,
        metrics: ControlPlaneMetrics | None = None,
    ) -> None:
        self.port = port
        self.config = config or RegistrationConfig()
        self._sleep = sleep
        self._random = random
        self.metrics = metrics or ControlPlaneMetrics()
        self._meter = RegistrationMeter(self.metrics)

    def _delay(self, retry: int, error: SchedulerError) -> float:
        if error.retry_after is not None:
            return error.retry_after
        return self.config.backoff(retry, self._random())

    def _rejected_locally(self, worker: DynamicWorker) -> RegistrationFailed | None:
        """The refusal of an invalid worker, before anything is sent (the worker's verdict: a config shared by
        the workers of a batch is checked once)."""
        if not self.config.validate_before_send:
            return None
        violations = worker.verdict
        if not violations:
            return None
        cause = InvalidWorkerData(
            f"worker {worker.worker_id!r} is invalid; not sent",
            worker_id=worker.worker_id,
            violations=violations,
        )
        return RegistrationFailed(worker.worker_id, cause, attempts=0)

    async def _with_retries(
        self,
        worker_id: str,
        call: Callable[[float], Awaitable[T]],
        on_retry: Callable[[SchedulerError], None] = _not_counted,
        *,
        operation: str,
        worker_type: WorkerType | None = None,
    ) -> T:
        """``call`` until it succeeds, fails for good, or runs out of attempts: a span for the ``operation``,
        a child span per attempt (the backoff after it as an attribute), a log event per retry and outcome."""
        with _telemetry.operation_span(operation, worker_id, worker_type):
            attempt = 0
            while True:
                attempt += 1
                with _telemetry.attempt_span(operation, worker_id, worker_type, attempt) as span:
                    try:
                        result = await call(self.config.registration_timeout)
                    except SchedulerError as error:
                        if not error.retryable:
                            _telemetry.failed(
                                span, operation, worker_id, worker_type, attempt, error, "rejected"
                            )
                            raise RegistrationFailed(worker_id, error, attempts=attempt) from error
                        if attempt >= self.config.max_attempts:
                            _telemetry.failed(
                                span, operation, worker_id, worker_type, attempt, error, "exhausted"
                            )
                            raise MaxRetriesExceeded(worker_id, error, attempts=attempt) from error
                        on_retry(error)
                        delay = self._delay(attempt, error)
                        _telemetry.retrying(span, operation, worker_id, worker_type, attempt, error, delay)
                    else:
                        _telemetry.succeeded(operation, worker_id, worker_type, attempt)
                        return result
                await self._sleep(delay)  # only a retry gets here

    async def register_worker(self, worker: DynamicWorker) -> RegistrationReceipt:
        """Register one worker; raises a :class:`~hodei.errors.RegistrationError` kind when it cannot."""
        rejected = self._rejected_locally(worker)
        if rejected is not None:
            self._meter.settled("rejected", worker.worker_type, attempts=0, seconds=0.0)
            _telemetry.not_sent(worker.worker_id, worker.worker_type, rejected)
            raise rejected
        attempts = 0

        async def attempt(timeout: float) -> RegistrationReceipt:
            nonlocal attempts
            attempts += 1
            return await self.port.register_worker(worker, timeout=timeout)

        started = time.perf_counter()
        try:
            receipt = await self._with_retries(
                worker.worker_id,
                attempt,
                lambda error: self._meter.retried(error.code),
                operation="register_worker",
                worker_type=worker.worker_type,
            )
        except RegistrationError as failure:
            self._meter.settled(
                result_of(failure),
                worker.worker_type,
                attempts=failure.attempts,
                seconds=time.perf_counter() - started,
            )
            raise
        except asyncio.CancelledError:
            self._meter.cancelled(worker.worker_type)
            raise
        self._meter.settled(
            "success", worker.worker_type, attempts=attempts, seconds=time.perf_counter() - started
        )
        return receipt

    async def unregister_worker(
        self, worker_id: str, *, incarnation: int | None = None
    ) -> UnregistrationStatus:
        """Unregister one worker; ``NOT_REGISTERED`` if the scheduler did not know it. ``incarnation`` fences it
        (see :meth:`SchedulerPort.unregister_worker`): a newer registration is refused as StaleIncarnation."""
        return await self._with_retries(
            worker_id,
            lambda timeout: self.port.unregister_worker(worker_id, incarnation=incarnation, timeout=timeout),
            operation="unregister_worker",
        )

    async def drain_worker(
        self, worker_id: str, *, deadline: float, poll_interval: float = 0.05, only_if_available: bool = False
    ) -> DrainResult:
        """Ask the worker to drain and wait, at most ``deadline`` seconds, until its agent reports it drained.

        A worker the scheduler does not know is not an error (``registered=False``); nor is one with no agent
        connected (``delivered=False``: there is nobody to wait for); nor, with ``only_if_available``, one that
        is busy (``busy=True``: nothing changed).
        """
        try:
            outcome = await self._with_retries(
                worker_id,
                lambda timeout: self.port.drain_worker(
                    worker_id, deadline=deadline, only_if_available=only_if_available, timeout=timeout
                ),
                operation="drain_worker",
            )
        except RegistrationFailed as failure:
            if isinstance(failure.cause, WorkerNotFound):
                return DrainResult(worker_id, registered=False)
            if isinstance(failure.cause, WorkerNotIdle):
                return DrainResult(worker_id, registered=True, busy=True)
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
        with _telemetry.batch_span(len(workers)) as span:
            results = await self._register_batch(workers)
            _telemetry.batch_finished(
                span, len(workers), [r.worker_id for r in results if r.error is not None]
            )
        return results

    async def _register_batch(self, workers: Sequence[DynamicWorker]) -> list[BatchRegistrationResult]:
        self._meter.batch(len(workers))
        results: list[BatchRegistrationResult | None] = [None] * len(workers)
        valid: list[int] = []
        for index, worker in enumerate(workers):
            rejected = self._rejected_locally(worker)
            if rejected is None:
                valid.append(index)
            else:
                self._meter.settled("rejected", worker.worker_type, attempts=0, seconds=0.0)
                results[index] = BatchRegistrationResult(worker.worker_id, error=rejected)
        size = self.config.batch_size
        chunks = iter([valid[start : start + size] for start in range(0, len(valid), size)])

        async def drain(chunk_source: Iterator[list[int]]) -> None:
            for chunk in chunk_source:
                await self._register_chunk(workers, chunk, results)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.config.batch_concurrency, (len(valid) + size - 1) // size)):
                    group.create_task(drain(chunks))
        except asyncio.CancelledError:
            for index in valid:
                if results[index] is None:
                    self._meter.cancelled(workers[index].worker_type)
            raise
        return [result for result in results if result is not None]

    async def _register_chunk(
        self,
        workers: Sequence[DynamicWorker],
        pending: list[int],
        results: list[BatchRegistrationResult | None],
    ) -> None:
        attempt = 0
        started = time.perf_counter()
        while pending:
            attempt += 1
            batch = [workers[i] for i in pending]
            outcomes: Sequence[RegistrationReceipt | SchedulerError]
            with _telemetry.batch_attempt_span(len(batch), attempt) as span:
                try:
                    outcomes = await self.port.register_workers(
                        batch, timeout=self.config.registration_timeout
                    )
                except SchedulerError as error:
                    _telemetry.call_failed(span, error)
                    outcomes = [error] * len(batch)
            retry: list[int] = []
            delay = 0.0
            settled: dict[tuple[str, WorkerType], int] = {}
            retried: dict[ErrorCode, int] = {}
            for index, worker, outcome in zip(pending, batch, outcomes, strict=True):
                if isinstance(outcome, RegistrationReceipt):
                    results[index] = BatchRegistrationResult(worker.worker_id, outcome, attempts=attempt)
                    key = ("success", worker.worker_type)
                elif not outcome.retryable:
                    failed = RegistrationFailed(worker.worker_id, outcome, attempts=attempt)
                    results[index] = BatchRegistrationResult(worker.worker_id, error=failed, attempts=attempt)
                    key = (result_of(failed), worker.worker_type)
                elif attempt >= self.config.max_attempts:
                    exhausted = MaxRetriesExceeded(worker.worker_id, outcome, attempts=attempt)
                    results[index] = BatchRegistrationResult(
                        worker.worker_id, error=exhausted, attempts=attempt
                    )
                    key = ("exhausted", worker.worker_type)
                else:
                    retry.append(index)
                    delay = max(delay, self._delay(attempt, outcome))
                    retried[outcome.code] = retried.get(outcome.code, 0) + 1
                    continue
                settled[key] = settled.get(key, 0) + 1
            self._meter.settled_groups(settled, attempts=attempt, seconds=time.perf_counter() - started)
            for code, count in retried.items():
                self._meter.retried(code, count)
            pending = retry
            if pending:
                _telemetry.batch_retrying(len(pending), attempt, retried, delay)
                await self._sleep(delay)
