"""The codec: proto messages and domain objects convert both ways without loss, and bad input is named."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from hodei.domain import (
    Assignment,
    DynamicWorker,
    DynamicWorkerConfig,
    FieldViolation,
    Job,
    ResourceUsage,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
    validate_worker,
    wire_size,
)
from hodei.errors import (
    ErrorCode,
    InvalidWorkerData,
    SchedulerInternalError,
    SchedulerOverloaded,
    SchedulerUnavailable,
)
from hodei.ports import RegistrationReceipt, UnregistrationStatus, WorkerFilter
from hodei.transport._codec import (
    RequestEncoder,
    Shapes,
    _records,
    filter_from_proto,
    filter_to_proto,
    pb,
    receipt_from_proto,
    record_from_proto,
    record_from_request,
    record_to_proto,
    registration_answer,
    registration_result_to_proto,
    result_from_proto,
    status_from_proto,
    status_to_proto,
    unregistration_from_proto,
    unregistration_to_proto,
    worker_from_request,
    worker_to_request,
)
from tests.helpers import make_worker

REGISTERED_AT = datetime(2024, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
UPDATED_AT = datetime(2024, 3, 2, 9, 0, 0, 654321, tzinfo=UTC)


def full_worker(worker_type: WorkerType = WorkerType.PROCESS) -> DynamicWorker:
    config = DynamicWorkerConfig(
        worker_type=worker_type,
        cpu_cores=16,
        memory_mb=65536,
        disk_mb=200_000,
        gpu_count=2,
        labels={"arch": "amd64", "kubernetes.io/os": "linux"},
        pool="gpu",
    )
    return DynamicWorker("worker-1", worker_type, config, incarnation=7, hostname="host-1.lan")


def full_record(**overrides: object) -> WorkerRecord:
    values: dict[str, object] = {
        "worker_id": "worker-1",
        "worker_type": WorkerType.DOCKER,
        "capabilities": WorkerCapabilities(cpu_cores=4, memory_mb=8192, disk_mb=1000, gpu_count=1),
        "status": WorkerStatus.BUSY,
        "labels": {"arch": "arm64"},
        "pool": "ci",
        "hostname": "host-1",
        "agent_version": "1.4.0",
        "incarnation": 3,
        "registered_at": REGISTERED_AT,
        "updated_at": UPDATED_AT,
    }
    values.update(overrides)
    return WorkerRecord(**values)  # type: ignore[arg-type]


def fields_of(error: InvalidWorkerData) -> list[str]:
    return [violation.field for violation in error.violations]


# --- registration requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("worker_type", list(WorkerType))
def test_a_worker_survives_the_round_trip_through_a_request(worker_type: WorkerType) -> None:
    worker = full_worker(worker_type)

    assert worker_from_request(worker_to_request(worker)) == worker


def test_a_default_worker_survives_the_round_trip_through_a_request() -> None:
    worker = make_worker("worker-2")

    assert worker_from_request(worker_to_request(worker)) == worker


def test_a_request_carries_every_field_of_the_worker() -> None:
    request = worker_to_request(full_worker())

    assert request == pb.RegisterWorkerRequest(
        worker_id="worker-1",
        capabilities=pb.WorkerCapabilities(cpu_cores=16, memory_mb=65536, disk_mb=200_000, gpu_count=2),
        metadata=pb.WorkerMetadata(
            worker_type="process",
            labels={"arch": "amd64", "kubernetes.io/os": "linux"},
            pool="gpu",
            hostname="host-1.lan",
        ),
        incarnation=7,
    )


def test_a_request_without_a_pool_decodes_to_the_default_pool() -> None:
    request = worker_to_request(make_worker("worker-1"))
    request.metadata.pool = ""

    assert worker_from_request(request).pool == "default"


def test_an_unknown_worker_type_is_refused_with_every_violation_of_the_request() -> None:
    request = worker_to_request(make_worker("bad id", cpu_cores=0))
    request.metadata.worker_type = "vm"

    with pytest.raises(InvalidWorkerData) as refused:
        worker_from_request(request)

    assert refused.value.worker_id == "bad id"
    assert fields_of(refused.value) == ["worker_id", "capabilities.cpu_cores", "metadata.worker_type"]
    assert refused.value.violations[2] == FieldViolation(
        "metadata.worker_type", "must be one of docker, process, kubernetes, static, mock, got 'vm'"
    )


def test_missing_capabilities_are_refused_with_every_violation_of_the_request() -> None:
    request = worker_to_request(make_worker("bad id", labels={"bad key": "v"}))
    request.ClearField("capabilities")
    request.metadata.hostname = "-host"
    request.metadata.agent_version = "1.0 beta"

    with pytest.raises(InvalidWorkerData) as refused:
        worker_from_request(request)

    assert fields_of(refused.value) == [
        "worker_id",
        "capabilities",
        "metadata.labels['bad key']",
        "metadata.hostname",
        "metadata.agent_version",
    ]


def test_a_request_with_both_an_unknown_type_and_no_capabilities_names_both() -> None:
    request = pb.RegisterWorkerRequest(worker_id="worker-1", metadata=pb.WorkerMetadata(worker_type=""))

    with pytest.raises(InvalidWorkerData) as refused:
        worker_from_request(request)

    assert fields_of(refused.value) == ["capabilities", "metadata.worker_type"]


def test_a_decodable_but_invalid_request_is_left_for_the_registry_to_refuse() -> None:
    request = worker_to_request(make_worker("worker-1", cpu_cores=1))
    request.capabilities.cpu_cores = -3
    request.worker_id = "bad id"

    worker = worker_from_request(request)

    assert worker.capabilities.cpu_cores == -3
    assert [v.field for v in validate_worker(worker)] == ["worker_id", "capabilities.cpu_cores"]


# --- shapes: the workers of one shape decoded once ------------------------------------------------------


def request_in_shape(worker_id: str, *, hostname: str = "", **config: object) -> pb.RegisterWorkerRequest:
    request = worker_to_request(make_worker(worker_id, **config))
    request.metadata.hostname = hostname
    return request


def test_records_of_one_shape_share_its_config_and_differ_in_what_is_their_own() -> None:
    shapes = Shapes()
    first = record_from_request(
        request_in_shape("worker-1", hostname="host-1", labels={"arch": "amd64"}),
        registered_at=REGISTERED_AT,
        shapes=shapes,
    )
    second = record_from_request(
        request_in_shape("worker-2", hostname="host-2", labels={"arch": "amd64"}),
        registered_at=UPDATED_AT,
        shapes=shapes,
    )

    assert len(shapes) == 1
    assert first.labels is second.labels  # one shape's, not a copy each
    assert (first.worker_id, first.hostname, first.registered_at) == ("worker-1", "host-1", REGISTERED_AT)
    assert (second.worker_id, second.hostname, second.registered_at) == ("worker-2", "host-2", UPDATED_AT)
    assert first.verdict == second.verdict == ()


@pytest.mark.parametrize(
    "other",
    [
        {"labels": {"arch": "arm64"}},
        {"labels": {"arch": "amd64", "gpu": "yes"}},
        {"cpu_cores": 3},
        {"memory_mb": 1},
        {"disk_mb": 5},
        {"gpu_count": 1},
        {"pool": "gpu"},
    ],
)
def test_a_request_that_differs_in_its_shape_gets_a_shape_of_its_own(other: dict[str, object]) -> None:
    shapes = Shapes()
    base = record_from_request(
        request_in_shape("worker-1", labels={"arch": "amd64"}), registered_at=REGISTERED_AT, shapes=shapes
    )
    config: dict[str, object] = {"labels": {"arch": "amd64"}, **other}
    changed = record_from_request(
        request_in_shape("worker-2", **config), registered_at=REGISTERED_AT, shapes=shapes
    )

    assert len(shapes) == 2
    assert changed == record_from_request(request_in_shape("worker-2", **config), registered_at=REGISTERED_AT)
    assert changed.labels is not base.labels


def test_a_request_without_capabilities_never_takes_a_kept_shape() -> None:
    shapes = Shapes()
    zero = request_in_shape("worker-1", cpu_cores=0, memory_mb=0)
    kept = request_in_shape("worker-3")
    absent = request_in_shape("worker-2")
    absent.ClearField("capabilities")
    # All-zero capabilities decode (and the registry refuses them); absent ones cannot be decoded at all, not
    # even when a shape of the same type, labels and pool is kept.
    assert record_from_request(zero, registered_at=REGISTERED_AT, shapes=shapes).verdict != ()
    assert record_from_request(kept, registered_at=REGISTERED_AT, shapes=shapes).verdict == ()

    with pytest.raises(InvalidWorkerData) as refused:
        record_from_request(absent, registered_at=REGISTERED_AT, shapes=shapes)

    assert "capabilities" in fields_of(refused.value)


def test_shapes_keep_at_most_their_size_dropping_the_oldest_first() -> None:
    shapes = Shapes(size=2)
    first = {
        pool: record_from_request(
            request_in_shape(f"in-{pool}", pool=pool), registered_at=REGISTERED_AT, shapes=shapes
        )
        for pool in ("a", "b", "c")
    }
    b_again = record_from_request(
        request_in_shape("again-b", pool="b"), registered_at=REGISTERED_AT, shapes=shapes
    )
    first_again = record_from_request(
        request_in_shape("again", pool="a"), registered_at=REGISTERED_AT, shapes=shapes
    )

    assert len(shapes) == 2
    assert first_again.pool == "a"
    assert b_again.labels is first["b"].labels  # "b" was kept
    assert first_again.labels is not first["a"].labels  # "a", the oldest, was dropped


def test_an_invalid_shape_is_never_kept_and_is_refused_every_time() -> None:
    shapes = Shapes()
    hostile = {"bad key": "x" * 100_000, **{f"k{i}": "v" for i in range(100)}}
    for worker_id in ("worker-1", "worker-2"):
        record = record_from_request(
            request_in_shape(worker_id, labels=hostile), registered_at=REGISTERED_AT, shapes=shapes
        )
        fields = [violation.field for violation in record.verdict]
        assert "metadata.labels" in fields
        assert "metadata.labels['bad key']" in fields

    assert len(shapes) == 0


def test_an_undecodable_request_is_refused_alike_with_or_without_shapes() -> None:
    shapes = Shapes()
    request = worker_to_request(make_worker("bad id", cpu_cores=0))
    request.metadata.worker_type = "vm"

    with pytest.raises(InvalidWorkerData) as alone:
        record_from_request(request, registered_at=REGISTERED_AT)
    with pytest.raises(InvalidWorkerData) as shaped:
        record_from_request(request, registered_at=REGISTERED_AT, shapes=shapes)

    assert shaped.value.violations == alone.value.violations
    assert len(shapes) == 0


def test_a_hello_decoded_in_a_shape_is_the_worker_it_says() -> None:
    shapes = Shapes()
    worker = full_worker()
    twin = DynamicWorker("worker-2", worker.worker_type, worker.config, incarnation=1, hostname="host-2")

    first = worker_from_request(worker_to_request(worker), shapes)
    second = worker_from_request(worker_to_request(twin), shapes)

    assert (first, second) == (worker, twin)
    assert first.config is second.config
    assert len(shapes) == 1


# --- the client's encoder -------------------------------------------------------------------------------


def test_the_encoder_gives_the_request_worker_to_request_gives() -> None:
    encoder = RequestEncoder()
    worker = full_worker()
    twin = DynamicWorker("worker-2", worker.worker_type, worker.config, incarnation=9, hostname="host-1.lan")
    elsewhere = DynamicWorker("worker-3", worker.worker_type, worker.config, hostname="host-3")

    assert [encoder.request(w) for w in (worker, twin, elsewhere)] == [
        worker_to_request(w) for w in (worker, twin, elsewhere)
    ]
    assert len(encoder) == 2  # one config, two hostnames


def test_the_encoder_keeps_at_most_its_size() -> None:
    encoder = RequestEncoder(size=2)
    workers = [make_worker(f"worker-{i}", pool=f"pool-{i}") for i in range(3)]

    assert [encoder.request(w) for w in [*workers, workers[0]]] == [
        worker_to_request(w) for w in [*workers, workers[0]]
    ]
    assert len(encoder) == 2


def test_the_encoder_asks_for_a_slim_answer_only_when_told() -> None:
    encoder = RequestEncoder()
    worker = full_worker()

    asked = encoder.request(worker, slim_answer=True)
    plain = encoder.request(worker)

    assert asked.slim_answer and not plain.slim_answer
    assert plain == worker_to_request(worker)
    asked.slim_answer = False
    assert asked == plain


def test_a_worker_the_wire_cannot_hold_is_refused_alone_and_never_kept() -> None:
    encoder = RequestEncoder()
    huge = make_worker("huge", memory_mb=2**64)
    fine = make_worker("fine")

    with pytest.raises(InvalidWorkerData) as refused:
        encoder.request(huge)
    request, refusals = encoder.batch([fine, huge, fine])

    assert fields_of(refused.value) == ["capabilities.memory_mb"]
    assert refused.value.worker_id == "huge"
    assert list(request.workers) == [worker_to_request(fine), worker_to_request(fine)]
    assert refusals[0] is None and refusals[2] is None
    assert isinstance(refusals[1], InvalidWorkerData)
    assert fields_of(refusals[1]) == ["capabilities.memory_mb"]
    assert len(encoder) == 1


@pytest.mark.parametrize(
    ("tag", "name", "message", "kind"),
    [
        (_records._WORKERS, "workers", pb.RegisterWorkersRequest, FieldDescriptor.TYPE_MESSAGE),
        (_records._WORKER_ID, "worker_id", pb.RegisterWorkerRequest, FieldDescriptor.TYPE_STRING),
        (_records._INCARNATION, "incarnation", pb.RegisterWorkerRequest, FieldDescriptor.TYPE_UINT64),
    ],
)
def test_each_tag_a_batch_is_framed_with_is_its_field_in_the_contract(
    tag: bytes, name: str, message: Any, kind: int
) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    wire_type = 0 if kind == FieldDescriptor.TYPE_UINT64 else 2  # varint; length-delimited

    assert field.type == kind
    assert tag == bytes([field.number << 3 | wire_type])


def test_a_batch_is_the_request_of_each_worker_in_order() -> None:
    encoder = RequestEncoder()
    config = full_worker().config
    workers = [
        DynamicWorker(f"w-{i}", config.worker_type, config, incarnation=i * 100, hostname=f"h-{i % 2}")
        for i in range(6)
    ] + [full_worker(), DynamicWorker("é" * 80, config.worker_type, config, incarnation=2**64 - 1)]

    request, refused = encoder.batch(workers)

    assert request == pb.RegisterWorkersRequest(workers=[worker_to_request(w) for w in workers])
    assert refused == [None] * len(workers)
    assert len(encoder) == 4  # one config with each of its three hostnames, and full_worker()'s own


@pytest.mark.parametrize(
    ("worker", "error"),
    [
        (dataclasses.replace(make_worker("w-1"), incarnation=-1), ValueError),
        (dataclasses.replace(make_worker("w-1"), incarnation=2**64), ValueError),
        (make_worker("w-\ud800"), UnicodeEncodeError),  # a lone surrogate: not UTF-8
    ],
    ids=["incarnation -1", "incarnation 2**64", "a lone surrogate"],
)
def test_a_batch_refuses_what_the_wire_cannot_hold_as_a_request_does(
    worker: DynamicWorker, error: type[Exception]
) -> None:
    with pytest.raises(error) as alone:
        worker_to_request(worker)

    with pytest.raises(error) as in_a_batch:
        RequestEncoder().batch([make_worker("w-0"), worker])

    assert str(in_a_batch.value) == str(alone.value)


# --- records --------------------------------------------------------------------------------------------


def test_a_record_survives_the_round_trip_with_its_timestamps() -> None:
    record = full_record()

    assert record_from_proto(record_to_proto(record)) == record


@pytest.mark.parametrize("char", ["e", "é", "€", "😀"])
def test_a_records_size_is_an_upper_estimate_of_its_encoding(char: str) -> None:
    # Every text of a bound record long and in one width of UTF-8: the record's, its labels', its assignment's,
    # its trace context's and its job's.
    many = char * 128
    assignment = Assignment(
        assignment_id=many,
        job_id=many,
        worker_id=many,
        incarnation=2**63,
        lease_ttl=3600.0,
        job=Job(command=(many, many), environment={many: many}, timeout=600.0),
        priority=-(2**31),
        bound_at=UPDATED_AT,
        trace_context={"traceparent": many, "tracestate": many},
    )
    record = full_record(
        worker_id=many,
        labels={many: many, f"{many}2": many},
        pool=many,
        hostname=many,
        agent_version=many,
        incarnation=2**64 - 1,
        assignment=assignment,
        lease_ttl=3600.0,
        use_count=2**32 - 1,
        drained=True,
    )

    encoded = len(record_to_proto(record).SerializeToString())

    assert encoded <= wire_size(record) < encoded + 1024


def test_missing_timestamps_stay_missing() -> None:
    record = full_record(registered_at=None, updated_at=None)

    message = record_to_proto(record)

    assert not message.HasField("registered_at")
    assert not message.HasField("updated_at")
    assert record_from_proto(message) == record


def test_a_timestamp_in_another_zone_comes_back_as_the_same_instant_in_utc() -> None:
    moment = datetime(2024, 3, 1, 10, 30, 15, 5, tzinfo=timezone(timedelta(hours=2)))

    decoded = record_from_proto(record_to_proto(full_record(registered_at=moment)))

    assert decoded.registered_at == moment
    assert decoded.registered_at is not None
    assert decoded.registered_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("status", list(WorkerStatus))
def test_every_status_survives_the_round_trip(status: WorkerStatus) -> None:
    assert status_from_proto(status_to_proto(status)) is status
    assert record_from_proto(record_to_proto(full_record(status=status))).status is status


@pytest.mark.parametrize("value", [0, 42])
def test_an_unknown_status_value_is_refused_naming_statuses(value: int) -> None:
    with pytest.raises(InvalidWorkerData) as refused:
        status_from_proto(value)

    assert refused.value.violations == (FieldViolation("statuses", f"unknown worker status {value}"),)


# --- single answers -------------------------------------------------------------------------------------


def registered(worker: DynamicWorker, **overrides: object) -> tuple[pb.RegisterWorkerRequest, WorkerRecord]:
    """``worker``'s request, asking for a slim answer, and the record the scheduler would write from it."""
    request = worker_to_request(worker)
    request.slim_answer = True
    record = record_from_request(request, registered_at=REGISTERED_AT)
    return request, dataclasses.replace(record, updated_at=UPDATED_AT, **overrides)  # type: ignore[arg-type]


