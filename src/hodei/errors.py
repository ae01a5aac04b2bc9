"""hodei's exceptions. One root, structured fields, no text to parse.

::

    HodeiError
    ├── SchedulerError                what the scheduler answered (or that it could not be reached)
    │   ├── SchedulerUnavailable          UNAVAILABLE              transient
    │   ├── SchedulerTimeout              DEADLINE_EXCEEDED        transient
    │   ├── SchedulerOverloaded           RESOURCE_EXHAUSTED       transient, may carry retry_after
    │   ├── SchedulerConflict             ABORTED                  transient
    │   ├── InvalidWorkerData             INVALID_ARGUMENT, OUT_OF_RANGE; carries the field violations
    │   ├── WorkerNotFound                NOT_FOUND
    │   ├── WorkerAlreadyExists           ALREADY_EXISTS
    │   ├── StaleIncarnation              FAILED_PRECONDITION (an older incarnation than the one registered)
    │   ├── NoWorkerFits                  FAILED_PRECONDITION (requirements no pool and no worker can meet)
    │   ├── WorkerNotIdle                 FAILED_PRECONDITION (a drain only if available, of a busy worker)
    │   ├── AccessDenied                  UNAUTHENTICATED, PERMISSION_DENIED
    │   ├── RegistrationCancelled         CANCELLED
    │   └── SchedulerInternalError        INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED, anything else
    ├── RegistrationError             the registration adapter's verdict on one worker
    │   ├── RegistrationFailed            a permanent error: not retried
    │   └── MaxRetriesExceeded            every attempt failed with a transient error
    ├── StoreError                    the registry's store cannot be used as it is (a schema from the future)
    │   ├── StoreUnavailable              also a SchedulerUnavailable: any failure of the database or its driver
    │   ├── StoreRefusedData              also an InvalidWorkerData: data the database cannot hold
    │   └── JobAlreadyBound               a record bound to a job another record is bound to (not written)
    ├── ProviderError                 a worker provider could not provision, stop or destroy a worker
    └── ProvisioningError             the management service gave up on a worker (and says what it cleaned up)

Which kinds are transient is decided here, once (:attr:`SchedulerError.retryable`), and the adapter obeys it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from hodei._quoting import clip
from hodei._violations import cap_violations
from hodei.domain import FieldViolation

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "AccessDenied",
    "ErrorCode",
    "HodeiError",
    "InvalidWorkerData",
    "JobAlreadyBound",
    "MaxRetriesExceeded",
    "NoWorkerFits",
    "ProviderError",
    "ProvisioningError",
    "RegistrationCancelled",
    "RegistrationError",
    "RegistrationFailed",
    "SchedulerConflict",
    "SchedulerError",
    "SchedulerInternalError",
    "SchedulerOverloaded",
    "SchedulerTimeout",
    "SchedulerUnavailable",
    "StaleIncarnation",
    "StoreError",
    "StoreRefusedData",
    "StoreUnavailable",
    "WorkerAlreadyExists",
    "WorkerNotFound",
    "WorkerNotIdle",
    "scheduler_error_for",
]


class ErrorCode(enum.IntEnum):
    """The canonical status codes (google.rpc.Code), so that the domain needs no gRPC import."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class HodeiError(Exception):
    """The root of every error hodei raises."""


MAX_MESSAGE_LENGTH = 1024
"""The longest message a :class:`SchedulerError` carries (client text inside it is quoted shorter still)."""


class SchedulerError(HodeiError):
    """An error answered by the scheduler, or the failure to reach it.

    ``code`` is the status code as received, ``message`` its text; ``violations`` names invalid fields;
    ``retry_after`` (seconds) is the scheduler's advice when it is overloaded. Whatever was given, the message
    keeps at most :data:`MAX_MESSAGE_LENGTH` characters and the violations the first
    :data:`~hodei._quoting.MAX_VIOLATIONS` and a count of the others (an error is echoed to clients and logs).
    """

    default_code = ErrorCode.UNKNOWN
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        worker_id: str | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        self.code = self.default_code if code is None else code
        self.message = message = clip(message, MAX_MESSAGE_LENGTH)
        self.worker_id = worker_id
        self.violations = tuple(cap_violations(violations))
        self.retry_after = retry_after
        super().__init__(message)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.violations:
            text += " (" + "; ".join(str(v) for v in self.violations) + ")"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, message={self.message!r})"


class SchedulerUnavailable(SchedulerError):
    default_code = ErrorCode.UNAVAILABLE
    retryable = True


class SchedulerTimeout(SchedulerError):
    default_code = ErrorCode.DEADLINE_EXCEEDED
    retryable = True


class SchedulerOverloaded(SchedulerError):
    default_code = ErrorCode.RESOURCE_EXHAUSTED
    retryable = True


class SchedulerConflict(SchedulerError):
    default_code = ErrorCode.ABORTED
    retryable = True


class InvalidWorkerData(SchedulerError):
    default_code = ErrorCode.INVALID_ARGUMENT


class WorkerNotFound(SchedulerError):
    default_code = ErrorCode.NOT_FOUND


class WorkerAlreadyExists(SchedulerError):
    default_code = ErrorCode.ALREADY_EXISTS


class StaleIncarnation(SchedulerError):
    default_code = ErrorCode.FAILED_PRECONDITION


class AccessDenied(SchedulerError):
    default_code = ErrorCode.PERMISSION_DENIED


