"""The only door to the generated protobuf code: proto messages <-> domain objects."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from hodei._quoting import fit_violations, quote_short
from hodei.domain import (
    DynamicWorker,
    DynamicWorkerConfig,
    FieldViolation,
    ResourceUsage,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
    record_in_shape,
    validate_worker_fields,
)
from hodei.errors import ErrorCode, InvalidWorkerData, SchedulerError, scheduler_error_for
from hodei.lifecycle import CommandKind, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.ports import RegistrationReceipt, UnregistrationStatus, WorkerFilter
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2 as pb
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2_grpc as pb_grpc

__all__ = [
    "SERVICE_NAME",
    "command_from_proto",
    "command_to_proto",
    "event_from_proto",
    "event_to_proto",
    "filter_from_proto",
    "filter_to_proto",
    "hello_from_worker",
    "pb",
    "pb_grpc",
    "receipt_from_proto",
    "record_from_proto",
    "record_from_request",
    "record_to_proto",
    "registration_result_to_proto",
    "result_from_proto",
    "status_from_proto",
    "status_to_proto",
    "unregister_incarnation",
    "unregister_request",
    "unregistration_from_proto",
    "unregistration_to_proto",
    "usage_from_proto",
    "usage_to_proto",
    "worker_from_request",
    "worker_to_request",
    "workers_to_requests",
]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SchedulerService"].full_name

_STATUS_TO_PROTO: dict[WorkerStatus, pb.WorkerStatus] = {
    status: getattr(pb, f"WORKER_STATUS_{status.name}") for status in WorkerStatus
}
_STATUS_FROM_PROTO: dict[int, WorkerStatus] = {value: status for status, value in _STATUS_TO_PROTO.items()}
_WORKER_TYPES = {t.value: t for t in WorkerType}


def status_to_proto(status: WorkerStatus) -> pb.WorkerStatus:
    return _STATUS_TO_PROTO[status]


def status_from_proto(value: int) -> WorkerStatus:
    try:
        return _STATUS_FROM_PROTO[value]
    except KeyError:
        raise InvalidWorkerData(
            f"unknown worker status {value}",
            violations=[FieldViolation("statuses", f"unknown worker status {value}")],
        ) from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    return None if moment is None else _timestamp_of(moment)


@functools.lru_cache(maxsize=1024)
def _timestamp_of(moment: datetime) -> Timestamp:
    # Every record of a batch has the same time, and a message given to a constructor is copied: one
    # conversion serves the whole batch. Plain arithmetic, as Timestamp.FromDatetime goes through time tuples.
    delta = moment - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def _moment(stamp: Timestamp, present: bool) -> datetime | None:
    if not present:
        return None
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def _capabilities_to_proto(capabilities: WorkerCapabilities) -> pb.WorkerCapabilities:
    return pb.WorkerCapabilities(
        cpu_cores=capabilities.cpu_cores,
        memory_mb=capabilities.memory_mb,
        disk_mb=capabilities.disk_mb,
        gpu_count=capabilities.gpu_count,
    )


def _capabilities_from_proto(message: pb.WorkerCapabilities) -> WorkerCapabilities:
    return WorkerCapabilities(message.cpu_cores, message.memory_mb, message.disk_mb, message.gpu_count)


_WIRE_RANGES = {
    "cpu_cores": (-(2**31), 2**31 - 1),
    "memory_mb": (-(2**63), 2**63 - 1),
    "disk_mb": (-(2**63), 2**63 - 1),
    "gpu_count": (-(2**31), 2**31 - 1),
}


def _worker_parts(worker: DynamicWorker) -> tuple[pb.WorkerCapabilities, pb.WorkerMetadata]:
    """Encode what a worker carries besides its id; what the wire cannot hold is InvalidWorkerData for that
    worker alone (its batch goes on without it)."""
    violations = [
        FieldViolation(f"capabilities.{name}", f"does not fit the wire's {low}..{high}, got {value}")
        for name, (low, high) in _WIRE_RANGES.items()
        if not isinstance(value := getattr(worker.capabilities, name), int) or not low <= value <= high
    ]
    if violations:
        raise InvalidWorkerData(
            f"worker {quote_short(worker.worker_id)} cannot be encoded",
            worker_id=worker.worker_id,
            violations=violations,
        )
    metadata = pb.WorkerMetadata(
        worker_type=worker.worker_type.value,
        labels=dict(worker.labels),
        pool=worker.pool,
        hostname=worker.hostname,
    )
    return _capabilities_to_proto(worker.capabilities), metadata


def worker_to_request(worker: DynamicWorker) -> pb.RegisterWorkerRequest:
    capabilities, metadata = _worker_parts(worker)
    return pb.RegisterWorkerRequest(
        worker_id=worker.worker_id,
        capabilities=capabilities,
        metadata=metadata,
        incarnation=worker.incarnation,
    )


def workers_to_requests(
    workers: Sequence[DynamicWorker],
) -> list[pb.RegisterWorkerRequest | InvalidWorkerData]:
    """Requests for a batch, in order, or the reason a worker cannot be encoded; a worker with the config (the
    same object) and hostname of the one before it shares its encoding."""
    shared: tuple[DynamicWorkerConfig, str, pb.WorkerCapabilities, pb.WorkerMetadata] | None = None
    requests: list[pb.RegisterWorkerRequest | InvalidWorkerData] = []
    for worker in workers:
        if shared is None or shared[0] is not worker.config or shared[1] != worker.hostname:
            try:
                shared = (worker.config, worker.hostname, *_worker_parts(worker))
            except InvalidWorkerData as unencodable:
                requests.append(unencodable)
                continue
        requests.append(
            pb.RegisterWorkerRequest(
                worker_id=worker.worker_id,
                capabilities=shared[2],
                metadata=shared[3],
                incarnation=worker.incarnation,
            )
        )
    return requests


def _representable(request: pb.RegisterWorkerRequest | pb.WorkerHello) -> WorkerType:
    """The request's worker type. What the domain cannot even represent (an unknown worker type, no
    capabilities) is refused here, with every other violation of the same request; the registry checks the
    rest of a request that passes."""
    worker_type = _WORKER_TYPES.get(request.metadata.worker_type)
    has_capabilities = request.HasField("capabilities")
    if worker_type is not None and has_capabilities:
        return worker_type
    metadata = request.metadata
    violations = validate_worker_fields(
        worker_id=request.worker_id,
        worker_type=metadata.worker_type,
        capabilities=_capabilities_from_proto(request.capabilities) if has_capabilities else None,
        labels=dict(metadata.labels),
        pool=metadata.pool,
        hostname=metadata.hostname,
        agent_version=metadata.agent_version,
        incarnation=request.incarnation,
    )
    raise InvalidWorkerData(
        f"worker {quote_short(request.worker_id)} is invalid",
        worker_id=request.worker_id,
        violations=violations,
    )


def worker_from_request(request: pb.RegisterWorkerRequest | pb.WorkerHello) -> DynamicWorker:
    """Decode a registration (or an agent's hello); see :func:`_representable` for what is refused here."""
    worker_type = _representable(request)
    capabilities = _capabilities_from_proto(request.capabilities)
    labels = dict(request.metadata.labels)
    config = DynamicWorkerConfig(
        worker_type=worker_type,
        cpu_cores=capabilities.cpu_cores,
        memory_mb=capabilities.memory_mb,
        disk_mb=capabilities.disk_mb,
        gpu_count=capabilities.gpu_count,
        labels=labels,
        pool=request.metadata.pool or "default",
    )
    return DynamicWorker(
        request.worker_id,
        worker_type,
        config,
        incarnation=request.incarnation,
        hostname=request.metadata.hostname,
    )


_Shape = tuple[DynamicWorkerConfig, WorkerCapabilities]


def record_from_request(
    request: pb.RegisterWorkerRequest,
    *,
    registered_at: datetime,
    status: WorkerStatus = WorkerStatus.AVAILABLE,
    shared: dict[bytes, _Shape] | None = None,
) -> WorkerRecord:
    """A registry record straight from a registration on the wire (the batch path: no intermediate worker).
    Like :func:`worker_from_request`, it reports only what a record cannot represent; the registry checks
    the rest. Given a ``shared`` dict, entries of one batch with the same capabilities and metadata are made
    in one shape (:func:`hodei.domain.record_in_shape`), whose verdict the registry then finds once."""
    metadata = request.metadata
    key = b""
    shape = None
    if shared is not None:
        # Absent and all-zero capabilities encode alike: the key says which it was.
        present = b"+" if request.HasField("capabilities") else b"-"
        key = present + request.capabilities.SerializeToString() + b"\0" + metadata.SerializeToString()
        shape = shared.get(key)
    if shape is None:
        worker_type = _representable(request)
        caps = request.capabilities
        config = DynamicWorkerConfig(
            worker_type=worker_type,
            cpu_cores=caps.cpu_cores,
            memory_mb=caps.memory_mb,
            disk_mb=caps.disk_mb,
            gpu_count=caps.gpu_count,
            labels=metadata.labels,
            pool=metadata.pool or "default",
        )
        shape = (config, config.capabilities)
        if shared is not None:
            shared[key] = shape
    return record_in_shape(
        shape[0],
        shape[1],
        worker_id=request.worker_id,
        hostname=metadata.hostname,
        agent_version=metadata.agent_version,
        incarnation=request.incarnation,
        registered_at=registered_at,
        status=status,
    )


def hello_from_worker(worker: DynamicWorker, running_jobs: Sequence[str] = ()) -> pb.WorkerHello:
    request = worker_to_request(worker)
    return pb.WorkerHello(
        worker_id=request.worker_id,
        incarnation=request.incarnation,
        capabilities=request.capabilities,
        metadata=request.metadata,
        running_jobs=list(running_jobs),
    )


def usage_to_proto(usage: ResourceUsage) -> pb.ResourceUsage:
    return pb.ResourceUsage(
        cpu_percent=usage.cpu_percent, memory_used_mb=usage.memory_used_mb, running_jobs=usage.running_jobs
    )


def usage_from_proto(message: pb.ResourceUsage) -> ResourceUsage:
    return ResourceUsage(message.cpu_percent, message.memory_used_mb, message.running_jobs)


def record_to_proto(record: WorkerRecord, *, slim: bool = False) -> pb.Worker:
    """The record on the wire; ``slim`` leaves out capabilities, metadata and the live facts of the agent's
    stream (a batch answer does, where they are the request's own)."""
    worker = pb.Worker(
        worker_id=record.worker_id,
        status=status_to_proto(record.status),
        incarnation=record.incarnation,
        registered_at=_timestamp(record.registered_at),
        updated_at=_timestamp(record.updated_at),
        lease_ttl_ms=round(record.lease_ttl * 1000) if record.lease_ttl is not None else 0,
        drained=record.drained,
    )
    if slim:
        return worker
    worker.capabilities.CopyFrom(_capabilities_to_proto(record.capabilities))
    worker.metadata.CopyFrom(
        pb.WorkerMetadata(
            worker_type=record.worker_type.value,
            labels=dict(record.labels),
            pool=record.pool,
            hostname=record.hostname,
            agent_version=record.agent_version,
        )
    )
    worker.connected = record.connected
    worker.connected_via = record.connected_via
    if record.usage is not None:
        worker.usage.CopyFrom(usage_to_proto(record.usage))
    if record.last_heartbeat_at is not None:
        worker.last_heartbeat_at.CopyFrom(_timestamp_of(record.last_heartbeat_at))
    return worker


def record_from_proto(message: pb.Worker) -> WorkerRecord:
    # A newer scheduler may know types and statuses this client does not; they read as MOCK and FAILED rather
    # than failing the whole answer.
    return WorkerRecord(
        worker_id=message.worker_id,
        worker_type=_WORKER_TYPES.get(message.metadata.worker_type, WorkerType.MOCK),
        capabilities=_capabilities_from_proto(message.capabilities),
        status=_STATUS_FROM_PROTO.get(message.status, WorkerStatus.FAILED),
        labels=dict(message.metadata.labels),
        pool=message.metadata.pool,
        hostname=message.metadata.hostname,
        agent_version=message.metadata.agent_version,
        incarnation=message.incarnation,
        registered_at=_moment(message.registered_at, message.HasField("registered_at")),
        updated_at=_moment(message.updated_at, message.HasField("updated_at")),
        lease_ttl=message.lease_ttl_ms / 1000 if message.lease_ttl_ms else None,
        connected=message.connected,
        connected_via=message.connected_via,
        drained=message.drained,
        usage=usage_from_proto(message.usage) if message.HasField("usage") else None,
        last_heartbeat_at=_moment(message.last_heartbeat_at, message.HasField("last_heartbeat_at")),
    )


def receipt_from_proto(
    message: pb.RegisterWorkerResponse | pb.WorkerRegistrationResult,
) -> RegistrationReceipt:
    worker = message.worker
    credential = message.credential if isinstance(message, pb.RegisterWorkerResponse) else ""
    return RegistrationReceipt(
        lambda: record_from_proto(worker), created=message.created, credential=credential
    )


def _error_to_proto(error: SchedulerError) -> pb.WorkerError:
    return pb.WorkerError(
        code=int(error.code),
        message=error.message,
        field_violations=[
            pb.FieldViolation(field=v.field, description=v.description)
            for v in fit_violations(error.violations, message=error.message)
        ],
        retry_delay_ms=round(error.retry_after * 1000) if error.retry_after else 0,
    )


def registration_result_to_proto(
    worker_id: str,
    outcome: RegistrationReceipt | SchedulerError,
    request: pb.RegisterWorkerRequest | None = None,
) -> pb.WorkerRegistrationResult:
    if isinstance(outcome, SchedulerError):
        return pb.WorkerRegistrationResult(
            worker_id=worker_id,
            status=pb.REGISTRATION_STATUS_FAILED,
            error=_error_to_proto(outcome),
        )
    return pb.WorkerRegistrationResult(
        worker_id=worker_id,
        status=pb.REGISTRATION_STATUS_SUCCESS,
        # A record written from this very request (same incarnation: not kept from a newer registration)
        # carries the request's capabilities and metadata; the answer leaves them out.
        worker=record_to_proto(
            outcome.record, slim=request is not None and outcome.record.incarnation == request.incarnation
        ),
        created=outcome.created,
    )


def _slim_record(message: pb.Worker, sent: DynamicWorker) -> WorkerRecord:
    """A batch answer's record, completed with what was sent (the answer leaves out what did not change)."""
    return WorkerRecord(
        worker_id=message.worker_id,
        worker_type=sent.worker_type,
        capabilities=sent.capabilities,
        status=_STATUS_FROM_PROTO.get(message.status, WorkerStatus.FAILED),
        labels=sent.labels,
        pool=sent.pool or "default",
        hostname=sent.hostname,
        incarnation=message.incarnation,
        registered_at=_moment(message.registered_at, message.HasField("registered_at")),
        updated_at=_moment(message.updated_at, message.HasField("updated_at")),
        lease_ttl=message.lease_ttl_ms / 1000 if message.lease_ttl_ms else None,
        drained=message.drained,
    )


def result_from_proto(
    message: pb.WorkerRegistrationResult, sent: DynamicWorker | None = None
) -> RegistrationReceipt | SchedulerError:
    if message.status == pb.REGISTRATION_STATUS_SUCCESS:
        worker = message.worker
        if sent is not None and not worker.HasField("metadata"):
            return RegistrationReceipt(lambda: _slim_record(worker, sent), created=message.created)
        return receipt_from_proto(message)
    error = message.error
    try:
        code = ErrorCode(error.code)
    except ValueError:
        code = ErrorCode.UNKNOWN
    if code is ErrorCode.OK:  # a failed result must carry an error; treat a missing one as the server's bug
        code = ErrorCode.INTERNAL
    return scheduler_error_for(
        code,
        error.message or "the scheduler refused the worker without saying why",
        worker_id=message.worker_id,
        violations=[FieldViolation(v.field, v.description) for v in error.field_violations],
        retry_after=error.retry_delay_ms / 1000 if error.retry_delay_ms else None,
    )


def unregister_request(
    worker_id: str, *, reason: str = "", incarnation: int | None = None
) -> pb.UnregisterWorkerRequest:
    """The request; ``incarnation`` (None: unset) fences it against a newer registration."""
    return pb.UnregisterWorkerRequest(worker_id=worker_id, reason=reason, incarnation=incarnation)


def unregister_incarnation(request: pb.UnregisterWorkerRequest) -> int | None:
    """The incarnation an unregistration is fenced by, or None when the caller sent none."""
    return request.incarnation if request.HasField("incarnation") else None


def unregistration_to_proto(status: UnregistrationStatus) -> pb.UnregistrationStatus:
    if status is UnregistrationStatus.SUCCESS:
        return pb.UNREGISTRATION_STATUS_SUCCESS
    return pb.UNREGISTRATION_STATUS_NOT_REGISTERED


def unregistration_from_proto(value: int) -> UnregistrationStatus:
    if value == pb.UNREGISTRATION_STATUS_SUCCESS:
        return UnregistrationStatus.SUCCESS
    if value == pb.UNREGISTRATION_STATUS_NOT_REGISTERED:
        return UnregistrationStatus.NOT_REGISTERED
    raise scheduler_error_for(
        ErrorCode.INTERNAL, f"the scheduler answered an unknown unregistration status {value}"
    )


def filter_to_proto(
    worker_filter: WorkerFilter, *, page_size: int = 0, page_token: str = ""
) -> pb.ListWorkersRequest:
    return pb.ListWorkersRequest(
        statuses=[status_to_proto(s) for s in sorted(worker_filter.statuses)],
        worker_type=worker_filter.worker_type.value if worker_filter.worker_type else "",
        labels=dict(worker_filter.labels),
        page_size=page_size,
        page_token=page_token,
    )


def filter_from_proto(request: pb.ListWorkersRequest) -> WorkerFilter:
    worker_type: WorkerType | None = None
    if request.worker_type:
        worker_type = _WORKER_TYPES.get(request.worker_type)
        if worker_type is None:
            allowed = ", ".join(_WORKER_TYPES)
            raise InvalidWorkerData(
                f"unknown worker type {quote_short(request.worker_type)}",
                violations=[FieldViolation("worker_type", f"must be one of {allowed}")],
            )
    labels: Mapping[str, str] = dict(request.labels)
    return WorkerFilter(
        statuses=frozenset(status_from_proto(s) for s in request.statuses),
        worker_type=worker_type,
        labels=labels,
    )


def command_to_proto(command: WorkerCommand) -> pb.WorkerCommand:
    if command.kind is CommandKind.DRAIN:
        return pb.WorkerCommand(
            drain=pb.DrainCommand(deadline_ms=round(command.deadline * 1000), reason=command.reason)
        )
    if command.kind is CommandKind.SHUTDOWN:
        return pb.WorkerCommand(shutdown=pb.ShutdownCommand(reason=command.reason))
    return pb.WorkerCommand(reregister=pb.ReregisterCommand(reason=command.reason))


def command_from_proto(message: pb.WorkerCommand) -> WorkerCommand | None:
    """The command, or None for a kind this agent does not know (a newer scheduler's)."""
    which = message.WhichOneof("command")
    if which == "drain":
        return WorkerCommand(CommandKind.DRAIN, message.drain.reason, message.drain.deadline_ms / 1000)
    if which == "shutdown":
        return WorkerCommand(CommandKind.SHUTDOWN, message.shutdown.reason)
    if which == "reregister":
        return WorkerCommand(CommandKind.REREGISTER, message.reregister.reason)
    return None


_EVENT_TO_PROTO: dict[WorkerEventKind, pb.WorkerEventKind] = {
    kind: getattr(pb, f"WORKER_EVENT_KIND_{kind.name}") for kind in WorkerEventKind
}
_EVENT_FROM_PROTO: dict[int, WorkerEventKind] = {value: kind for kind, value in _EVENT_TO_PROTO.items()}


def event_to_proto(event: WorkerEvent) -> pb.WorkerEvent:
    return pb.WorkerEvent(
        sequence=event.sequence,
        kind=_EVENT_TO_PROTO[event.kind],
        worker_id=event.worker_id,
        worker=record_to_proto(event.record) if event.record is not None else None,
        reason=event.reason,
        time=_timestamp(event.time),
    )


def event_from_proto(message: pb.WorkerEvent) -> WorkerEvent | None:
    """The event, or None for a kind this client does not know (a newer scheduler's)."""
    kind = _EVENT_FROM_PROTO.get(message.kind)
    if kind is None:
        return None
    return WorkerEvent(
        sequence=message.sequence,
        kind=kind,
        worker_id=message.worker_id,
        record=record_from_proto(message.worker) if message.HasField("worker") else None,
        reason=message.reason,
        time=message.time.ToDatetime(tzinfo=UTC),
    )
