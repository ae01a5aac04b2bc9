"""The Connect stream: an agent's hello (within the bound on hellos worked on at once), then its heartbeats and
status changes in and the scheduler's commands out, until either side ends it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from hodei.domain import DynamicWorker, bounded_tail
from hodei.errors import SchedulerError, SchedulerTimeout
from hodei.scheduler._core import Scheduler
from hodei.scheduler._sessions import AgentSession
from hodei.server._bounds import HelloBound
from hodei.server._checks import check_reason, invalid
from hodei.transport import _codec as codec
from hodei.transport._codec import pb
from hodei.transport._status import abort_with

__all__ = ["ConnectHandler", "Context"]

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
HELLO_TIMEOUT = 10.0  # seconds an agent has to say who it is
_CONNECT_REQUEST = pb.ConnectRequest.DESCRIPTOR.full_name


class ConnectHandler:
    """``allow`` asks whether the caller may connect as ``worker``: the worker credential to hand back, or the
    refusal raised. Hellos are decoded in ``shapes``, the servicer's."""

    def __init__(
        self,
        scheduler: Scheduler,
        hellos: HelloBound,
        *,
        allow: Callable[[Context, DynamicWorker], Awaitable[str]],
        shapes: codec.Shapes,
    ) -> None:
        self._scheduler = scheduler
        self._shapes = shapes
        self._hellos = hellos
        self._allow = allow

    async def serve(self, context: Context) -> None:
        """Serve one agent's stream: its hello, then its messages in and the scheduler's commands out."""
        first = await self._read_hello(context)
        async with self._hellos.admitted(context):  # or RESOURCE_EXHAUSTED, with a delay to come back after
            session, ack = await self._open_session(context, first)
            try:
                await context.write(pb.ConnectResponse(ack=ack))
            except BaseException:
                self._scheduler.goodbye(session)  # the agent went away before it heard the acknowledgement
                raise
        reader = asyncio.create_task(
            self._read_agent(session, context), name=f"hodei-agent-{session.worker_id}"
        )
        try:
            while (command := await session.commands.get()) is not None:
                await context.write(pb.ConnectResponse(command=codec.command_to_proto(command)))
            if reader.done() and (error := reader.result()) is not None:
                await abort_with(context, error)
        finally:
            self._scheduler.goodbye(session)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_hello(self, context: Context) -> pb.ConnectRequest:
        try:
            first = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
        except TimeoutError:
            await abort_with(context, SchedulerTimeout(f"no hello within {HELLO_TIMEOUT:g} s"))
        except DecodeError:  # grpc.aio would answer UNKNOWN; an unparsable request is the caller's error
            await abort_with(context, invalid("hello", f"is not a valid {_CONNECT_REQUEST}"))
        if first is grpc.aio.EOF or first.WhichOneof("message") != "hello":
            await abort_with(context, invalid("hello", "must be the first message of the stream"))
        if first.hello.incarnation == 0:
            # An agent fences itself with its incarnation; 0 would take over another agent's stream unfenced.
            self._scheduler.registry.count_invalid(first.hello.metadata.worker_type)
            await abort_with(context, invalid("hello.incarnation", "must be greater than 0"))
        hello: pb.ConnectRequest = first
        return hello

    async def _open_session(
        self, context: Context, first: pb.ConnectRequest
    ) -> tuple[AgentSession, pb.ConnectAck]:
        worker: DynamicWorker | None = None
        try:
            worker = codec.worker_from_request(first.hello, self._shapes)
            credential = await self._allow(context, worker)
            receipt, session = await self._scheduler.hello(worker, list(first.hello.running_jobs))
        except SchedulerError as error:
            if worker is None:  # not even decoded: the registry never saw it, so it is counted here
                self._scheduler.registry.count_invalid(first.hello.metadata.worker_type)
            await abort_with(context, error)
        ack = pb.ConnectAck(
            worker=codec.record_to_proto(receipt.record),
            created=receipt.created,
            heartbeat_interval_ms=round(session.heartbeat_interval * 1000),
            lease_ttl_ms=round(session.lease_ttl * 1000),
            credential=credential,
        )
        return session, ack

    async def _read_agent(self, session: AgentSession, context: Context) -> SchedulerError | None:
        """Apply what the agent sends until it closes its side; a bad message ends the stream with its error."""
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                which = message.WhichOneof("message")
                if which == "heartbeat":
                    await self._scheduler.heartbeat(session, codec.usage_from_proto(message.heartbeat.usage))
                elif which == "status_change":
                    change = message.status_change
                    check_reason(change.reason, "status_change.reason")
                    await self._scheduler.report_status(
                        session,
                        codec.status_from_proto(change.status),
                        drained=change.drained,
                        reason=change.reason,
                    )
                elif which == "job_finished":
                    finished = message.job_finished
                    check_reason(finished.result.reason, "job_finished.result.reason")
                    result = codec.job_result_from_proto(finished.result)
                    # The tail is the agent's to bound; any agent's is bounded again (bytes, control characters).
                    result = replace(result, output_tail=bounded_tail(result.output_tail))
                    await self._scheduler.job_finished(session, finished.assignment_id, result)
                else:
                    raise invalid(
                        "message",
                        "after the hello, only heartbeats, status changes and job results are accepted",
                    )
            return None
        except SchedulerError as error:
            return error
        except DecodeError:
            return invalid("message", f"is not a valid {_CONNECT_REQUEST}")
        finally:
            session.close()
