"""The domain: workers, their specs and statuses, and the rules for what a valid worker is.

Nothing here knows about gRPC, SQL or Docker. Validation is one function over plain values
(:func:`validate_worker_fields`), used by the client before it sends and by the scheduler when it receives, so
that both sides name the same field with the same words. Each frozen config, worker and record carries its own
verdict (``verdict``: its violations, found once), so that each side checks a worker once.
"""

from __future__ import annotations

from hodei.domain._assignments import (
    DEFAULT_ASSIGNMENT_TTL,
    MAX_OUTPUT_TAIL,
    Assignment,
    Job,
    JobOutcome,
    JobResult,
    bounded_tail,
    validate_assignment_ttl,
    validate_job_id,
)
from hodei.domain._registration import (
    Change,
    UpsertOutcome,
    apply_change,
    merge_registration,
    merge_registrations,
    stored_form,
    wire_size,
)
from hodei.domain._validation import (
    MAX_CPU_CORES,
    MAX_DISK_MB,
    MAX_GPU_COUNT,
    MAX_INCARNATION,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    MAX_MEMORY_MB,
    MAX_NAME_LENGTH,
    MAX_REASON_LENGTH,
    MAX_WORKER_ID_LENGTH,
    holds_control_characters,
    validate_incarnation,
    validate_reason,
    validate_worker_fields,
    validate_worker_id,
)
from hodei.domain._values import (
    WORKER_TYPE_VALUES,
    FieldViolation,
    ResourceUsage,
    WorkerCapabilities,
    WorkerStatus,
    WorkerType,
    utcnow,
)
from hodei.domain._workers import (
    DynamicWorker,
    DynamicWorkerConfig,
    Verdict,
    WorkerRecord,
    record_in_shape,
    record_of,
    validate_record,
    validate_worker,
)

__all__ = [
    "DEFAULT_ASSIGNMENT_TTL",
    "MAX_CPU_CORES",
    "MAX_DISK_MB",
    "MAX_GPU_COUNT",
    "MAX_INCARNATION",
    "MAX_LABELS",
    "MAX_LABEL_KEY_LENGTH",
    "MAX_LABEL_VALUE_LENGTH",
    "MAX_MEMORY_MB",
    "MAX_NAME_LENGTH",
    "MAX_OUTPUT_TAIL",
    "MAX_REASON_LENGTH",
    "MAX_WORKER_ID_LENGTH",
    "WORKER_TYPE_VALUES",
    "Assignment",
    "Change",
    "DynamicWorker",
    "DynamicWorkerConfig",
    "FieldViolation",
    "Job",
    "JobOutcome",
    "JobResult",
    "ResourceUsage",
    "UpsertOutcome",
    "Verdict",
    "WorkerCapabilities",
    "WorkerRecord",
    "WorkerStatus",
    "WorkerType",
    "apply_change",
    "bounded_tail",
    "holds_control_characters",
    "merge_registration",
    "merge_registrations",
    "record_in_shape",
    "record_of",
    "stored_form",
    "utcnow",
    "validate_assignment_ttl",
    "validate_incarnation",
    "validate_job_id",
    "validate_reason",
    "validate_record",
    "validate_worker",
    "validate_worker_fields",
    "validate_worker_id",
    "wire_size",
]
