"""The workers: a config to provision, a worker as the control plane knows it, a record as the registry holds
it; each frozen, each carrying its own verdict (its violations, found once)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from hodei.domain._assignments import Assignment
from hodei.domain._validation import (
    validate_incarnation,
    validate_name,
    validate_worker_fields,
    validate_worker_id,
)
from hodei.domain._values import FieldViolation, ResourceUsage, WorkerCapabilities, WorkerStatus, WorkerType

__all__ = [
    "DynamicWorker",
    "DynamicWorkerConfig",
    "Verdict",
    "WorkerRecord",
    "record_in_shape",
    "record_of",
    "validate_record",
    "validate_worker",
]

Verdict = tuple[FieldViolation, ...]
"""Every violation of a frozen value, found once and kept on it; empty when it is valid."""


def _frozen_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    if isinstance(labels, MappingProxyType):
        return labels  # already read-only (a worker's labels passed on to its record)
    return MappingProxyType(dict(labels or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicWorkerConfig:
    """The shape of a worker to provision: ``DynamicWorkerConfig(worker_type=WorkerType.DOCKER, cpu_cores=4)``.

    Values are not checked on construction; :meth:`violations` reports every invalid field at once, and
    :attr:`verdict` is that, found once and kept (many workers share one config: it is checked once for all).
    """

    worker_type: WorkerType = WorkerType.DOCKER
    cpu_cores: int = 2
    memory_mb: int = 4096
    disk_mb: int = 0
    gpu_count: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    pool: str = "default"
    image: str | None = None
    _verdict: Verdict | None = field(default=None, init=False, repr=False, compare=False)

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

    @property
    def verdict(self) -> Verdict:
        """:meth:`violations`, found once: the config carries its own verdict."""
        verdict = self._verdict
        if verdict is None:
            verdict = tuple(self.violations())
            object.__setattr__(self, "_verdict", verdict)
        return verdict


@dataclass(frozen=True, slots=True)
class DynamicWorker:
    """A worker as the control plane knows it: ``DynamicWorker("worker-1", WorkerType.DOCKER, config)``."""

    worker_id: str
    worker_type: WorkerType = WorkerType.DOCKER
    config: DynamicWorkerConfig = field(default_factory=DynamicWorkerConfig)
    status: WorkerStatus = WorkerStatus.PROVISIONING
    incarnation: int = 0
    hostname: str = ""
    _verdict: Verdict | None = field(default=None, init=False, repr=False, compare=False)

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

    @property
    def verdict(self) -> Verdict:
        """:meth:`violations`, found once (its config's part by the config, once for every worker that shares
        it): the worker carries its own verdict."""
        verdict = self._verdict
        if verdict is None:
            verdict = tuple(self.violations())
            object.__setattr__(self, "_verdict", verdict)
        return verdict


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
    assignment: Assignment | None = None  # the job it is bound to (BUSY), stored with it
    use_count: int = 0  # how many assignments it was bound to since it (re)started
    # Live facts about the agent's stream: not stored, filled in by the scheduler when it answers.
    connected: bool = False
    usage: ResourceUsage | None = None
    last_heartbeat_at: datetime | None = None
    connected_via: str = ""  # the other replica (of a shared registry) whose stream the agent holds
    # What the agent's hello said it runs (assignment ids): a reconnected agent keeps the job it still runs.
    running_jobs: tuple[str, ...] = field(default=(), compare=False)
    # Its verdict once found; until then, what it was made from (record_of, record_in_shape), whose verdict is
    # (part of) its own. replace() makes a record that finds its own.
    _verdict: Verdict | DynamicWorker | DynamicWorkerConfig | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen_labels(self.labels))

    def __hash__(self) -> int:
        return hash((self.worker_id, self.incarnation, self.status, frozenset(self.labels.items())))

    def violations(self) -> list[FieldViolation]:
        return validate_record(self)

    @property
    def verdict(self) -> Verdict:
        """:meth:`violations`, found once: what the registry checks before writing, however many times it asks
        (made from a worker, the worker's verdict; made in a shape, the shape's for the fields it gave)."""
        made_from = self._verdict
        if isinstance(made_from, tuple):
            return made_from
        if isinstance(made_from, DynamicWorker):
            verdict = made_from.verdict
        else:
            verdict = tuple(validate_record(self, shape=made_from))
        object.__setattr__(self, "_verdict", verdict)
        return verdict

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


def record_of(
    worker: DynamicWorker,
    *,
    status: WorkerStatus = WorkerStatus.AVAILABLE,
    registered_at: datetime | None = None,
    lease_ttl: float | None = None,
    running_jobs: tuple[str, ...] = (),
) -> WorkerRecord:
    """The record of registering ``worker``: it carries the worker's verdict as its own."""
    record = WorkerRecord(
        worker_id=worker.worker_id,
        worker_type=worker.worker_type,
        capabilities=worker.capabilities,
        status=status,
        labels=worker.labels,
        pool=worker.pool,
        hostname=worker.hostname,
        incarnation=worker.incarnation,
        registered_at=registered_at,
        updated_at=registered_at,
        lease_ttl=lease_ttl,
        running_jobs=running_jobs,
    )
    object.__setattr__(record, "_verdict", worker)
    return record


def record_in_shape(
    shape: DynamicWorkerConfig,
    capabilities: WorkerCapabilities,
    *,
    worker_id: str,
    hostname: str,
    agent_version: str,
    incarnation: int,
    registered_at: datetime,
    status: WorkerStatus = WorkerStatus.AVAILABLE,
) -> WorkerRecord:
    """A record of ``shape``'s type, ``capabilities`` (the shape's), labels and pool: the records of one batch
    made in one shape share its verdict for those fields, found once."""
    record = WorkerRecord(
        worker_id=worker_id,
        worker_type=shape.worker_type,
        capabilities=capabilities,
        status=status,
        labels=shape.labels,
        pool=shape.pool,
        hostname=hostname,
        agent_version=agent_version,
        incarnation=incarnation,
        registered_at=registered_at,
        updated_at=registered_at,
    )
    object.__setattr__(record, "_verdict", shape)
    return record


def validate_record(
    record: WorkerRecord, *, shape: DynamicWorkerConfig | None = None
) -> list[FieldViolation]:
    """Every violation in a record the registry is about to write.

    ``shape``, a config of the record's type, capabilities, labels and pool, gives its verdict for those.
    """
    if shape is not None:
        found = validate_worker_id(record.worker_id)  # a new list: extended in place
        found += shape.verdict
        found += validate_name("metadata.hostname", record.hostname)
        found += validate_name("metadata.agent_version", record.agent_version)
        found += validate_incarnation(record.incarnation)
        return found
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


def validate_worker(worker: DynamicWorker) -> list[FieldViolation]:
    """Every violation in a worker the control plane is about to register, in contract order; its config's
    part is the config's verdict, found once for every worker that shares the config."""
    return (
        validate_worker_id(worker.worker_id)
        + list(worker.config.verdict)
        + validate_name("metadata.hostname", worker.hostname)
        + validate_incarnation(worker.incarnation)
    )
