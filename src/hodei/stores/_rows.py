"""A worker record as a table row: the columns every SQL store keeps, and the conversions both ways.

Capabilities are columns of their own (a store can filter or sum them); labels are a JSON object with sorted
keys. Timestamps are converted by the store (SQLite keeps ISO 8601 text, PostgreSQL ``timestamptz``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from hodei.domain import WorkerCapabilities, WorkerRecord, WorkerStatus, WorkerType

__all__ = ["COLUMNS", "from_row", "to_row"]

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
)

_EMPTY_LABELS = "{}"


def _labels_json(labels: Any) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":")) if labels else _EMPTY_LABELS


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
    )
