"""The rich status both ways, without a network: the trailer the server sends with an error (code, message,
field violations, retry advice) and the client's reading of it back into the same kind of error, checked field by
field; and abort_with, which ends a call with them."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from hodei.domain import FieldViolation
from hodei.errors import ErrorCode, InvalidWorkerData, SchedulerOverloaded, scheduler_error_for
from hodei.transport._status import STATUS_DETAILS_KEY, abort_with, error_from_rpc, status_trailer

VIOLATIONS = (
    FieldViolation("worker_id", "must not be empty"),
    FieldViolation("capabilities.cpu_cores", "must be between 1 and 4096, got 0"),
)


def rpc_error(
    code: grpc.StatusCode, details: str | None, trailer: tuple[tuple[str, Any], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailer), details=details)


def decoded(trailer: tuple[tuple[str, bytes], ...]) -> status_pb2.Status:
    ((key, value),) = trailer
    assert key == STATUS_DETAILS_KEY
    return status_pb2.Status.FromString(value)


def test_the_trailer_of_invalid_data_carries_code_message_and_every_violation_in_a_bad_request() -> None:
    error = InvalidWorkerData("2 invalid fields", violations=VIOLATIONS)

    status = decoded(status_trailer(error))

    assert (status.code, status.message) == (ErrorCode.INVALID_ARGUMENT, "2 invalid fields")
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("worker_id", "must not be empty"),
        ("capabilities.cpu_cores", "must be between 1 and 4096, got 0"),
    ]


def test_the_trailer_of_an_overloaded_scheduler_carries_its_retry_advice_in_milliseconds() -> None:
    status = decoded(status_trailer(SchedulerOverloaded("busy", retry_after=1.25)))

    assert (status.code, status.message) == (ErrorCode.RESOURCE_EXHAUSTED, "busy")
    (detail,) = status.details
    retry = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 1250


def test_an_error_without_details_has_no_trailer() -> None:
    assert status_trailer(scheduler_error_for(ErrorCode.NOT_FOUND, "no such worker")) == ()


def test_violations_and_retry_advice_survive_the_round_trip_to_the_same_kind() -> None:
    sent = InvalidWorkerData("invalid", violations=VIOLATIONS, retry_after=0.5)

    received = error_from_rpc(
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "invalid", status_trailer(sent)), worker_id="w-1"
    )

    assert type(received) is InvalidWorkerData
    assert (received.code, received.message, received.worker_id) == (
        ErrorCode.INVALID_ARGUMENT,
        "invalid",
        "w-1",
    )
    assert received.violations == VIOLATIONS
    assert received.retry_after == 0.5


def test_details_after_other_and_unreadable_metadata_are_still_read() -> None:
    sent = InvalidWorkerData("invalid", violations=VIOLATIONS[:1])
    ((key, value),) = status_trailer(sent)
    trailer = (
        ("x-other-bin", value),  # another key, even with status bytes: not the details
        (STATUS_DETAILS_KEY, b"\xff\xff not a status"),  # unreadable: skipped, not fatal
        (key, value),
    )

    received = error_from_rpc(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "invalid", trailer))

    assert received.violations == VIOLATIONS[:1]


def test_violations_of_several_bad_request_details_are_all_kept_in_order() -> None:
    details = []
    for violation in VIOLATIONS:
        packed = any_pb2.Any()
        packed.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=violation.field, description=violation.description
                    )
                ]
            )
        )
        details.append(packed)
    status = status_pb2.Status(code=3, message="invalid", details=details)
    trailer = ((STATUS_DETAILS_KEY, status.SerializeToString()),)

    received = error_from_rpc(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "invalid", trailer))

    assert received.violations == VIOLATIONS


def test_an_error_without_a_message_is_named_by_its_code() -> None:
    received = error_from_rpc(rpc_error(grpc.StatusCode.UNAVAILABLE, None))

    assert (received.code, received.message) == (ErrorCode.UNAVAILABLE, "UNAVAILABLE")


class RecordingContext:
    def __init__(self, *, raises: bool) -> None:
        self.raises = raises
        self.aborted: tuple[Any, ...] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, *, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details, trailing_metadata)
        if self.raises:
            raise grpc.RpcError()


async def test_abort_with_ends_the_call_with_the_code_message_and_details() -> None:
    error = InvalidWorkerData("invalid", violations=VIOLATIONS)
    context = RecordingContext(raises=True)

    with pytest.raises(grpc.RpcError):
        await abort_with(context, error)

    assert context.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "invalid", status_trailer(error))


async def test_abort_with_refuses_to_return_if_the_context_does_not_abort() -> None:
    context = RecordingContext(raises=False)

    with pytest.raises(AssertionError, match=r"^context\.abort returned$"):
        await abort_with(context, scheduler_error_for(ErrorCode.INTERNAL, "bug"))