def test_a_slim_answer_leaves_out_what_was_sent_and_decodes_to_the_whole_record() -> None:
    worker = full_worker()
    bound = Assignment(assignment_id="as-1", job_id="job-1", worker_id=worker.worker_id, incarnation=0)
    # A record as the scheduler answers it: with its job, and the live facts of its agent's stream.
    request, record = registered(
        worker,
        status=WorkerStatus.BUSY,
        assignment=bound,
        use_count=2,
        lease_ttl=15.0,
        drained=True,
        connected=True,
        connected_via="replica-b:50051",
        usage=ResourceUsage(cpu_percent=12.5, memory_used_mb=512, running_jobs=1),
        last_heartbeat_at=UPDATED_AT,
    )

    message = registration_answer(RegistrationReceipt(record, created=True), request)
    answer = message.worker
    receipt = receipt_from_proto(message, worker)

    assert not answer.HasField("metadata") and not answer.HasField("capabilities")
    assert receipt.record == record and receipt.created
    assert (receipt.record.assignment, receipt.record.use_count) == (bound, 2)
    assert (receipt.record.connected, receipt.record.last_heartbeat_at) == (True, UPDATED_AT)


@pytest.mark.parametrize(
    ("slim", "kept_incarnation"),
    [(False, None), (True, 4)],
    ids=["not asked", "kept from a newer registration"],
)
def test_an_answer_is_whole_unless_asked_for_and_written_from_the_request(
    slim: bool, kept_incarnation: int | None
) -> None:
    worker = dataclasses.replace(full_worker(), incarnation=0)
    request, record = registered(worker)
    if kept_incarnation is not None:  # an agent's registration, which one with incarnation 0 never overrides
        record = dataclasses.replace(record, incarnation=kept_incarnation, labels={"from": "agent"})

    request.slim_answer = slim
    message = registration_answer(RegistrationReceipt(record, created=False), request)
    answer = message.worker

    assert answer == record_to_proto(record) and answer.HasField("metadata")
    assert receipt_from_proto(message, worker).record == record


