"""The rules of a valid worker: one function over plain values (:func:`validate_worker_fields`), used by the
client before it sends and by the scheduler when it receives, so that both sides name the same field with the
same words."""

from __future__ import annotations

import re
from collections.abc import Mapping

from hodei._quoting import quote_short
from hodei.domain._values import WORKER_TYPE_VALUES, FieldViolation, WorkerCapabilities, WorkerType

__all__ = [
    "MAX_CPU_CORES",
    "MAX_DISK_MB",
    "MAX_GPU_COUNT",
    "MAX_INCARNATION",
    "MAX_LABELS",
    "MAX_LABEL_KEY_LENGTH",
    "MAX_LABEL_VALUE_LENGTH",
    "MAX_MEMORY_MB",
    "MAX_NAME_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_WORKER_ID_LENGTH",
    "holds_control_characters",
    "validate_incarnation",
    "validate_name",
    "validate_reason",
    "validate_worker_fields",
    "validate_worker_id",
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


def validate_name(name: str, value: str) -> list[FieldViolation]:
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
    found += validate_name("metadata.pool", pool)
    found += validate_name("metadata.hostname", hostname)
    found += validate_name("metadata.agent_version", agent_version)
    found += validate_incarnation(incarnation)
    return found
