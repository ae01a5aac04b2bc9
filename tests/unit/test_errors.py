"""The error family: which kind each status code becomes, which kinds are retried, and what each error says."""

from __future__ import annotations

import pytest

from hodei.domain import FieldViolation
from hodei.errors import (
    AccessDenied,
    ErrorCode,
    HodeiError,
    InvalidWorkerData,
    MaxRetriesExceeded,
    ProviderError,
    ProvisioningError,
    RegistrationCancelled,
    RegistrationError,
    RegistrationFailed,
    SchedulerConflict,
    SchedulerError,
    SchedulerInternalError,
    SchedulerOverloaded,
    SchedulerTimeout,
    SchedulerUnavailable,
    StaleIncarnation,
    WorkerAlreadyExists,
    WorkerNotFound,
    scheduler_error_for,
)
from tests.helpers import KIND_BY_CODE

TRANSIENT = {
    ErrorCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED,
    ErrorCode.RESOURCE_EXHAUSTED,
    ErrorCode.ABORTED,
}

VIOLATIONS = (
    FieldViolation("capabilities.cpu_cores", "must be between 1 and 4096, got 0"),
    FieldViolation("metadata.pool", "must not start with '-'"),
)


def test_the_table_covers_all_17_status_codes() -> None:
    assert len(ErrorCode) == 17
    assert set(KIND_BY_CODE) == set(ErrorCode)


@pytest.mark.parametrize(("code", "kind"), list(KIND_BY_CODE.items()), ids=lambda v: getattr(v, "name", ""))
def test_each_status_code_becomes_its_documented_kind_keeping_code_and_message(
    code: ErrorCode, kind: type[SchedulerError]
) -> None:
    error = scheduler_error_for(code, "what the scheduler said", worker_id="worker-1")

    assert type(error) is kind
    assert error.code is code
    assert error.message == "what the scheduler said"
    assert error.worker_id == "worker-1"
    assert isinstance(error, HodeiError)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_only_unavailable_deadline_exceeded_resource_exhausted_and_aborted_are_retryable(
    code: ErrorCode,
) -> None:
    assert scheduler_error_for(code, "m").retryable is (code in TRANSIENT)


def test_scheduler_error_for_keeps_violations_and_retry_advice() -> None:
    error = scheduler_error_for(
        ErrorCode.RESOURCE_EXHAUSTED, "busy", violations=list(VIOLATIONS), retry_after=1.5
    )

    assert error.violations == VIOLATIONS
    assert error.retry_after == 1.5


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (SchedulerUnavailable, ErrorCode.UNAVAILABLE),
        (SchedulerTimeout, ErrorCode.DEADLINE_EXCEEDED),
        (SchedulerOverloaded, ErrorCode.RESOURCE_EXHAUSTED),
        (SchedulerConflict, ErrorCode.ABORTED),
        (InvalidWorkerData, ErrorCode.INVALID_ARGUMENT),
        (WorkerNotFound, ErrorCode.NOT_FOUND),
        (WorkerAlreadyExists, ErrorCode.ALREADY_EXISTS),
        (StaleIncarnation, ErrorCode.FAILED_PRECONDITION),
        (AccessDenied, ErrorCode.PERMISSION_DENIED),
        (RegistrationCancelled, ErrorCode.CANCELLED),
        (SchedulerInternalError, ErrorCode.INTERNAL),
    ],
)
def test_a_kind_built_directly_has_its_default_code(kind: type[SchedulerError], code: ErrorCode) -> None:
    error = kind("m")

    assert error.code is code
    assert error.violations == ()
    assert error.retry_after is None
    assert error.worker_id is None


def test_str_of_a_scheduler_error_is_code_and_message() -> None:
    assert str(SchedulerUnavailable("scheduler is down")) == "UNAVAILABLE: scheduler is down"


def test_the_exception_argument_of_a_scheduler_error_is_its_message() -> None:
    error = scheduler_error_for(ErrorCode.UNAVAILABLE, "connection refused")

    assert error.args == ("connection refused",)