def test_an_answer_says_success_whether_it_created_and_the_credential() -> None:
    request, record = registered(full_worker())

    message = registration_answer(RegistrationReceipt(record, created=False), request, credential="cred-1")

    assert (message.status, message.created, message.credential) == (
        pb.REGISTRATION_STATUS_SUCCESS,
        False,
        "cred-1",
    )
    assert message.worker == record_to_proto(record, slim=True)
    receipt = receipt_from_proto(message, full_worker())
    assert (receipt.record, receipt.created, receipt.credential) == (record, False, "cred-1")


def test_a_record_at_the_epoch_keeps_its_times_on_the_wire() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    record = full_record(registered_at=epoch, updated_at=epoch, last_heartbeat_at=epoch)

    message = record_to_proto(record)

    assert all(message.HasField(f) for f in ("registered_at", "updated_at", "last_heartbeat_at"))
    assert message.registered_at.seconds == message.registered_at.nanos == 0
    assert record_from_proto(message) == record


# --- batch results --------------------------------------------------------------------------------------


def test_a_successful_result_decodes_to_its_receipt() -> None:
    receipt = RegistrationReceipt(full_record(), created=True)

    assert result_from_proto(registration_result_to_proto("worker-1", receipt)) == receipt


def test_a_failed_result_decodes_to_the_kind_of_its_code_with_its_violations() -> None:
    message = pb.WorkerRegistrationResult(
        worker_id="worker-1",
        status=pb.REGISTRATION_STATUS_FAILED,
        error=pb.WorkerError(
            code=ErrorCode.INVALID_ARGUMENT,
            message="worker 'worker-1' is invalid",
            field_violations=[pb.FieldViolation(field="capabilities.cpu_cores", description="too small")],
        ),
    )

    error = result_from_proto(message)

    assert isinstance(error, InvalidWorkerData)
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.message == "worker 'worker-1' is invalid"
    assert error.worker_id == "worker-1"
    assert error.violations == (FieldViolation("capabilities.cpu_cores", "too small"),)
    assert error.retry_after is None


