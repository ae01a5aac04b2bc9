"""WorkerRegistrationAdapter against a scripted SchedulerPort: the retry logic, with no network and no sleeping.

The port is the adapter's own collaborator, so a scripted one is right here; the same behaviours are checked
end to end over real gRPC in tests/integration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from hodei import (
    DynamicWorker,
    ErrorCode,
    MaxRetriesExceeded,
    RegistrationConfig,
    RegistrationFailed,
    SchedulerError,
    UnregistrationStatus,
    WorkerRegistrationAdapter,
)
from hodei.domain import WorkerRecord
from hodei.errors import scheduler_error_for
from hodei.ports import DrainOutcome, RegistrationReceipt, WorkerFilter, WorkerPage
from hodei.registration import DrainResult
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
        if (failure := self._next()) is not None:
            raise failure
        return UnregistrationStatus.SUCCESS

    async def get_worker(self, worker_id: str, *, timeout: float | None = None) -> WorkerRecord | None:
        answer = self.records.pop(0)
        if isinstance(answer, SchedulerError):
            raise answer
        return answer

    async def drain_worker(
        self, worker_id: str, *, deadline: float = 0.0, reason: str = "", timeout: float | None = None
    ) -> DrainOutcome:
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
    sleep = RecordedSleep()
    return (
        WorkerRegistrationAdapter(port, RegistrationConfig(**config), sleep=sleep, random=lambda: 0.0),  # type: ignore[arg-type]
        sleep,
    )


async def test_first_attempt_success_makes_one_call_with_the_attempt_deadline() -> None:
    port = ScriptedPort()
    registration, sleep = adapter(port, registration_timeout=1.5)

    result = await registration.register_worker(make_worker("w-1"))

    assert result.record.worker_id == "w-1"
    assert port.calls == 1
    assert port.timeouts == [1.5]
    assert sleep.delays == []


async def test_two_transient_failures_are_retried_after_100_then_200_ms() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE), error(ErrorCode.DEADLINE_EXCEEDED)]
    registration, sleep = adapter(port)

    await registration.register_worker(make_worker())

    assert port.calls == 3
    assert sleep.delays == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize(
    "code",
    [ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.ABORTED],
)
async def test_each_transient_code_is_retried(code: ErrorCode) -> None:
    port = ScriptedPort()
    port.single = [error(code)]
    registration, _ = adapter(port)

    await registration.register_worker(make_worker())

    assert port.calls == 2


@pytest.mark.parametrize(
    "code",
    sorted(
        set(ErrorCode)
        - {
            ErrorCode.OK,
            ErrorCode.UNAVAILABLE,
            ErrorCode.DEADLINE_EXCEEDED,
            ErrorCode.RESOURCE_EXHAUSTED,
            ErrorCode.ABORTED,
        }
    ),
)
async def test_each_permanent_code_fails_at_once_after_one_attempt(code: ErrorCode) -> None:
    port = ScriptedPort()
    port.single = [error(code)]
    registration, sleep = adapter(port)

    with pytest.raises(RegistrationFailed) as raised:
        await registration.register_worker(make_worker("w-7"))

    assert port.calls == 1
    assert sleep.delays == []
    assert raised.value.attempts == 1
    assert raised.value.code is code
    assert raised.value.worker_id == "w-7"
    assert raised.value.__cause__ is raised.value.cause


async def test_exhausted_retries_raise_max_retries_exceeded_with_attempts_and_last_error() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)] * 3 + [error(ErrorCode.ABORTED)]
    registration, sleep = adapter(port, max_retries=3)

    with pytest.raises(MaxRetriesExceeded) as raised:
        await registration.register_worker(make_worker())

    assert port.calls == 4
    assert raised.value.attempts == 4
    assert raised.value.last_error.code is ErrorCode.ABORTED
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4])


async def test_zero_retries_means_exactly_one_attempt() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)]
    registration, _ = adapter(port, max_retries=0)

    with pytest.raises(MaxRetriesExceeded) as raised:
        await registration.register_worker(make_worker())

    assert raised.value.attempts == 1


async def test_advised_retry_delay_replaces_the_backoff() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.RESOURCE_EXHAUSTED, retry_after=0.75), error(ErrorCode.UNAVAILABLE)]
    registration, sleep = adapter(port)

    await registration.register_worker(make_worker())

    assert sleep.delays == pytest.approx([0.75, 0.2])


async def test_jitter_lengthens_the_delay_by_the_random_fraction() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)]
    sleep = RecordedSleep()
    registration = WorkerRegistrationAdapter(
        port, RegistrationConfig(jitter=0.5), sleep=sleep, random=lambda: 0.5
    )

    await registration.register_worker(make_worker())

    assert sleep.delays == pytest.approx([0.125])


async def test_invalid_worker_is_rejected_before_any_call() -> None:
    port = ScriptedPort()
    registration, _ = adapter(port)

    with pytest.raises(RegistrationFailed) as raised:
        await registration.register_worker(make_worker("", cpu_cores=0))

    assert port.calls == 0
    assert raised.value.attempts == 0
    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert [v.field for v in raised.value.violations] == ["worker_id", "capabilities.cpu_cores"]


async def test_local_validation_can_be_turned_off_to_let_the_server_judge() -> None:
    port = ScriptedPort()
    registration, _ = adapter(port, validate_before_send=False)

    await registration.register_worker(make_worker("", cpu_cores=0))

    assert port.calls == 1


async def test_unregister_retries_transient_errors_and_returns_the_status() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)]
    registration, sleep = adapter(port)

    status = await registration.unregister_worker("w-1")

    assert status is UnregistrationStatus.SUCCESS
    assert port.calls == 2
    assert sleep.delays == pytest.approx([0.1])


async def test_unregister_permanent_error_fails_at_once() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.PERMISSION_DENIED)]
    registration, _ = adapter(port)

    with pytest.raises(RegistrationFailed) as raised:
        await registration.unregister_worker("w-1")

    assert (raised.value.worker_id, raised.value.attempts) == ("w-1", 1)


async def test_empty_batch_makes_no_call() -> None:
    port = ScriptedPort()
    registration, _ = adapter(port)

    assert await registration.register_workers_batch([]) == []
    assert port.batch_calls == []


async def test_batch_results_are_in_input_order_and_isolate_failures() -> None:
    port = ScriptedPort()
    port.batch_script = [{"w-2": error(ErrorCode.PERMISSION_DENIED)}]
    registration, _ = adapter(port)
    workers = [make_worker("w-0"), make_worker("w-1", cpu_cores=-1), make_worker("w-2"), make_worker("w-3")]

    results = await registration.register_workers_batch(workers)

    assert [r.worker_id for r in results] == ["w-0", "w-1", "w-2", "w-3"]
    assert [r.ok for r in results] == [True, False, False, True]
    assert [r.is_ok() for r in results] == [True, False, False, True]
    assert port.batch_calls == [["w-0", "w-2", "w-3"]]  # the invalid worker was never sent
    invalid, refused = results[1].error, results[2].error
    assert isinstance(invalid, RegistrationFailed) and invalid.attempts == 0
    assert isinstance(refused, RegistrationFailed) and refused.code is ErrorCode.PERMISSION_DENIED
    assert results[0].receipt is not None and results[0].receipt.record.worker_id == "w-0"
    assert results[2].receipt is None
    assert [r.attempts for r in results] == [1, 0, 1, 1]


async def test_batch_retries_only_the_workers_that_failed_transiently() -> None:
    port = ScriptedPort()
    port.batch_script = [{"w-1": error(ErrorCode.UNAVAILABLE), "w-3": error(ErrorCode.ABORTED)}, {}]
    registration, sleep = adapter(port)

    results = await registration.register_workers_batch([make_worker(f"w-{i}") for i in range(4)])

    assert all(r.ok for r in results)
    assert port.batch_calls == [["w-0", "w-1", "w-2", "w-3"], ["w-1", "w-3"]]
    assert [r.attempts for r in results] == [1, 2, 1, 2]
    assert sleep.delays == pytest.approx([0.1])


async def test_batch_whole_call_failure_is_retried_for_every_worker_of_the_chunk() -> None:
    port = ScriptedPort()
    port.batch_script = [error(ErrorCode.UNAVAILABLE), {}]
    registration, _ = adapter(port)

    results = await registration.register_workers_batch([make_worker("a"), make_worker("b")])

    assert [r.ok for r in results] == [True, True]
    assert port.batch_calls == [["a", "b"], ["a", "b"]]


async def test_batch_whole_call_permanent_failure_fails_every_worker_of_the_chunk() -> None:
    port = ScriptedPort()
    port.batch_script = [error(ErrorCode.UNIMPLEMENTED)]
    registration, _ = adapter(port)

    results = await registration.register_workers_batch([make_worker("a"), make_worker("b")])

    assert [type(r.error) for r in results] == [RegistrationFailed, RegistrationFailed]
    assert {r.error.code for r in results if r.error} == {ErrorCode.UNIMPLEMENTED}
    assert [r.error.worker_id for r in results if r.error] == ["a", "b"]


async def test_batch_exhaustion_reports_max_retries_exceeded_per_worker() -> None:
    port = ScriptedPort()
    port.batch_script = [{"b": error(ErrorCode.UNAVAILABLE)}] * 3
    registration, sleep = adapter(port, max_retries=2)

    results = await registration.register_workers_batch([make_worker("a"), make_worker("b")])

    assert results[0].ok
    assert isinstance(results[1].error, MaxRetriesExceeded)
    assert results[1].error.attempts == 3
    assert port.batch_calls == [["a", "b"], ["b"], ["b"]]
    assert sleep.delays == pytest.approx([0.1, 0.2])


async def test_batch_waits_the_longest_delay_advised_for_its_workers() -> None:
    port = ScriptedPort()
    port.batch_script = [
        {
            "a": error(ErrorCode.RESOURCE_EXHAUSTED, retry_after=0.3),
            "b": error(ErrorCode.RESOURCE_EXHAUSTED, 0.9),
        }
    ]
    registration, sleep = adapter(port)

    await registration.register_workers_batch([make_worker("a"), make_worker("b")])

    assert sleep.delays == pytest.approx([0.9])


async def test_batch_is_sent_in_chunks_with_bounded_concurrency() -> None:
    port = ScriptedPort()
    registration, _ = adapter(port, batch_size=10, batch_concurrency=3)
    workers = [make_worker(f"w-{i:03}") for i in range(95)]

    results = await registration.register_workers_batch(workers)

    assert [r.worker_id for r in results] == [w.worker_id for w in workers]
    assert all(r.ok for r in results)
    assert sorted(len(call) for call in port.batch_calls) == [5] + [10] * 9
    assert sorted(i for call in port.batch_calls for i in call) == [w.worker_id for w in workers]
    assert port.max_in_flight == 3


async def test_batch_of_one_chunk_uses_one_task() -> None:
    port = ScriptedPort()
    registration, _ = adapter(port, batch_size=100, batch_concurrency=8)

    await registration.register_workers_batch([make_worker(f"w-{i}") for i in range(7)])

    assert port.batch_calls == [[f"w-{i}" for i in range(7)]]
    assert port.max_in_flight == 1


def drained_record(worker_id: str = "w-1", *, drained: bool) -> WorkerRecord:
    return replace(receipt(make_worker(worker_id)).record, drained=drained)


async def test_drain_of_a_worker_the_scheduler_does_not_know_reports_not_registered() -> None:
    port = ScriptedPort()
    port.drain_answer = error(ErrorCode.NOT_FOUND)
    registration, _ = adapter(port)

    result = await registration.drain_worker("w-1", deadline=1.0)

    assert result == DrainResult("w-1", registered=False)


async def test_drain_failing_permanently_raises() -> None:
    port = ScriptedPort()
    port.drain_answer = error(ErrorCode.PERMISSION_DENIED)
    registration, _ = adapter(port)

    with pytest.raises(RegistrationFailed):
        await registration.drain_worker("w-1", deadline=1.0)


async def test_drain_without_a_connected_agent_does_not_wait() -> None:
    port = ScriptedPort()
    port.drain_answer = DrainOutcome(drained_record(drained=False), delivered=False)
    registration, sleep = adapter(port)

    result = await registration.drain_worker("w-1", deadline=1.0)

    assert result == DrainResult("w-1", registered=True, delivered=False, drained=False)
    assert sleep.delays == []


async def test_drain_waits_until_the_agent_reports_drained() -> None:
    port = ScriptedPort()
    port.drain_answer = DrainOutcome(drained_record(drained=False), delivered=True)
    port.records = [drained_record(drained=False), error(ErrorCode.UNAVAILABLE), drained_record(drained=True)]
    registration, sleep = adapter(port)

    result = await registration.drain_worker("w-1", deadline=5.0, poll_interval=0.01)

    assert result == DrainResult("w-1", registered=True, delivered=True, drained=True)
    assert sleep.delays == [0.01, 0.01, 0.01]
    assert port.records == []


async def test_drain_of_an_already_drained_worker_returns_at_once() -> None:
    port = ScriptedPort()
    port.drain_answer = DrainOutcome(drained_record(drained=True), delivered=True)
    registration, sleep = adapter(port)

    result = await registration.drain_worker("w-1", deadline=5.0)

    assert result.drained and sleep.delays == []


async def test_drain_of_a_worker_that_unregistered_itself_counts_as_drained() -> None:
    port = ScriptedPort()
    port.drain_answer = DrainOutcome(drained_record(drained=False), delivered=True)
    port.records = [None]
    registration, _ = adapter(port)

    result = await registration.drain_worker("w-1", deadline=5.0)

    assert result == DrainResult("w-1", registered=True, delivered=True, drained=True)


async def test_drain_polling_stops_on_a_permanent_error() -> None:
    port = ScriptedPort()
    port.drain_answer = DrainOutcome(drained_record(drained=False), delivered=True)
    port.records = [error(ErrorCode.PERMISSION_DENIED)]
    registration, _ = adapter(port)

    with pytest.raises(RegistrationFailed) as raised:
        await registration.drain_worker("w-1", deadline=5.0)

    assert raised.value.code is ErrorCode.PERMISSION_DENIED


async def test_drain_gives_up_at_the_deadline_and_says_not_drained() -> None:
    port = ScriptedPort()
    port.drain_answer = DrainOutcome(drained_record(drained=False), delivered=True)
    port.records = [drained_record(drained=False)] * 1000
    registration = WorkerRegistrationAdapter(
        port, RegistrationConfig()
    )  # real sleep: the deadline is real time

    result = await registration.drain_worker("w-1", deadline=0.05, poll_interval=0.01)

    assert result == DrainResult("w-1", registered=True, delivered=True, drained=False)


async def test_a_batch_checks_a_config_shared_by_many_workers_once_and_still_names_each_worker() -> None:
    from hodei import DynamicWorkerConfig, WorkerType

    port = ScriptedPort()
    registration, _ = adapter(port)
    bad = DynamicWorkerConfig(cpu_cores=0)
    workers = [DynamicWorker(f"w-{i}", WorkerType.DOCKER, bad) for i in range(3)] + [make_worker("ok")]

    results = await registration.register_workers_batch(workers)

    assert [r.ok for r in results] == [False, False, False, True]
    assert [r.error.worker_id for r in results if r.error] == ["w-0", "w-1", "w-2"]
    assert {v.field for r in results if r.error for v in r.error.violations} == {"capabilities.cpu_cores"}
    assert port.batch_calls == [["ok"]]


async def test_each_retry_and_the_outcome_are_logged_with_the_worker_the_attempt_and_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)]
    registration, _ = adapter(port)

    await registration.register_worker(make_worker("w-logged"))
    await registration.unregister_worker("w-logged")

    logged = [(r.getMessage(), r.__dict__) for r in caplog.records if r.name == "hodei.registration"]
    assert [message for message, _ in logged] == [
        "registration.retrying",
        "registration.succeeded",
        "unregistration.succeeded",
    ]
    retrying, succeeded, unregistered = (fields for _, fields in logged)
    assert (retrying["worker_id"], retrying["attempt"], retrying["code"]) == ("w-logged", 1, "UNAVAILABLE")
    assert retrying["backoff_s"] == pytest.approx(0.1)
    assert (succeeded["attempts"], succeeded["worker_type"]) == (2, "docker")
    assert "worker_type" not in unregistered
