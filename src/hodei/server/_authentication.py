"""Authentication at the door: every SchedulerService call presents a valid token, or is refused unread.

:class:`Authentication` (a server interceptor) reads the ``authorization`` metadata of each call as it arrives.
A call with no valid token is answered ``UNAUTHENTICATED`` before its request is even read (an unauthenticated
client cannot make the scheduler take in megabytes); any other call runs with its caller's claims at hand
(:func:`current_caller`), and the servicer decides what that caller may do (:meth:`AccessPolicy.authorize`).
The health and reflection services stay open: load balancers and tools probe them without credentials.

Refusals are logged as ``auth.refused`` with the method, code, reason and peer, never the token.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from hodei._quoting import clip
from hodei.domain import MAX_WORKER_ID_LENGTH
from hodei.errors import AccessDenied
from hodei.security._access import AccessPolicy, bearer_token
from hodei.security._claims import Claims
from hodei.security._refusals import AuthError
from hodei.server._interception import scheduler_method
from hodei.transport._status import abort_with

__all__ = ["Authentication", "access_denied", "current_caller", "log_refusal"]

log = logging.getLogger(__name__)

_CALLER: contextvars.ContextVar[Claims | None] = contextvars.ContextVar("hodei_caller", default=None)


def current_caller() -> Claims | None:
    """The claims of the authenticated caller of the call being served (None when nobody authenticated it)."""
    return _CALLER.get()


def access_denied(error: AuthError) -> AccessDenied:
    """The error to answer for a refused credential: its code (UNAUTHENTICATED or PERMISSION_DENIED) and message."""
    return AccessDenied(error.message, code=error.code, worker_id=error.worker_id)


def log_refusal(method: str, error: AuthError, peer: str) -> None:
    log.warning(
        "auth.refused",
        extra={
            "method": method,
            "code": error.code.name,
            "reason": error.reason.value,
            "worker_id": None if error.worker_id is None else clip(error.worker_id, MAX_WORKER_ID_LENGTH),
            "peer": peer,
        },
    )


class Authentication(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every SchedulerService call without a valid token of ``access``."""

    def __init__(self, access: AccessPolicy) -> None:
        self.access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = scheduler_method(details)
        if handler is None or method is None:
            return handler
        try:
            claims = self.access.authenticate(bearer_token(details.invocation_metadata))
        except AuthError as error:
            return _refusal(handler, method, error)
        return _with_caller(handler, claims)


def _refusal(handler: grpc.RpcMethodHandler, method: str, error: AuthError) -> grpc.RpcMethodHandler:
    """A handler that answers ``error`` without reading the request: of request-streaming shape, whatever the
    method's, so that gRPC hands over the call before any message is received."""

    async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        log_refusal(method, error, context.peer())
        await abort_with(context, access_denied(error))

    make = (
        grpc.stream_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.stream_unary_rpc_method_handler
    )
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _with_caller(handler: grpc.RpcMethodHandler, claims: Claims) -> grpc.RpcMethodHandler:
    """``handler`` serving with ``claims`` as :func:`current_caller`."""
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming:
        serve_stream = handler.stream_stream

        async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            _CALLER.set(claims)
            return await serve_stream(requests, context)

        return grpc.stream_stream_rpc_method_handler(stream, **options)
    if handler.response_streaming:
        serve_responses = handler.unary_stream

        async def responses(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            _CALLER.set(claims)
            async for response in serve_responses(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(responses, **options)
    serve = handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        _CALLER.set(claims)
        return await serve(request, context)

    return grpc.unary_unary_rpc_method_handler(unary, **options)