def test_a_failed_result_with_an_out_of_range_code_keeps_that_code() -> None:
    message = pb.WorkerRegistrationResult(
        worker_id="w", status=pb.REGISTRATION_STATUS_FAILED, error=pb.WorkerError(code=11, message="m")
    )

    error = result_from_proto(message)

    assert isinstance(error, InvalidWorkerData)
    assert error.code is ErrorCode.OUT_OF_RANGE


@pytest.mark.parametrize(
    "error",
    [None, pb.WorkerError(), pb.WorkerError(code=0, message="")],
    ids=["no error", "empty error", "OK code"],
)
def test_a_failed_result_without_a_code_is_an_internal_error(error: pb.WorkerError | None) -> None:
    message = pb.WorkerRegistrationResult(worker_id="w", status=pb.REGISTRATION_STATUS_FAILED, error=error)

    decoded = result_from_proto(message)

    assert isinstance(decoded, SchedulerInternalError)
    assert decoded.code is ErrorCode.INTERNAL
    assert decoded.message == "the scheduler refused the worker without saying why"
    assert decoded.worker_id == "w"


@pytest.mark.parametrize("code", [17, 99, -1])
def test_a_failed_result_with_an_unknown_numeric_code_is_unknown(code: int) -> None:
    message = pb.WorkerRegistrationResult(
        worker_id="w",
        status=pb.REGISTRATION_STATUS_FAILED,
        error=pb.WorkerError(code=code, message="from the future"),
    )

    decoded = result_from_proto(message)

    assert isinstance(decoded, SchedulerInternalError)
    assert decoded.code is ErrorCode.UNKNOWN
    assert decoded.message == "from the future"