class RegistrationCancelled(SchedulerError):
    default_code = ErrorCode.CANCELLED


class SchedulerInternalError(SchedulerError):
    default_code = ErrorCode.INTERNAL


_KIND_BY_CODE: dict[ErrorCode, type[SchedulerError]] = {
    ErrorCode.CANCELLED: RegistrationCancelled,
    ErrorCode.INVALID_ARGUMENT: InvalidWorkerData,
    ErrorCode.OUT_OF_RANGE: InvalidWorkerData,
    ErrorCode.DEADLINE_EXCEEDED: SchedulerTimeout,
    ErrorCode.NOT_FOUND: WorkerNotFound,
    ErrorCode.ALREADY_EXISTS: WorkerAlreadyExists,
    ErrorCode.PERMISSION_DENIED: AccessDenied,
    ErrorCode.UNAUTHENTICATED: AccessDenied,
    ErrorCode.RESOURCE_EXHAUSTED: SchedulerOverloaded,
    ErrorCode.FAILED_PRECONDITION: StaleIncarnation,
    ErrorCode.ABORTED: SchedulerConflict,
    ErrorCode.UNAVAILABLE: SchedulerUnavailable,
}


class NoWorkerFits(SchedulerError):
    """Requirements that no pool's template and no registered worker could ever meet: refused at once rather
    than left waiting forever (FAILED_PRECONDITION, its violation's field ``requirements``)."""

    default_code = ErrorCode.FAILED_PRECONDITION


class WorkerNotIdle(SchedulerError):
    """A drain asked only for an idle worker found it busy (bound to a job, or not AVAILABLE): nothing changed
    (FAILED_PRECONDITION, its violation's field ``status``)."""

    default_code = ErrorCode.FAILED_PRECONDITION


def scheduler_error_for(
    code: ErrorCode,
    message: str,
    *,
    worker_id: str | None = None,
    violations: Sequence[FieldViolation] = (),
    retry_after: float | None = None,
) -> SchedulerError:
    """The error kind for a status code; codes with no kind of their own are internal errors."""
    kind = _KIND_BY_CODE.get(code, SchedulerInternalError)
    if code is ErrorCode.FAILED_PRECONDITION:
        fields = {v.field for v in violations}
        kind = NoWorkerFits if "requirements" in fields else WorkerNotIdle if "status" in fields else kind
    return kind(message, code=code, worker_id=worker_id, violations=violations, retry_after=retry_after)


class StoreError(HodeiError):
    """The registry's store cannot be used as it is (a schema from the future, a closed store)."""


class StoreUnavailable(StoreError, SchedulerUnavailable):
    """The registry's database cannot be used now (unreachable, locked, read-only after a failover, out of
    connections, failing in any way of its driver's): to a client, the scheduler is unavailable (retryable)."""


class StoreRefusedData(StoreError, InvalidWorkerData):
    """The registry's database cannot hold this data (a number beyond its range, a character it refuses): to
    a client, its request is invalid (not retried)."""


class JobAlreadyBound(StoreError):
    """The store holds another record bound to this job id: the write was refused, nothing changed."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {clip(job_id)} is already bound to a worker")
        self.job_id = job_id


class RegistrationError(HodeiError):
    """The registration adapter could not register (or unregister) a worker.

    ``cause`` is the last :class:`SchedulerError`; ``attempts`` how many calls were made (0 when the worker was
    rejected before any call, for instance for invalid data).
    """

    def __init__(self, worker_id: str, cause: SchedulerError, *, attempts: int) -> None:
        self.worker_id = worker_id
        self.cause = cause
        self.attempts = attempts
        super().__init__(self._describe())

    @property
    def code(self) -> ErrorCode:
        return self.cause.code

    @property
    def violations(self) -> tuple[FieldViolation, ...]:
        return self.cause.violations

    def _describe(self) -> str:
        return f"worker {self.worker_id!r}: {self.cause} (after {self.attempts} attempt(s))"


class RegistrationFailed(RegistrationError):
    """A permanent error: retrying would not help, so the adapter did not."""


class MaxRetriesExceeded(RegistrationError):
    """Every allowed attempt failed with a transient error; ``last_error`` is the final one."""

    @property
    def last_error(self) -> SchedulerError:
        return self.cause

    def _describe(self) -> str:
        return f"worker {self.worker_id!r}: gave up after {self.attempts} attempts; last error {self.cause}"


class ProviderError(HodeiError):
    """A worker provider failed. ``hint`` says what the operator can do about it."""

    def __init__(self, message: str, *, worker_id: str | None = None, hint: str = "") -> None:
        self.worker_id = worker_id
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ProvisioningError(HodeiError):
    """The management service could not bring a worker into service.

    ``cause`` is the registration or provider error; ``cleaned_up`` tells whether the provisioned resource was
    destroyed (True), kept on purpose (False), or could not be destroyed (``cleanup_error`` is set).
    """

    def __init__(
        self,
        worker_id: str,
        cause: HodeiError,
        *,
        cleaned_up: bool,
        cleanup_error: HodeiError | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.cause = cause
        self.cleaned_up = cleaned_up
        self.cleanup_error = cleanup_error
        if cleanup_error is not None:
            fate = f"destroying it failed too: {cleanup_error}"
        elif cleaned_up:
            fate = "it was destroyed"
        else:
            fate = "it was kept, as configured"
        super().__init__(f"worker {worker_id!r} could not be brought into service: {cause}; {fate}")
