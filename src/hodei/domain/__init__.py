"""The domain: workers, their specs and statuses, and the rules for what a valid worker is.

Nothing here knows about gRPC, SQL or Docker. Validation is one function over plain values
(:func:`validate_worker_fields`), used by the client before it sends and by the scheduler when it receives, so
that both sides name the same field with the same words.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType

from hodei._quoting import quote_short

__all__ = [
    "MAX_INCARNATION",
    "MAX_LABELS",
    "MAX_LABEL_KEY_LENGTH",
    "MAX_LABEL_VALUE_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_WORKER_ID_LENGTH",
    "WORKER_TYPE_VALUES",
    "DynamicWorker",
    "DynamicWorkerConfig",
    "FieldViolation",
    "ResourceUsage",
    "UpsertOutcome",
    "WorkerCapabilities",
    "WorkerRecord",
    "WorkerStatus",
    "WorkerType",
    "holds_control_characters",
    "merge_registration",
    "merge_registrations",
    "stored_form",
    "utcnow",
    "validate_incarnation",
    "validate_reason",
    "validate_record",
    "validate_worker",
    "validate_worker_fields",
    "validate_worker_id",
    "wire_size",
]

MAX_WORKER_ID_LENGTH = 128
MAX_CPU_CORES = 4096
MAX_MEMORY_MB = 64 * 1024 * 1024  # 64 TiB
MAX_DISK_MB = 1024 * 1024 * 1024  # 1 PiB
MAX_GPU_COUNT = 1024
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 63
MAX_LABEL_VALUE_LENGTH = 256
MAX_NAME_LENGTH = 253  # pool, hostname, agent version
MAX_INCARNATION = 2**63 - 1  # what every store's integer column holds
MAX_REASON_LENGTH = 1024  # a reason given with an unregistration, drain, shutdown or status change

_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
# C0 (NUL included), DEL and C1: they break PostgreSQL's jsonb (NUL) and reach terminals as escape sequences.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class WorkerType(enum.StrEnum):
    """How a worker is run."""

    DOCKER = "docker"
    PROCESS = "process"
    KUBERNETES = "kubernetes"
    STATIC = "static"
    MOCK = "mock"


class WorkerStatus(enum.StrEnum):
    """Lifecycle: PROVISIONING → REGISTERED → AVAILABLE ⇄ BUSY → DRAINING → UNREGISTERED → TERMINATED.

    ``REGISTERED`` is the control plane's view once the scheduler acknowledged the worker; ``AVAILABLE`` is the
    scheduler's. ``LOST`` means heartbeats stopped; ``FAILED`` that provisioning or registration failed.
    """

    PROVISIONING = "provisioning"
    REGISTERED = "registered"
    AVAILABLE = "available"
    BUSY = "busy"
    DRAINING = "draining"
    LOST = "lost"
    UNREGISTERED = "unregistered"
    TERMINATED = "terminated"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field, named by its path in the wire contract (``capabilities.cpu_cores``)."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


def utcnow() -> datetime:
    """The wall clock every default clock of hodei reads (tests inject their own)."""
    return datetime.now(UTC)


def _frozen_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    if isinstance(labels, MappingProxyType):
        return labels  # already read-only (a worker's labels passed on to its record)
    return MappingProxyType(dict(labels or {}))


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """What an agent reports with each heartbeat."""

    cpu_percent: float = 0.0
    memory_used_mb: int = 0
    running_jobs: int = 0


@dataclass(frozen=True, slots=True)
class WorkerCapabilities:
    """What a worker can run."""

    cpu_cores: int
    memory_mb: int
    disk_mb: int = 0
    gpu_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicWorkerConfig:
    """The shape of a worker to provision: ``DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=4)``.

    Values are not checked on construction; :meth:`violations` (and the registration adapter, before it sends)
    reports every invalid field at once.
    """

    worker_type: WorkerType = WorkerType.DOCKER
    cpu_cores: int = 2
    memory_mb: int = 4096
    disk_mb: int = 0
    gpu_count: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    pool: str = "default"
    image: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_labels(self.labels))

    def __hash__(self) -> int:
        return hash(
            (self.worker_type, self.capabilities, frozenset(self.labels.items()), self.pool, self.image)
        )

    @property
    def capabilities(self) -> WorkerCapabilities:
        return WorkerCapabilities(self.cpu_cores, self.memory_mb, self.disk_mb, self.gpu_count)

    def violations(self) -> list[FieldViolation]:
        return validate_worker_fields(
            worker_id=None,
            worker_type=self.worker_type.value,
            capabilities=self.capabilities,
            labels=self.labels,
            pool=self.pool,
        )


@dataclass(frozen=True, slots=True)
class DynamicWorker:
    """A worker as the control plane knows it: ``DynamicWorker("worker-1", WorkerType.DOCKER, config)``."""

    worker_id: str
    worker_type: WorkerType = WorkerType.DOCKER
    config: DynamicWorkerConfig = field(default_factory=DynamicWorkerConfig)
    status: WorkerStatus = WorkerStatus.PROVISIONING
    incarnation: int = 0
    hostname: str = ""

    def __post_init__(self) -> None:
        # The worker's type is the one given to the worker; its config follows it, so the two never disagree.
        if self.config.worker_type is not self.worker_type:
            object.__setattr__(self, "config", replace(self.config, worker_type=self.worker_type))

    @property
    def capabilities(self) -> WorkerCapabilities:
        return self.config.capabilities

    @property
    def labels(self) -> Mapping[str, str]:
        return self.config.labels

    @property
    def pool(self) -> str:
        return self.config.pool

    def with_status(self, status: WorkerStatus) -> DynamicWorker:
        return replace(self, status=status)

    def violations(self) -> list[FieldViolation]:
        return validate_worker(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """A worker as the scheduler's registry holds it."""

    worker_id: str
    worker_type: WorkerType
    capabilities: WorkerCapabilities
    status: WorkerStatus = WorkerStatus.AVAILABLE
    labels: Mapping[str, str] = field(default_factory=dict)
    pool: str = "default"
    hostname: str = ""
    agent_version: str = ""
    incarnation: int = 0
    registered_at: datetime | None = None
    updated_at: datetime | None = None
    lease_ttl: float | None = None  # None: no agent, never expires
    drained: bool = False
    # Live facts about the agent's stream: not stored, filled in by the scheduler when it answers.
    connected: bool = False
    usage: ResourceUsage | None = None
    last_heartbeat_at: datetime | None = None
    connected_via: str = ""  # the other replica (of a shared registry) whose stream the agent holds

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_labels(self.labels))

    def __hash__(self) -> int:
        return hash((self.worker_id, self.incarnation, self.status, frozenset(self.labels.items())))

    def to_worker(self) -> DynamicWorker:
        """The control plane's view of this record."""
        config = DynamicWorkerConfig(
            worker_type=self.worker_type,
            cpu_cores=self.capabilities.cpu_cores,
            memory_mb=self.capabilities.memory_mb,
            disk_mb=self.capabilities.disk_mb,
            gpu_count=self.capabilities.gpu_count,
            labels=self.labels,
            pool=self.pool,
        )
        return DynamicWorker(
            self.worker_id, self.worker_type, config, self.status, self.incarnation, self.hostname
        )