def test_retry_delay_in_milliseconds_becomes_retry_after_in_seconds() -> None:
    message = pb.WorkerRegistrationResult(
        worker_id="w",
        status=pb.REGISTRATION_STATUS_FAILED,
        error=pb.WorkerError(code=ErrorCode.RESOURCE_EXHAUSTED, message="busy", retry_delay_ms=1500),
    )

    decoded = result_from_proto(message)

    assert isinstance(decoded, SchedulerOverloaded)
    assert decoded.retry_after == 1.5


def test_a_refusal_survives_the_round_trip_through_a_result() -> None:
    refusal = SchedulerOverloaded(
        "busy", worker_id="w", violations=[FieldViolation("metadata.pool", "is full")], retry_after=0.25
    )

    decoded = result_from_proto(registration_result_to_proto("w", refusal))

    assert isinstance(decoded, SchedulerOverloaded)
    assert (decoded.code, decoded.message, decoded.worker_id) == (ErrorCode.RESOURCE_EXHAUSTED, "busy", "w")
    assert decoded.violations == (FieldViolation("metadata.pool", "is full"),)
    assert decoded.retry_after == 0.25


def test_a_refusal_without_retry_advice_has_none_after_the_round_trip() -> None:
    decoded = result_from_proto(registration_result_to_proto("w", SchedulerUnavailable("down")))

    assert isinstance(decoded, SchedulerUnavailable)
    assert decoded.retry_after is None


