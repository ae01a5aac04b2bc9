"""Rich gRPC status: SchedulerError <-> status code + google.rpc details (BadRequest, RetryInfo).

The server side turns a domain error into the code, message and ``grpc-status-details-bin`` trailer once; the
client side turns any ``grpc.aio.AioRpcError`` back into the matching :class:`SchedulerError` kind, keeping
the original code and message.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from hodei._violations import MAX_ERROR_BYTES, fit_violations
from hodei.domain import FieldViolation
from hodei.errors import ErrorCode, SchedulerError, scheduler_error_for

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_STATUS_BYTES",
    "STATUS_DETAILS_KEY",
    "abort_with",
    "error_from_rpc",
    "grpc_code",
    "status_trailer",
    "wire_message",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
MAX_STATUS_BYTES = MAX_ERROR_BYTES
"""The encoded status with its details is always smaller: far below gRPC's 16 KiB limit on trailers (the details
travel base64-encoded, beside the message), whatever a client sent."""
MAX_MESSAGE_BYTES = 1024
"""The longest message sent, in UTF-8 bytes: gRPC percent-encodes each non-ASCII byte into three in the trailers
(with the details, under 8 KiB, base64-encoded: 10.9 KiB), and refuses trailers over 16 KiB."""
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code(code: ErrorCode) -> grpc.StatusCode:
    return _GRPC_CODES[int(code)]


def wire_message(message: str) -> str:
    """``message`` as sent: cut to at most :data:`MAX_MESSAGE_BYTES` of UTF-8."""
    encoded = message.encode()
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    return encoded[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "…"


def status_trailer(error: SchedulerError) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries the error's details, or nothing if it has none. Smaller than
    :data:`MAX_STATUS_BYTES` always: the violations that do not fit are counted, not listed."""
    details: list[any_pb2.Any] = []
    message = wire_message(error.message)
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in fit_violations(error.violations, message=message)
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    if error.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(round(error.retry_after * 1000))
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    if not details:
        return ()
    status = status_pb2.Status(code=int(error.code), message=message, details=details)
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: SchedulerError) -> NoReturn:
    """End the call with the error's code, message and details."""
    await context.abort(
        grpc_code(error.code), wire_message(error.message), trailing_metadata=status_trailer(error)
    )
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def _details(error: grpc.aio.AioRpcError) -> tuple[list[FieldViolation], float | None]:
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    for key, value in error.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            continue  # unreadable details must not hide the code and message
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToMilliseconds() / 1000
    return violations, retry_after


def error_from_rpc(error: grpc.aio.AioRpcError, *, worker_id: str | None = None) -> SchedulerError:
    """The :class:`SchedulerError` kind for a failed call, with code, message and details kept."""
    code = ErrorCode(error.code().value[0])
    violations, retry_after = _details(error)
    return scheduler_error_for(
        code,
        error.details() or code.name,
        worker_id=worker_id,
        violations=violations,
        retry_after=retry_after,
    )
