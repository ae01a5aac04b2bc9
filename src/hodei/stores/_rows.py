"""A worker record as a table row: the columns every SQL store keeps, and the conversions both ways.

Capabilities are columns of their own (a store can filter or sum them); labels are a JSON object with sorted
keys. Timestamps are converted by the store (SQLite keeps ISO 8601 text, PostgreSQL ``timestamptz``).

A worker's assignment is one JSON text (compact, sorted keys, ASCII: every character of a job's command and
environment escaped as JSON escapes it, so that any text round-trips, NUL included; ``bound_at`` ISO 8601 in
UTC), NULL when unbound; ``job_id`` repeats its job id (NULL when unbound) for the stores' unique index: at
most one worker per job (:mod:`hodei.stores._bound`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from hodei._kept import SameAsLast
from hodei.domain import Assignment, Job, WorkerCapabilities, WorkerRecord, WorkerStatus, WorkerType

__all__ = ["COLUMNS", "by_pool", "from_row", "to_row"]

COLUMNS = (
    "worker_id",
    "worker_type",
    "status",
    "pool",
    "hostname",
    "agent_version",
    "incarnation",
    "cpu_cores",
    "memory_mb",
    "disk_mb",
    "gpu_count",
    "labels",
    "registered_at",
    "updated_at",
    "lease_ttl",
    "drained",
    "assignment",
    "job_id",
    "use_count",
)

_EMPTY_LABELS = "{}"


def _encode_labels(labels: Any) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":")) if labels else _EMPTY_LABELS


# The records of one shape share their labels: a group of them encodes those once.
_labels_json = SameAsLast(_encode_labels)


def _assignment_json(assignment: Assignment | None) -> str | None:
    if assignment is None:
        return None
    job = assignment.job
    return json.dumps(
        {
            "assignment_id": assignment.assignment_id,
            "job_id": assignment.job_id,
            "worker_id": assignment.worker_id,
            "incarnation": assignment.incarnation,
            "lease_ttl": float(assignment.lease_ttl),
            "priority": assignment.priority,
            "bound_at": None
            if assignment.bound_at is None
            else assignment.bound_at.astimezone(UTC).isoformat(),
            "job": None
            if job is None
            else {
                "command": list(job.command),
                "environment": dict(job.environment),
                "timeout": None if job.timeout is None else float(job.timeout),
            },
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _assignment(text: str | None) -> Assignment | None:
    if text is None:
        return None
    fields = json.loads(text)
    job = fields["job"]
    return Assignment(
        assignment_id=fields["assignment_id"],
        job_id=fields["job_id"],
        worker_id=fields["worker_id"],
        incarnation=fields["incarnation"],
        lease_ttl=fields["lease_ttl"],
        priority=fields["priority"],
        bound_at=None if fields["bound_at"] is None else datetime.fromisoformat(fields["bound_at"]),
        job=None if job is None else Job(tuple(job["command"]), job["environment"], job["timeout"]),
    )


def to_row(record: WorkerRecord, timestamp: Callable[[datetime | None], Any]) -> tuple[Any, ...]:
    """The record's values in :data:`COLUMNS` order."""
    caps = record.capabilities
    return (
        record.worker_id,
        record.worker_type.value,
        record.status.value,
        record.pool,
        record.hostname,
        record.agent_version,
        record.incarnation,
        caps.cpu_cores,
        caps.memory_mb,
        caps.disk_mb,
        caps.gpu_count,
        _labels_json(record.labels),
        timestamp(record.registered_at),
        timestamp(record.updated_at),
        record.lease_ttl,
        bool(record.drained),
        _assignment_json(record.assignment),
        None if record.assignment is None else record.assignment.job_id,
        record.use_count,
    )


def from_row(row: Sequence[Any], timestamp: Callable[[Any], datetime | None]) -> WorkerRecord:
    """The record of a row whose values are in :data:`COLUMNS` order."""
    (
        worker_id,
        worker_type,
        status,
        pool,
        hostname,
        agent_version,
        incarnation,
        cpu_cores,
        memory_mb,
        disk_mb,
        gpu_count,
        labels,
        registered_at,
        updated_at,
        lease_ttl,
        drained,
        assignment,
        _job_id,
        use_count,
    ) = row
    return WorkerRecord(
        worker_id=worker_id,
        worker_type=WorkerType(worker_type),
        capabilities=WorkerCapabilities(cpu_cores, memory_mb, disk_mb, gpu_count),
        status=WorkerStatus(status),
        labels=json.loads(labels) if labels != _EMPTY_LABELS else {},
        pool=pool,
        hostname=hostname,
        agent_version=agent_version,
        incarnation=incarnation,
        registered_at=timestamp(registered_at),
        updated_at=timestamp(updated_at),
        lease_ttl=lease_ttl,
        drained=bool(drained),
        assignment=_assignment(assignment),
        use_count=use_count,
    )


def by_pool(rows: Iterable[Any]) -> dict[str, dict[WorkerStatus, int]]:
    """``(pool, status, count)`` rows (a ``GROUP BY pool, status``) as pool -> status -> count."""
    counts: dict[str, dict[WorkerStatus, int]] = {}
    for pool, status, count in rows:
        counts.setdefault(pool, {})[WorkerStatus(status)] = int(count)
    return counts