class UpsertOutcome(enum.Enum):
    """What writing a registration did to the registry."""

    CREATED = "created"
    UPDATED = "updated"
    KEPT = "kept"  # an unfenced (incarnation 0) registration of a worker its agent manages: the agent's wins
    STALE = "stale"  # an older incarnation than the stored one: nothing written


def merge_registration(stored: WorkerRecord | None, new: WorkerRecord) -> tuple[UpsertOutcome, WorkerRecord]:
    """The rule of registration as an idempotent upsert fenced by incarnation; every store applies it atomically.

    A higher incarnation is a restarted worker: it replaces the record and starts ``AVAILABLE``. The same
    incarnation is a retry or a refresh: the fields are replaced but the status is kept (a ``LOST`` worker is
    ``AVAILABLE`` again). A lower incarnation is refused. Incarnation 0 means "not fenced" (the control plane
    registering what it provisioned): it never overrides a worker whose agent registered with an incarnation.
    """
    if stored is None:
        return UpsertOutcome.CREATED, new
    if new.incarnation == 0 and stored.incarnation > 0:
        return UpsertOutcome.KEPT, stored
    if new.incarnation < stored.incarnation:
        return UpsertOutcome.STALE, stored
    restarted = new.incarnation > stored.incarnation
    keep_status = not restarted and stored.status is not WorkerStatus.LOST
    merged = replace(
        new,
        registered_at=stored.registered_at,
        status=stored.status if keep_status else new.status,
        drained=stored.drained if keep_status else new.drained,
        lease_ttl=new.lease_ttl if new.lease_ttl is not None else stored.lease_ttl,
    )
    return UpsertOutcome.UPDATED, merged


