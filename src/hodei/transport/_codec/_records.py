"""Workers and records on the wire: a registration (or an agent's hello) to and from a worker or a record, a
record to and from its message, with their statuses, capabilities, usage and timestamps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from hodei._kept import Recent
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
from hodei.transport._codec._framing import LENGTH_DELIMITED, UINT64_END, VARINT, field, tag, uint64_field
from hodei.transport._codec._jobs import assignment_from_proto, assignment_to_proto
from hodei.transport._codec._time import moment, put_moment
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2 as pb

__all__ = [
    "SERVICE_NAME",
    "WORKER_TYPES",
    "RequestEncoder",
    "Shapes",
    "hello_from_worker",
    "put_record",
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
    return _request(worker, *_worker_parts(worker))


def _request(
    worker: DynamicWorker,
    capabilities: pb.WorkerCapabilities,
    metadata: pb.WorkerMetadata,
    slim_answer: bool = False,
) -> pb.RegisterWorkerRequest:
    """``worker``'s registration around the encoding of its config and hostname."""
    return pb.RegisterWorkerRequest(
        worker_id=worker.worker_id,
        capabilities=capabilities,
        metadata=metadata,
        incarnation=worker.incarnation,
        slim_answer=slim_answer,
    )


# Tags of the fields a batch's entries are framed with; a test pins them to the contract.
_WORKERS = tag(1, LENGTH_DELIMITED)  # RegisterWorkersRequest.workers
_WORKER_ID = tag(1, LENGTH_DELIMITED)  # RegisterWorkerRequest.worker_id
_INCARNATION = tag(4, VARINT)  # RegisterWorkerRequest.incarnation (uint64)


class _Encoded(NamedTuple):
    config: DynamicWorkerConfig  # kept with its encoding, so that its id is not reused meanwhile
    capabilities: pb.WorkerCapabilities
    metadata: pb.WorkerMetadata
    shared: bytes  # a registration's bytes with only these two fields: what a batch's entries share


class RequestEncoder:
    """Registrations on the wire, for a client that sends many: the capabilities and metadata of a worker's
    config with its hostname are encoded once for every worker that has them (the same config object: a
    pool's, a provider's, a batch's). A config is frozen, so what it encodes to never changes. At most ``size``
    encodings are kept, the oldest dropped first; a config the wire cannot hold is never kept.

    A batch (:meth:`batch`) is framed from those bytes: each entry is its worker's id and incarnation around
    the bytes its config and hostname encode to (:mod:`._framing`), and the request is parsed from them."""

    def __init__(self, size: int = 64) -> None:
        # Keyed by the config's id and the hostname.
        self._kept: Recent[tuple[int, str], _Encoded] = Recent(size)

    def __len__(self) -> int:
        return len(self._kept)

    def _encoded(self, worker: DynamicWorker) -> _Encoded:
        key = (id(worker.config), worker.hostname)
        kept = self._kept.get(key)
        if kept is None:
            capabilities, metadata = _worker_parts(worker)
            shared = pb.RegisterWorkerRequest(
                capabilities=capabilities, metadata=metadata
            ).SerializeToString()
            kept = _Encoded(worker.config, capabilities, metadata, shared)
            self._kept.put(key, kept)
        return kept

    def request(self, worker: DynamicWorker, *, slim_answer: bool = False) -> pb.RegisterWorkerRequest:
        """``worker``'s registration (asking for a slim answer, if ``slim_answer``); InvalidWorkerData if the
        wire cannot hold it."""
        kept = self._encoded(worker)
        return _request(worker, kept.capabilities, kept.metadata, slim_answer)

    def batch(
        self, workers: Sequence[DynamicWorker]
    ) -> tuple[pb.RegisterWorkersRequest, list[InvalidWorkerData | None]]:
        """The RegisterWorkers request of the workers the wire can hold, in order (each entry what
        :meth:`request` makes of it), and per worker None (sent) or the reason it cannot be encoded."""
        entries: list[bytes] = []
        refused: list[InvalidWorkerData | None] = []
        for worker in workers:
            try:
                kept = self._encoded(worker)
            except InvalidWorkerData as unencodable:
                refused.append(unencodable)
                continue
            refused.append(None)
            incarnation = worker.incarnation
            if not 0 <= incarnation < UINT64_END:  # refused by the reference, as a single request is
                entries.append(field(_WORKERS, self.request(worker).SerializeToString()))
                continue
            # An id the wire cannot hold (a lone surrogate) raises here what the reference raises.
            own = field(_WORKER_ID, worker.worker_id.encode()) + uint64_field(_INCARNATION, incarnation)
            entries.append(field(_WORKERS, own + kept.shared))
        return pb.RegisterWorkersRequest.FromString(b"".join(entries)), refused


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


