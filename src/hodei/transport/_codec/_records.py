"""Workers and records on the wire: a registration (or an agent's hello) to and from a worker or a record, a
record to and from its message, with their statuses, capabilities, usage and timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from hodei._quoting import quote_short
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
from hodei.errors import InvalidWorkerData
from hodei.transport._codec._jobs import assignment_from_proto, assignment_to_proto
from hodei.transport._codec._time import moment, timestamp, timestamp_of
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2 as pb

__all__ = [
    "SERVICE_NAME",
    "WORKER_TYPES",
    "hello_from_worker",
    "record_from_proto",
    "record_from_request",
    "record_to_proto",
    "slim_record",
    "status_from_proto",
    "status_to_proto",
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
WORKER_TYPES = {t.value: t for t in WorkerType}


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
    worker_type = WORKER_TYPES.get(request.metadata.worker_type)
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
        registered_at=timestamp(record.registered_at),
        updated_at=timestamp(record.updated_at),
        lease_ttl_ms=round(record.lease_ttl * 1000) if record.lease_ttl is not None else 0,
        drained=record.drained,
        use_count=record.use_count,
    )
    if record.assignment is not None:
        worker.assignment.CopyFrom(assignment_to_proto(record.assignment))
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
        worker.last_heartbeat_at.CopyFrom(timestamp_of(record.last_heartbeat_at))
    return worker


def record_from_proto(message: pb.Worker) -> WorkerRecord:
    # A newer scheduler may know types and statuses this client does not; they read as MOCK and FAILED rather
    # than failing the whole answer.
    return WorkerRecord(
        worker_id=message.worker_id,
        worker_type=WORKER_TYPES.get(message.metadata.worker_type, WorkerType.MOCK),
        capabilities=_capabilities_from_proto(message.capabilities),
        status=_STATUS_FROM_PROTO.get(message.status, WorkerStatus.FAILED),
        labels=dict(message.metadata.labels),
        pool=message.metadata.pool,
        hostname=message.metadata.hostname,
        agent_version=message.metadata.agent_version,
        incarnation=message.incarnation,
        registered_at=moment(message.registered_at, message.HasField("registered_at")),
        updated_at=moment(message.updated_at, message.HasField("updated_at")),
        lease_ttl=message.lease_ttl_ms / 1000 if message.lease_ttl_ms else None,
        connected=message.connected,
        connected_via=message.connected_via,
        drained=message.drained,
        usage=usage_from_proto(message.usage) if message.HasField("usage") else None,
        last_heartbeat_at=moment(message.last_heartbeat_at, message.HasField("last_heartbeat_at")),
        assignment=assignment_from_proto(message.assignment)[0] if message.HasField("assignment") else None,
        use_count=message.use_count,
    )


def slim_record(message: pb.Worker, sent: DynamicWorker) -> WorkerRecord:
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
        registered_at=moment(message.registered_at, message.HasField("registered_at")),
        updated_at=moment(message.updated_at, message.HasField("updated_at")),
        lease_ttl=message.lease_ttl_ms / 1000 if message.lease_ttl_ms else None,
        drained=message.drained,
    )
