"""WorkerRegistrationAdapter against a scripted SchedulerPort: the retry logic, with no network and no sleeping.

The port is the adapter's own collaborator, so a scripted one is right here; the same behaviours are checked
end to end over real gRPC in tests/integration.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    ErrorCode,
    InvalidWorkerData,
    MaxRetriesExceeded,
    RegistrationConfig,
    RegistrationFailed,
    UnregistrationStatus,
    WorkerRegistrationAdapter,
    WorkerType,
)
from hodei.domain import FieldViolation
from hodei.errors import scheduler_error_for
from hodei.observability import _tracing as tracing
from hodei.ports import DrainOutcome
from hodei.registration import DrainResult
from tests.helpers import make_worker
from tests.helpers import metric as value
from tests.unit.helpers import RecordedSleep, ScriptedPort, adapter, drained_record, error, receipt


def attributes_of(exporter: InMemorySpanExporter, name: str) -> list[dict[str, Any]]:
    found: Sequence[ReadableSpan] = exporter.get_finished_spans()
    return [dict(span.attributes or {}) for span in found if span.name == name]


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    return [(r.getMessage(), r.__dict__) for r in caplog.records if r.name == "hodei.registration"]


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


async def test_unregistration_sends_the_worker_id_with_the_attempt_deadline() -> None:
    port = ScriptedPort()
    registration, _ = adapter(port, registration_timeout=2.5)

    assert await registration.unregister_worker("w-gone") is UnregistrationStatus.SUCCESS

    assert port.args == [("unregister_worker", "w-gone", 2.5)]


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


async def test_a_batch_call_gets_the_attempt_deadline_and_its_spans_the_sizes_and_attempts(
    spans: InMemorySpanExporter,
) -> None:
    port = ScriptedPort()
    port.batch_script = [{"w-0": error(ErrorCode.UNAVAILABLE)}]
    registration, _ = adapter(port, registration_timeout=2.5)

    await registration.register_workers_batch([make_worker(f"w-{i}") for i in range(3)])

    assert port.args == [("register_workers", 3, 2.5), ("register_workers", 1, 2.5)]
    assert attributes_of(spans, "register_workers_batch") == [{tracing.WORKERS: 3, "hodei.failed_workers": 0}]
    assert attributes_of(spans, "register_workers.attempt") == [
        {tracing.WORKERS: 3, tracing.ATTEMPT: 1},
        {tracing.WORKERS: 1, tracing.ATTEMPT: 2},
    ]


async def test_a_batch_logs_its_retries_and_the_workers_that_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    port = ScriptedPort()
    port.batch_script = [
        {"w-0": error(ErrorCode.UNAVAILABLE), "w-1": error(ErrorCode.UNAVAILABLE)},
        {"w-1": error(ErrorCode.NOT_FOUND)},
    ]
    registration, _ = adapter(port)

    await registration.register_workers_batch([make_worker(f"w-{i}") for i in range(3)])

    (retrying, finished) = (fields for _, fields in logged(caplog))
    assert (retrying["workers"], retrying["attempt"], retrying["codes"]) == (2, 1, {"UNAVAILABLE": 2})
    assert (finished["registered"], finished["failed_worker_ids"]) == (2, ["w-1"])


async def test_batch_failures_carry_the_worker_the_last_error_and_the_attempt_count() -> None:
    port = ScriptedPort()
    last = error(ErrorCode.UNAVAILABLE)
    port.batch_script = [
        {"w-0": error(ErrorCode.UNAVAILABLE), "w-1": error(ErrorCode.NOT_FOUND)},
        {"w-0": last},
    ]
    registration, _ = adapter(port, max_retries=1)

    exhausted, refused = await registration.register_workers_batch([make_worker("w-0"), make_worker("w-1")])

    assert (exhausted.worker_id, exhausted.attempts) == ("w-0", 2)
    assert isinstance(exhausted.error, MaxRetriesExceeded)
    assert (exhausted.error.worker_id, exhausted.error.cause, exhausted.error.attempts) == ("w-0", last, 2)
    assert (refused.worker_id, refused.attempts) == ("w-1", 1)
    assert isinstance(refused.error, RegistrationFailed)
    assert (refused.error.worker_id, refused.error.attempts) == ("w-1", 1)


async def test_a_batch_counts_each_group_of_outcomes_and_retries_by_code() -> None:
    port = ScriptedPort()
    port.batch_script = [
        {
            "w-0": error(ErrorCode.UNAVAILABLE),
            "w-1": error(ErrorCode.UNAVAILABLE),
            "w-2": error(ErrorCode.ABORTED),
        },
    ]
    registration, _ = adapter(port)
    registry = registration.metrics.registry

    await registration.register_workers_batch([make_worker(f"w-{i}") for i in range(4)])

    assert value(registry, "hodei_registrations_total", result="success", worker_type="docker") == 4
    assert value(registry, "hodei_registration_retries_total", cause="unavailable") == 2
    assert value(registry, "hodei_registration_retries_total", cause="aborted") == 1
    assert value(registry, "hodei_registration_attempts_count") == 4
    assert value(registry, "hodei_registration_attempts_sum") == 1 + 2 * 3
    assert 0 <= value(registry, "hodei_registration_duration_seconds_sum", worker_type="docker") < 5


class ShortPort(ScriptedPort):
    """A broken port: one outcome fewer than the workers it was sent."""

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[Any]:
        return [receipt(w) for w in workers][:-1]


async def test_a_port_answering_fewer_outcomes_than_workers_is_an_error_not_a_lost_worker() -> None:
    registration, _ = adapter(ShortPort())

    with pytest.raises(ExceptionGroup) as failed:
        await registration.register_workers_batch([make_worker("w-0"), make_worker("w-1")])

    assert failed.group_contains(ValueError)


async def test_drain_of_a_worker_the_scheduler_does_not_know_reports_not_registered() -> None:
    port = ScriptedPort()
    port.drain_answer = error(ErrorCode.NOT_FOUND)
    registration, _ = adapter(port)

    result = await registration.drain_worker("w-1", deadline=1.0)

    assert result == DrainResult("w-1", registered=False)


async def test_a_drain_only_of_an_idle_worker_that_is_busy_reports_it_busy_after_one_attempt() -> None:
    port = ScriptedPort()
    port.drain_answer = scheduler_error_for(
        ErrorCode.FAILED_PRECONDITION, "worker w-1 is busy", violations=[FieldViolation("status", "is busy")]
    )
    registration, _ = adapter(port)

    result = await registration.drain_worker("w-1", deadline=1.0, only_if_available=True)

    assert result == DrainResult("w-1", registered=True, busy=True)
    assert port.calls == 1  # not retried: nothing changed, and nothing will by asking again


async def test_a_drain_refused_for_good_raises_naming_the_worker_after_one_attempt() -> None:
    port = ScriptedPort()
    port.drain_answer = error(ErrorCode.PERMISSION_DENIED)
    registration, _ = adapter(port)

    with pytest.raises(RegistrationFailed) as refused:
        await registration.drain_worker("w-1", deadline=1.0)

    assert (refused.value.worker_id, refused.value.attempts) == ("w-1", 1)


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


async def test_drain_sends_the_worker_id_deadline_and_attempt_deadline_then_polls_at_the_default_interval() -> (
    None
):
    port = ScriptedPort()
    port.drain_answer = DrainOutcome(drained_record("w-1", drained=False), delivered=True)
    port.records = [drained_record("w-1", drained=True)]
    registration, sleep = adapter(port, registration_timeout=2.5)

    result = await registration.drain_worker("w-1", deadline=30.0)

    assert (result.registered, result.delivered, result.drained) == (True, True, True)
    assert port.args == [("drain_worker", "w-1", 30.0, 2.5), ("get_worker", "w-1", 2.5)]
    assert sleep.delays == [0.05]


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


async def test_drain_polling_stops_on_a_permanent_error_naming_the_worker_after_one_attempt() -> None:
    port = ScriptedPort()
    port.drain_answer = DrainOutcome(drained_record(drained=False), delivered=True)
    port.records = [error(ErrorCode.PERMISSION_DENIED)]
    registration, _ = adapter(port)

    with pytest.raises(RegistrationFailed) as raised:
        await registration.drain_worker("w-1", deadline=5.0)

    assert raised.value.code is ErrorCode.PERMISSION_DENIED
    assert (raised.value.worker_id, raised.value.attempts) == ("w-1", 1)


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
    port = ScriptedPort()
    registration, _ = adapter(port)
    bad = DynamicWorkerConfig(cpu_cores=0)
    workers = [DynamicWorker(f"w-{i}", WorkerType.DOCKER, bad) for i in range(3)] + [make_worker("ok")]

    results = await registration.register_workers_batch(workers)

    assert [r.ok for r in results] == [False, False, False, True]
    assert [r.error.worker_id for r in results if r.error] == ["w-0", "w-1", "w-2"]
    assert {v.field for r in results if r.error for v in r.error.violations} == {"capabilities.cpu_cores"}
    assert port.batch_calls == [["ok"]]


async def test_a_batch_checks_each_distinct_config_once_and_never_mixes_two_configs_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[DynamicWorkerConfig] = []
    original = DynamicWorkerConfig.violations

    def counting(self: DynamicWorkerConfig) -> list[FieldViolation]:
        checked.append(self)
        return original(self)

    monkeypatch.setattr(DynamicWorkerConfig, "violations", counting)
    good, bad = DynamicWorkerConfig(), DynamicWorkerConfig(cpu_cores=0)
    workers = [DynamicWorker(f"w-{i}", WorkerType.DOCKER, good if i % 2 else bad) for i in range(6)]
    port = ScriptedPort()
    registration, _ = adapter(port)

    results = await registration.register_workers_batch(workers)

    assert [r.ok for r in results] == [False, True, False, True, False, True]
    assert len(checked) == 2
    assert port.batch_calls == [["w-1", "w-3", "w-5"]]


# --- one worker: what is logged, traced and counted -------------------------------------------------------------------


async def test_each_retry_and_the_outcome_are_logged_with_the_worker_the_attempt_and_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)]
    registration, _ = adapter(port)

    await registration.register_worker(make_worker("w-logged"))
    await registration.unregister_worker("w-logged")

    entries = logged(caplog)
    assert [message for message, _ in entries] == [
        "registration.retrying",
        "registration.succeeded",
        "unregistration.succeeded",
    ]
    retrying, succeeded, unregistered = (fields for _, fields in entries)
    assert (retrying["worker_id"], retrying["attempt"], retrying["code"]) == ("w-logged", 1, "UNAVAILABLE")
    assert retrying["backoff_s"] == pytest.approx(0.1)
    assert (succeeded["attempts"], succeeded["worker_type"]) == (2, "docker")
    assert "worker_type" not in unregistered


async def test_a_rejected_registration_is_logged_and_traced_with_worker_type_attempt_and_reason(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    port = ScriptedPort()
    port.single = [error(ErrorCode.NOT_FOUND)]
    registration, _ = adapter(port)

    with pytest.raises(RegistrationFailed):
        await registration.register_worker(make_worker("w-refused"))

    ((message, fields),) = logged(caplog)
    assert message == "registration.failed"
    assert (fields["worker_id"], fields["worker_type"], fields["attempts"], fields["reason"]) == (
        "w-refused",
        "docker",
        1,
        "rejected",
    )
    worker = {tracing.WORKER_ID: "w-refused", tracing.WORKER_TYPE: "docker"}
    assert attributes_of(spans, "register_worker") == [worker]
    (attempt,) = attributes_of(spans, "register_worker.attempt")
    assert {k: attempt[k] for k in (*worker, tracing.ATTEMPT)} == {**worker, tracing.ATTEMPT: 1}


async def test_an_exhausted_registration_is_logged_with_worker_type_attempts_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE), error(ErrorCode.UNAVAILABLE)]
    registration, _ = adapter(port, max_retries=1)

    with pytest.raises(MaxRetriesExceeded) as exhausted:
        await registration.register_worker(make_worker("w-tired"))

    assert (exhausted.value.worker_id, exhausted.value.attempts) == ("w-tired", 2)
    retrying, failed = (fields for _, fields in logged(caplog))
    assert (retrying["worker_id"], retrying["worker_type"]) == ("w-tired", "docker")
    assert (failed["worker_id"], failed["worker_type"], failed["attempts"], failed["reason"]) == (
        "w-tired",
        "docker",
        2,
        "exhausted",
    )


async def test_a_successful_registration_is_logged_with_its_worker_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    registration, _ = adapter(ScriptedPort())

    await registration.register_worker(make_worker("w-ok"))

    ((message, fields),) = logged(caplog)
    assert (message, fields["worker_id"], fields["attempts"]) == ("registration.succeeded", "w-ok", 1)


async def test_an_invalid_worker_is_logged_as_not_sent_and_counted_as_rejected_without_an_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    port = ScriptedPort()
    registration, _ = adapter(port)
    registry = registration.metrics.registry

    with pytest.raises(RegistrationFailed) as rejected:
        await registration.register_worker(make_worker("w-bad", cpu_cores=0))

    cause = rejected.value.cause
    assert isinstance(cause, InvalidWorkerData)
    assert (cause.message, cause.worker_id) == ("worker 'w-bad' is invalid; not sent", "w-bad")
    ((message, fields),) = logged(caplog)
    assert (message, fields["worker_id"], fields["worker_type"], fields["reason"]) == (
        "registration.failed",
        "w-bad",
        "docker",
        "invalid",
    )
    assert value(registry, "hodei_registrations_total", result="rejected", worker_type="docker") == 1
    assert value(registry, "hodei_registration_attempts_count") == 0
    assert port.calls == 0


async def test_a_registration_after_one_retry_counts_two_attempts_one_retry_and_a_short_duration() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)]
    registration, _ = adapter(port)
    registry = registration.metrics.registry

    await registration.register_worker(make_worker("w-1"))

    assert value(registry, "hodei_registrations_total", result="success", worker_type="docker") == 1
    assert value(registry, "hodei_registration_attempts_count") == 1
    assert value(registry, "hodei_registration_attempts_sum") == 2
    assert value(registry, "hodei_registration_retries_total", cause="unavailable") == 1
    assert value(registry, "hodei_registration_duration_seconds_count", worker_type="docker") == 1
    assert 0 <= value(registry, "hodei_registration_duration_seconds_sum", worker_type="docker") < 5


async def test_an_exhausted_registration_counts_its_attempts_and_a_short_duration() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)] * 3
    registration, _ = adapter(port, max_retries=2)
    registry = registration.metrics.registry

    with pytest.raises(MaxRetriesExceeded):
        await registration.register_worker(make_worker("w-1"))

    assert value(registry, "hodei_registrations_total", result="exhausted", worker_type="docker") == 1
    assert value(registry, "hodei_registration_attempts_sum") == 3
    assert 0 <= value(registry, "hodei_registration_duration_seconds_sum", worker_type="docker") < 5