_Shape = tuple[DynamicWorkerConfig, WorkerCapabilities]


class Shapes:
    """The shapes (worker type, capabilities, labels, pool) of the registrations and hellos a scheduler decoded
    lately: the workers of one shape — a pool's, a fleet's, a batch's — are made in it and share its verdict,
    found once, instead of a config and a validation each. What differs from worker to worker (id, hostname,
    agent version, incarnation) is not part of a shape.

    At most ``size`` shapes are kept, the oldest dropped first, and only valid ones: a valid shape is small
    (the label limits bound it), an invalid one could be as large as a request. A key is the message's own
    values, so two requests share a shape only if they say the same; labels sent in another order only miss.
    """

    def __init__(self, size: int = 256) -> None:
        self._kept: Recent[tuple[object, ...], _Shape] = Recent(size)

    def __len__(self) -> int:
        return len(self._kept)

    def of(self, request: pb.RegisterWorkerRequest | pb.WorkerHello) -> _Shape:
        """The shape ``request`` is in; what the domain cannot represent is InvalidWorkerData (see
        :func:`_representable`)."""
        metadata = request.metadata
        caps = request.capabilities
        # Absent capabilities read as all zeros, which no kept (valid) shape has: such a request always misses.
        key = (
            metadata.worker_type,
            metadata.pool,
            caps.cpu_cores,
            caps.memory_mb,
            caps.disk_mb,
            caps.gpu_count,
            *metadata.labels.items(),
        )
        shape = self._kept.get(key)
        if shape is None:
            shape = _shape_of(request)
            if not shape[0].verdict:
                self._kept.put(key, shape)
        return shape


def _shape_of(request: pb.RegisterWorkerRequest | pb.WorkerHello) -> _Shape:
    worker_type = _representable(request)
    caps = request.capabilities
    metadata = request.metadata
    config = DynamicWorkerConfig(
        worker_type=worker_type,
        cpu_cores=caps.cpu_cores,
        memory_mb=caps.memory_mb,
        disk_mb=caps.disk_mb,
        gpu_count=caps.gpu_count,
        labels=metadata.labels,
        pool=metadata.pool or "default",
    )
    return config, config.capabilities


def worker_from_request(
    request: pb.RegisterWorkerRequest | pb.WorkerHello, shapes: Shapes | None = None
) -> DynamicWorker:
    """Decode a registration (or an agent's hello); see :func:`_representable` for what is refused here.
    Given ``shapes``, the worker's config is its shape's, shared with the workers decoded in it."""
    config, _ = _shape_of(request) if shapes is None else shapes.of(request)
    return DynamicWorker(
        request.worker_id,
        config.worker_type,
        config,
        incarnation=request.incarnation,
        hostname=request.metadata.hostname,
    )