def stored_form(record: WorkerRecord) -> WorkerRecord:
    """The record without its live fields (stream, usage, last heartbeat), as every store keeps it."""
    if (
        record.connected
        or record.usage is not None
        or record.last_heartbeat_at is not None
        or record.connected_via
    ):
        return replace(record, connected=False, usage=None, last_heartbeat_at=None, connected_via="")
    return record


# What a record's encoding takes besides its texts: numbers, timestamps, tags and lengths, generously.
_RECORD_FRAMING = 160
_LABEL_FRAMING = 8


def wire_size(record: WorkerRecord) -> int:
    """An upper estimate of the bytes ``record`` takes encoded (its texts in UTF-8, and the framing): what bounds a
    page of a listing and a group commit's transaction."""
    texts = (record.worker_id, record.pool, record.hostname, record.agent_version, record.worker_type.value)
    labels = sum(len(k.encode()) + len(v.encode()) + _LABEL_FRAMING for k, v in record.labels.items())
    return _RECORD_FRAMING + sum(len(t.encode()) for t in texts) + labels


def merge_registrations(
    current: MutableMapping[str, WorkerRecord], records: Sequence[WorkerRecord]
) -> tuple[list[tuple[UpsertOutcome, WorkerRecord]], dict[str, WorkerRecord]]:
    """A batch of registrations merged in order against ``current`` (updated in place), as every store does it.

    Returns each record's outcome and the record now stored, and what the store must write: the last state of
    every worker that was created or updated (a worker may appear twice in one batch).
    """
    outcomes: list[tuple[UpsertOutcome, WorkerRecord]] = []
    written: dict[str, WorkerRecord] = {}
    for record in records:
        outcome, stored = merge_registration(current.get(record.worker_id), stored_form(record))
        if outcome in (UpsertOutcome.CREATED, UpsertOutcome.UPDATED):
            current[record.worker_id] = written[record.worker_id] = stored
        outcomes.append((outcome, stored))
    return outcomes, written


WORKER_TYPE_VALUES = frozenset(t.value for t in WorkerType)


def validate_worker_id(worker_id: str, *, field_name: str = "worker_id") -> list[FieldViolation]:
    if not worker_id:
        return [FieldViolation(field_name, "must not be empty")]
    if len(worker_id) > MAX_WORKER_ID_LENGTH:
        return [FieldViolation(field_name, f"must be at most {MAX_WORKER_ID_LENGTH} characters")]
    if not _WORKER_ID.fullmatch(worker_id):
        return [
            FieldViolation(
                field_name,
                "must start with a letter or digit and contain only letters, digits, '.', '_' and '-'",
            )
        ]
    return []


def _range(name: str, value: int, low: int, high: int) -> list[FieldViolation]:
    if value < low or value > high:
        return [FieldViolation(name, f"must be between {low} and {high}, got {value}")]
    return []


def _name(name: str, value: str) -> list[FieldViolation]:
    if value and (len(value) > MAX_NAME_LENGTH or not _NAME.fullmatch(value)):
        return [
            FieldViolation(
                name,
                f"must be at most {MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit",
            )
        ]
    return []


