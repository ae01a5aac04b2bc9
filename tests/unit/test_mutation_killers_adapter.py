"""What the registration adapter tells the port, the metrics, the logs and the traces, checked to the value:
the tests that kill what `make mutation` found surviving in registration/_adapter.py.

The scripted port of tests/unit/test_adapter.py is reused, recording what each call was given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from hodei import (
    DynamicWorker,
    DynamicWorkerConfig,
    ErrorCode,
    InvalidWorkerData,
    MaxRetriesExceeded,
    RegistrationConfig,
    RegistrationFailed,
    WorkerRegistrationAdapter,
    WorkerType,
)
from hodei.domain import FieldViolation
from hodei.observability import _tracing as tracing
from hodei.observability._metrics import ControlPlaneMetrics
from hodei.ports import DrainOutcome, UnregistrationStatus
from tests.helpers import make_worker
from tests.helpers import metric as value
from tests.unit.test_adapter import RecordedSleep, ScriptedPort, drained_record, error, receipt


class RecordingPort(ScriptedPort):
    """The scripted port, keeping the arguments of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.args: list[tuple[Any, ...]] = []

    async def unregister_worker(
        self, worker_id: str, *, incarnation: int | None = None, timeout: float | None = None
    ) -> UnregistrationStatus:
        self.args.append(("unregister_worker", worker_id, timeout))
        return await super().unregister_worker(worker_id, incarnation=incarnation, timeout=timeout)

    async def drain_worker(
        self, worker_id: str, *, deadline: float = 0.0, reason: str = "", timeout: float | None = None
    ) -> DrainOutcome:
        self.args.append(("drain_worker", worker_id, deadline, timeout))
        return await super().drain_worker(worker_id, deadline=deadline, reason=reason, timeout=timeout)

    async def get_worker(self, worker_id: str, *, timeout: float | None = None) -> Any:
        self.args.append(("get_worker", worker_id, timeout))
        return await super().get_worker(worker_id, timeout=timeout)

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[Any]:
        self.args.append(("register_workers", len(workers), timeout))
        return await super().register_workers(workers, timeout=timeout)


def metered(
    port: ScriptedPort, **config: object
) -> tuple[WorkerRegistrationAdapter, RecordedSleep, CollectorRegistry]:
    sleep = RecordedSleep()
    metrics = ControlPlaneMetrics()
    registration = WorkerRegistrationAdapter(
        port,
        RegistrationConfig(**config),  # type: ignore[arg-type]
        sleep=sleep,
        random=lambda: 0.0,
        metrics=metrics,
    )
    return registration, sleep, metrics.registry


def attributes_of(exporter: InMemorySpanExporter, name: str) -> list[dict[str, Any]]:
    found: Sequence[ReadableSpan] = exporter.get_finished_spans()
    return [dict(span.attributes or {}) for span in found if span.name == name]


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    return [(r.getMessage(), r.__dict__) for r in caplog.records if r.name == "hodei.registration"]


# --- one worker: what is logged and traced -----------------------------------------------------------------


async def test_a_rejected_registration_is_logged_and_traced_with_worker_type_attempt_and_reason(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    port = ScriptedPort()
    port.single = [error(ErrorCode.NOT_FOUND)]
    registration, _, _ = metered(port)

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
    registration, _, _ = metered(port, max_retries=1)

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
    registration, _, _ = metered(ScriptedPort())

    await registration.register_worker(make_worker("w-ok"))

    ((message, fields),) = logged(caplog)
    assert (message, fields["worker_id"], fields["attempts"]) == ("registration.succeeded", "w-ok", 1)


async def test_an_invalid_worker_is_logged_as_not_sent_and_counted_as_rejected_without_an_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hodei.registration")
    port = ScriptedPort()
    registration, _, registry = metered(port)

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


# --- one worker: what is counted ---------------------------------------------------------------------------


async def test_a_registration_after_one_retry_counts_two_attempts_one_retry_and_a_short_duration() -> None:
    port = ScriptedPort()
    port.single = [error(ErrorCode.UNAVAILABLE)]
    registration, _, registry = metered(port)

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
    registration, _, registry = metered(port, max_retries=2)

    with pytest.raises(MaxRetriesExceeded):
        await registration.register_worker(make_worker("w-1"))

    assert value(registry, "hodei_registrations_total", result="exhausted", worker_type="docker") == 1
    assert value(registry, "hodei_registration_attempts_sum") == 3
    assert 0 <= value(registry, "hodei_registration_duration_seconds_sum", worker_type="docker") < 5


# --- unregistration and drain: what the port is given ------------------------------------------------------


async def test_unregistration_sends_the_worker_id_with_the_attempt_deadline() -> None:
    port = RecordingPort()
    registration, _, _ = metered(port, registration_timeout=2.5)

    assert await registration.unregister_worker("w-gone") is UnregistrationStatus.SUCCESS

    assert port.args == [("unregister_worker", "w-gone", 2.5)]


async def test_drain_sends_the_worker_id_deadline_and_attempt_deadline_then_polls_at_the_default_interval() -> (
    None
):
    port = RecordingPort()
    port.drain_answer = DrainOutcome(drained_record("w-1", drained=False), delivered=True)
    port.records = [drained_record("w-1", drained=True)]
    registration, sleep, _ = metered(port, registration_timeout=2.5)

    result = await registration.drain_worker("w-1", deadline=30.0)

    assert (result.registered, result.delivered, result.drained) == (True, True, True)
    assert port.args == [("drain_worker", "w-1", 30.0, 2.5), ("get_worker", "w-1", 2.5)]
    assert sleep.delays == [0.05]


async def test_a_drain_refused_for_good_names_the_worker() -> None:
    port = RecordingPort()
    port.drain_answer = error(ErrorCode.PERMISSION_DENIED)
    registration, _, _ = metered(port)

    with pytest.raises(RegistrationFailed) as refused:
        await registration.drain_worker("w-1", deadline=1.0)

    assert (refused.value.worker_id, refused.value.attempts) == ("w-1", 1)


async def test_a_drain_whose_polling_is_refused_for_good_names_the_worker_after_one_attempt() -> None:
    port = RecordingPort()
    port.drain_answer = DrainOutcome(drained_record("w-1", drained=False), delivered=True)
    port.records = [error(ErrorCode.PERMISSION_DENIED)]
    registration, _, _ = metered(port)

    with pytest.raises(RegistrationFailed) as refused:
        await registration.drain_worker("w-1", deadline=30.0)

    assert (refused.value.worker_id, refused.value.attempts) == ("w-1", 1)


# --- batches ------------------------------------------------------------------------------------------------


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
    registration, _, _ = metered(port)

    results = await registration.register_workers_batch(workers)

    assert [r.ok for r in results] == [False, True, False, True, False, True]
    assert len(checked) == 2
    assert port.batch_calls == [["w-1", "w-3", "w-5"]]


async def test_a_batch_call_gets_the_attempt_deadline_and_its_spans_the_sizes_and_attempts(
    spans: InMemorySpanExporter,
) -> None:
    port = RecordingPort()
    port.batch_script = [{"w-0": error(ErrorCode.UNAVAILABLE)}]
    registration, _, _ = metered(port, registration_timeout=2.5)

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
    registration, _, _ = metered(port)

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
    registration, _, _ = metered(port, max_retries=1)

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
    registration, _, registry = metered(port)

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
    registration, _, _ = metered(ShortPort())

    with pytest.raises(ExceptionGroup) as failed:
        await registration.register_workers_batch([make_worker("w-0"), make_worker("w-1")])

    assert failed.group_contains(ValueError)
