"""The registration adapter's log events and spans, named in one place.

Each scheduler call the adapter retries is an *operation*: ``register_worker``, ``unregister_worker`` or
``drain_worker``. Each attempt is a span (``register_worker.attempt``, made current so that the gRPC client
span is its child): a child of the caller's span, or of a span for the operation when the caller has none.
The log events are ``<topic>.retrying`` (warning: ``attempt``, ``code``, ``backoff_s``), ``<topic>.failed``
(``reason``: rejected, exhausted, or invalid when never sent) and ``<topic>.succeeded``, where the topic is
``registration``, ``unregistration`` or ``drain``. A batch makes a ``register_workers.attempt`` span per call
(under ``register_workers_batch`` when the caller has no span), and the events
``registration.batch_retrying`` and ``registration.batch_finished``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from hodei.domain import WorkerType
from hodei.errors import ErrorCode, RegistrationError, SchedulerError
from hodei.observability import _tracing as tracing

__all__ = [
    "attempt_span",
    "batch_attempt_span",
    "batch_finished",
    "batch_retrying",
    "batch_span",
    "call_failed",
    "failed",
    "not_sent",
    "operation_span",
    "retrying",
    "succeeded",
]

log = logging.getLogger("hodei.registration")

FAILED_WORKERS = "hodei.failed_workers"

_TOPICS = {"register_worker": "registration", "unregister_worker": "unregistration", "drain_worker": "drain"}


def _attributes(worker_id: str, worker_type: WorkerType | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {tracing.WORKER_ID: worker_id}
    if worker_type is not None:
        attributes[tracing.WORKER_TYPE] = worker_type.value
    return attributes


def operation_span(
    operation: str, worker_id: str, worker_type: WorkerType | None
) -> contextlib.AbstractContextManager[Span]:
    """The operation's span, when the caller has none to hold its attempts."""
    return tracing.grouping_span(operation, _attributes(worker_id, worker_type))


def attempt_span(
    operation: str, worker_id: str, worker_type: WorkerType | None, attempt: int
) -> contextlib.AbstractContextManager[Span]:
    return tracing.span(
        f"{operation}.attempt", {**_attributes(worker_id, worker_type), tracing.ATTEMPT: attempt}
    )


def _fields(worker_id: str, worker_type: WorkerType | None, **more: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"worker_id": worker_id}
    if worker_type is not None:
        fields["worker_type"] = worker_type.value
    return fields | more


def retrying(
    span: Span,
    operation: str,
    worker_id: str,
    worker_type: WorkerType | None,
    attempt: int,
    error: SchedulerError,
    backoff: float,
) -> None:
    """Attempt ``attempt`` failed transiently; the next comes after ``backoff`` seconds."""
    code = error.code.name
    tracing.mark_failed(span, error, code=code, **{tracing.BACKOFF_S: backoff})
    span.add_event("retry", {tracing.BACKOFF_S: backoff, tracing.ERROR_CODE: code})
    log.warning(
        f"{_TOPICS[operation]}.retrying",
        extra=_fields(
            worker_id,
            worker_type,
            attempt=attempt,
            code=code,
            backoff_s=round(backoff, 6),
            error=error.message,
        ),
    )


def failed(
    span: Span,
    operation: str,
    worker_id: str,
    worker_type: WorkerType | None,
    attempt: int,
    error: SchedulerError,
    reason: str,
) -> None:
    """The operation gave up after ``attempt`` attempts: ``reason`` is ``rejected`` or ``exhausted``."""
    code = error.code.name
    tracing.mark_failed(span, error, code=code)
    log.log(
        logging.ERROR if reason == "exhausted" else logging.WARNING,
        f"{_TOPICS[operation]}.failed",
        extra=_fields(
            worker_id, worker_type, attempts=attempt, reason=reason, code=code, error=error.message
        ),
    )


def not_sent(worker_id: str, worker_type: WorkerType, error: RegistrationError) -> None:
    """The worker was refused before it was sent: its data is invalid."""
    log.warning(
        "registration.failed",
        extra=_fields(
            worker_id, worker_type, attempts=0, reason="invalid", code=error.code.name, error=str(error)
        ),
    )


def succeeded(operation: str, worker_id: str, worker_type: WorkerType | None, attempt: int) -> None:
    if log.isEnabledFor(logging.INFO):  # every registration passes here: nothing built unless it is logged
        log.info(f"{_TOPICS[operation]}.succeeded", extra=_fields(worker_id, worker_type, attempts=attempt))


def batch_span(workers: int) -> contextlib.AbstractContextManager[Span]:
    return tracing.grouping_span("register_workers_batch", {tracing.WORKERS: workers})


def batch_attempt_span(workers: int, attempt: int) -> contextlib.AbstractContextManager[Span]:
    return tracing.span("register_workers.attempt", {tracing.WORKERS: workers, tracing.ATTEMPT: attempt})


def call_failed(span: Span, error: SchedulerError) -> None:
    """A batch call failed as a whole (each of its workers has the call's error)."""
    tracing.mark_failed(span, error, code=error.code.name)


def batch_retrying(workers: int, attempt: int, codes: Mapping[ErrorCode, int], backoff: float) -> None:
    """``workers`` of one call failed transiently (``codes``: how many by code); sent again after ``backoff``
    (an event on the batch's span)."""
    by_code = {code.name: count for code, count in codes.items()}
    trace.get_current_span().add_event(
        "retry", {tracing.BACKOFF_S: backoff, tracing.WORKERS: workers, tracing.ATTEMPT: attempt}
    )
    log.warning(
        "registration.batch_retrying",
        extra={"workers": workers, "attempt": attempt, "codes": by_code, "backoff_s": round(backoff, 6)},
    )


def batch_finished(span: Span, workers: int, failed_ids: list[str]) -> None:
    """One line per batch: how many were registered, and which were not (the first 20 ids)."""
    span.set_attribute(FAILED_WORKERS, len(failed_ids))
    fields: dict[str, Any] = {"workers": workers, "registered": workers - len(failed_ids)}
    if failed_ids:
        fields |= {"failed": len(failed_ids), "failed_worker_ids": failed_ids[:20]}
    log.log(logging.WARNING if failed_ids else logging.INFO, "registration.batch_finished", extra=fields)