# --- unregistration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(UnregistrationStatus))
def test_every_unregistration_status_survives_the_round_trip(status: UnregistrationStatus) -> None:
    assert unregistration_from_proto(unregistration_to_proto(status)) is status


@pytest.mark.parametrize("value", [pb.UNREGISTRATION_STATUS_UNSPECIFIED, 7])
def test_an_unknown_unregistration_status_is_an_internal_error(value: int) -> None:
    with pytest.raises(SchedulerInternalError) as raised:
        unregistration_from_proto(value)

    assert raised.value.code is ErrorCode.INTERNAL
    assert raised.value.message == f"the scheduler answered an unknown unregistration status {value}"


# --- list filters ---------------------------------------------------------------------------------------


def test_a_filter_survives_the_round_trip_through_a_list_request() -> None:
    worker_filter = WorkerFilter(
        statuses=frozenset({WorkerStatus.BUSY, WorkerStatus.AVAILABLE}),
        worker_type=WorkerType.STATIC,
        labels={"arch": "amd64"},
    )

    request = filter_to_proto(worker_filter, page_size=50, page_token="dG9rZW4=")

    assert (request.page_size, request.page_token) == (50, "dG9rZW4=")
    assert filter_from_proto(request) == worker_filter


def test_an_empty_list_request_filters_nothing() -> None:
    assert filter_from_proto(pb.ListWorkersRequest()) == WorkerFilter()


def test_an_unknown_worker_type_in_a_filter_is_refused_naming_worker_type() -> None:
    with pytest.raises(InvalidWorkerData) as refused:
        filter_from_proto(pb.ListWorkersRequest(worker_type="vm"))

    assert refused.value.violations == (
        FieldViolation("worker_type", "must be one of docker, process, kubernetes, static, mock"),
    )


@pytest.mark.parametrize("value", [pb.WORKER_STATUS_UNSPECIFIED, 42])
def test_an_unknown_status_in_a_filter_is_refused_naming_statuses(value: int) -> None:
    request = pb.ListWorkersRequest(statuses=[pb.WORKER_STATUS_BUSY])
    request.statuses.append(value)  # type: ignore[arg-type]  # a value this contract does not define

    with pytest.raises(InvalidWorkerData) as refused:
        filter_from_proto(request)

    assert fields_of(refused.value) == ["statuses"]