def record_from_request(
    request: pb.RegisterWorkerRequest,
    *,
    registered_at: datetime,
    status: WorkerStatus = WorkerStatus.AVAILABLE,
    shapes: Shapes | None = None,
) -> WorkerRecord:
    """A registry record straight from a registration on the wire (no intermediate worker). Like
    :func:`worker_from_request`, it reports only what a record cannot represent; the registry checks the rest.
    The record is made in its shape (:func:`hodei.domain.record_in_shape`): given ``shapes``, one shared with
    the records decoded in it, whose verdict the registry then finds once."""
    config, capabilities = _shape_of(request) if shapes is None else shapes.of(request)
    metadata = request.metadata
    return record_in_shape(
        config,
        capabilities,
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
    """The record on the wire; ``slim`` leaves out its capabilities and metadata (an answer does, where they are
    the request's own)."""
    worker = pb.Worker()
    put_record(worker, record, slim=slim)
    return worker


def put_record(worker: pb.Worker, record: WorkerRecord, *, slim: bool = False) -> None:
    """Write ``record`` into ``worker``, an empty message (or an answer's own field), as :func:`record_to_proto`
    encodes it. Its id, status, incarnation and times are set in place, with no Worker or Timestamp built to be
    copied in; its other numbers and flags only when not at their default (proto3 leaves those off the wire
    either way). Its assignment, usage, capabilities and metadata, rarer or absent from a slim answer, are built
    and copied in."""
    worker.worker_id = record.worker_id
    worker.status = status_to_proto(record.status)
    worker.incarnation = record.incarnation
    if record.registered_at is not None:
        put_moment(worker.registered_at, record.registered_at)
    if record.updated_at is not None:
        put_moment(worker.updated_at, record.updated_at)
    if record.lease_ttl is not None:
        worker.lease_ttl_ms = round(record.lease_ttl * 1000)
    if record.drained:
        worker.drained = True
    if record.use_count:
        worker.use_count = record.use_count
    if record.assignment is not None:
        worker.assignment.CopyFrom(assignment_to_proto(record.assignment))
    # The live facts of the agent's stream (none in a record as a store holds it).
    if record.connected:
        worker.connected = True
    if record.connected_via:
        worker.connected_via = record.connected_via
    if record.usage is not None:
        worker.usage.CopyFrom(usage_to_proto(record.usage))
    if record.last_heartbeat_at is not None:
        put_moment(worker.last_heartbeat_at, record.last_heartbeat_at)
    if slim:
        return
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


def record_from_proto(message: pb.Worker) -> WorkerRecord:
    # A newer scheduler may know types and statuses this client does not; they read as MOCK and FAILED rather
    # than failing the whole answer.
    metadata = message.metadata
    return _record_of(
        message,
        worker_type=WORKER_TYPES.get(metadata.worker_type, WorkerType.MOCK),
        capabilities=_capabilities_from_proto(message.capabilities),
        labels=dict(metadata.labels),
        pool=metadata.pool,
        hostname=metadata.hostname,
        agent_version=metadata.agent_version,
    )


def slim_record(message: pb.Worker, sent: DynamicWorker) -> WorkerRecord:
    """A slim answer's record (a batch's, or one asked for), completed with what was sent: the answer leaves out
    the capabilities and metadata, which are the request's own."""
    return _record_of(
        message,
        worker_type=sent.worker_type,
        capabilities=sent.capabilities,
        labels=sent.labels,
        pool=sent.pool or "default",
        hostname=sent.hostname,
        agent_version="",  # a control plane's worker has none; an agent sends its own in its hello
    )


def _record_of(
    message: pb.Worker,
    *,
    worker_type: WorkerType,
    capabilities: WorkerCapabilities,
    labels: Mapping[str, str],
    pool: str,
    hostname: str,
    agent_version: str,
) -> WorkerRecord:
    """The record ``message`` carries, with its capabilities and metadata as given."""
    return WorkerRecord(
        worker_id=message.worker_id,
        worker_type=worker_type,
        capabilities=capabilities,
        status=_STATUS_FROM_PROTO.get(message.status, WorkerStatus.FAILED),
        labels=labels,
        pool=pool,
        hostname=hostname,
        agent_version=agent_version,
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