def _labels(labels: Mapping[str, str], field_name: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if len(labels) > MAX_LABELS:
        found.append(FieldViolation(field_name, f"at most {MAX_LABELS} labels, got {len(labels)}"))
    for key, value in labels.items():
        where = f"{field_name}[{key[:MAX_LABEL_KEY_LENGTH]!r}]"
        if not key or len(key) > MAX_LABEL_KEY_LENGTH or not _LABEL_KEY.fullmatch(key):
            found.append(
                FieldViolation(
                    where,
                    f"key must be 1 to {MAX_LABEL_KEY_LENGTH} letters, digits, '.', '_', '/' or '-', "
                    "starting and ending with a letter or digit",
                )
            )
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            found.append(FieldViolation(where, f"value must be at most {MAX_LABEL_VALUE_LENGTH} characters"))
        elif _CONTROL.search(value):
            found.append(FieldViolation(where, "value must not contain control characters"))
    return found


def holds_control_characters(text: str) -> bool:
    """Whether ``text`` holds a character no label value or reason may hold (C0 with NUL, DEL, C1)."""
    return _CONTROL.search(text) is not None


def validate_incarnation(incarnation: int) -> list[FieldViolation]:
    """An incarnation every store can hold: 0 (not fenced) to :data:`MAX_INCARNATION`."""
    return _range("incarnation", incarnation, 0, MAX_INCARNATION)


def validate_reason(reason: str, field_name: str = "reason") -> list[FieldViolation]:
    """A reason a caller gives (unregistration, drain, shutdown, an agent's status change): at most
    :data:`MAX_REASON_LENGTH` characters, no control characters."""
    if len(reason) > MAX_REASON_LENGTH:
        return [FieldViolation(field_name, f"is longer than {MAX_REASON_LENGTH} characters")]
    if _CONTROL.search(reason):
        return [FieldViolation(field_name, "must not contain control characters")]
    return []


def validate_worker_fields(
    *,
    worker_id: str | None,
    worker_type: str,
    capabilities: WorkerCapabilities | None,
    labels: Mapping[str, str],
    pool: str = "",
    hostname: str = "",
    agent_version: str = "",
    incarnation: int = 0,
) -> list[FieldViolation]:
    """Every violation in one registration, with field paths as in the wire contract.

    ``worker_id=None`` skips the id (a config has none yet); ``capabilities=None`` means the message had none.
    """
    found: list[FieldViolation] = []
    if worker_id is not None:
        found += validate_worker_id(worker_id)
    if capabilities is None:
        found.append(FieldViolation("capabilities", "is required"))
    else:
        found += _range("capabilities.cpu_cores", capabilities.cpu_cores, 1, MAX_CPU_CORES)
        found += _range("capabilities.memory_mb", capabilities.memory_mb, 1, MAX_MEMORY_MB)
        found += _range("capabilities.disk_mb", capabilities.disk_mb, 0, MAX_DISK_MB)
        found += _range("capabilities.gpu_count", capabilities.gpu_count, 0, MAX_GPU_COUNT)
    if worker_type not in WORKER_TYPE_VALUES:
        allowed = ", ".join(t.value for t in WorkerType)
        found.append(
            FieldViolation(
                "metadata.worker_type", f"must be one of {allowed}, got {quote_short(worker_type)}"
            )
        )
    found += _labels(labels, "metadata.labels")
    found += _name("metadata.pool", pool)
    found += _name("metadata.hostname", hostname)
    found += _name("metadata.agent_version", agent_version)
    found += validate_incarnation(incarnation)
    return found


def validate_record(record: WorkerRecord) -> list[FieldViolation]:
    """Every violation in a record the registry is about to write."""
    return validate_worker_fields(
        worker_id=record.worker_id,
        worker_type=record.worker_type.value,
        capabilities=record.capabilities,
        labels=record.labels,
        pool=record.pool,
        hostname=record.hostname,
        agent_version=record.agent_version,
        incarnation=record.incarnation,
    )


def validate_worker(
    worker: DynamicWorker, *, config_violations: list[FieldViolation] | None = None
) -> list[FieldViolation]:
    """Every violation in a worker the control plane is about to register, in contract order.

    ``config_violations`` may pass in ``worker.config.violations()`` computed once for many workers that share
    their config (a batch usually does).
    """
    if config_violations is None:
        config_violations = worker.config.violations()
    return (
        validate_worker_id(worker.worker_id)
        + config_violations
        + _name("metadata.hostname", worker.hostname)
        + validate_incarnation(worker.incarnation)
    )