def test_str_of_a_scheduler_error_lists_every_violation() -> None:
    error = InvalidWorkerData("worker 'w' is invalid", violations=VIOLATIONS)

    assert str(error) == (
        "INVALID_ARGUMENT: worker 'w' is invalid "
        "(capabilities.cpu_cores: must be between 1 and 4096, got 0; metadata.pool: must not start with '-')"
    )


def test_repr_of_a_scheduler_error_names_kind_code_and_message() -> None:
    assert repr(AccessDenied("no", code=ErrorCode.UNAUTHENTICATED)) == (
        "AccessDenied(code=UNAUTHENTICATED, message='no')"
    )


# --- the registration adapter's verdicts ----------------------------------------------------------------


def test_registration_failed_carries_worker_attempts_cause_code_and_violations() -> None:
    cause = InvalidWorkerData("worker 'w' is invalid", worker_id="w", violations=VIOLATIONS)

    error = RegistrationFailed("w", cause, attempts=0)

    assert isinstance(error, RegistrationError)
    assert isinstance(error, HodeiError)
    assert error.worker_id == "w"
    assert error.attempts == 0
    assert error.cause is cause
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.violations == VIOLATIONS
    assert str(error) == f"worker 'w': {cause} (after 0 attempt(s))"


def test_max_retries_exceeded_carries_the_last_error_and_the_attempt_count() -> None:
    last = SchedulerUnavailable("connection refused", worker_id="w")

    error = MaxRetriesExceeded("w", last, attempts=4)

    assert isinstance(error, RegistrationError)
    assert error.worker_id == "w"
    assert error.attempts == 4
    assert error.cause is last
    assert error.last_error is last
    assert error.code is ErrorCode.UNAVAILABLE
    assert error.violations == ()
    assert str(error) == "worker 'w': gave up after 4 attempts; last error UNAVAILABLE: connection refused"


def test_a_registration_error_with_an_unauthenticated_cause_keeps_that_code() -> None:
    error = RegistrationError("w", AccessDenied("bad token", code=ErrorCode.UNAUTHENTICATED), attempts=1)

    assert error.code is ErrorCode.UNAUTHENTICATED


# --- providers and provisioning -------------------------------------------------------------------------


def test_a_provider_error_with_a_hint_says_it_after_the_message() -> None:
    error = ProviderError("cannot reach the Docker engine", worker_id="w", hint="is the daemon running?")

    assert str(error) == "cannot reach the Docker engine (is the daemon running?)"
    assert error.hint == "is the daemon running?"
    assert error.worker_id == "w"
    assert isinstance(error, HodeiError)


def test_a_provider_error_without_a_hint_is_just_the_message() -> None:
    error = ProviderError("image not found")

    assert str(error) == "image not found"
    assert error.hint == ""
    assert error.worker_id is None


def test_a_provisioning_error_whose_worker_was_destroyed_says_so() -> None:
    cause = ProviderError("boom")

    error = ProvisioningError("w", cause, cleaned_up=True)

    assert str(error) == "worker 'w' could not be brought into service: boom; it was destroyed"
    assert error.worker_id == "w"
    assert error.cause is cause
    assert error.cleaned_up is True
    assert error.cleanup_error is None


def test_a_provisioning_error_whose_worker_was_kept_says_so() -> None:
    cause = MaxRetriesExceeded("w", SchedulerUnavailable("down"), attempts=4)

    error = ProvisioningError("w", cause, cleaned_up=False)

    assert str(error) == (
        "worker 'w' could not be brought into service: "
        "worker 'w': gave up after 4 attempts; last error UNAVAILABLE: down; it was kept, as configured"
    )
    assert error.cleaned_up is False


def test_a_provisioning_error_whose_cleanup_failed_names_both_errors() -> None:
    cleanup_error = ProviderError("container is stuck", hint="remove it by hand")

    error = ProvisioningError("w", ProviderError("boom"), cleaned_up=False, cleanup_error=cleanup_error)

    assert str(error) == (
        "worker 'w' could not be brought into service: boom; "
        "destroying it failed too: container is stuck (remove it by hand)"
    )
    assert error.cleanup_error is cleanup_error
