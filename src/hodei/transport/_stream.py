"""ConnectStream: an agent's side of the Connect stream, in domain terms."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from hodei.domain import DynamicWorker, JobResult, ResourceUsage, WorkerRecord, WorkerStatus
from hodei.errors import ErrorCode, SchedulerError, scheduler_error_for
from hodei.lifecycle import WorkerCommand
from hodei.transport import _codec as codec
from hodei.transport._codec import pb
from hodei.transport._status import error_from_rpc

__all__ = ["ConnectAck", "ConnectStream", "is_transient_for_stream"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ConnectAck:
    """The scheduler's answer to the hello; ``credential`` is a worker credential to keep (empty: none new)."""

    record: WorkerRecord
    created: bool
    heartbeat_interval: float
    lease_ttl: float
    credential: str = field(default="", repr=False)


_GRPC_OVERWRITE = "Internal error from Core"  # grpc.aio's set_internal_error (grpc/grpc#36066)

# The one method a stream calls. Not the generated stub, which prepares a call handle for every method of the
# service each time it is made: a fifth of a swarm's CPU when 10,000 agents came back after a restart.
_CONNECT = f"/{codec.SERVICE_NAME}/Connect"


class ConnectStream:
    """One Connect call on ``channel``, sending ``metadata`` (the agent's credential) with it. Every failure is
    raised as a :class:`SchedulerError` kind."""

    def __init__(self, channel: grpc.aio.Channel, *, metadata: Sequence[tuple[str, str]] = ()) -> None:
        connect = channel.stream_stream(
            _CONNECT,
            request_serializer=pb.ConnectRequest.SerializeToString,
            response_deserializer=pb.ConnectResponse.FromString,
        )
        self._call: Any = connect(metadata=tuple(metadata) or None)
        self._ended: grpc.aio.AioRpcError | None = None
        self._call.add_done_callback(self._keep_status)
        # gRPC allows one write in flight per call; heartbeats and status reports come from different tasks.
        self._writing = asyncio.Lock()

    def _keep_status(self, call: grpc.aio.Call) -> None:
        """Keep the status the call ended with, as it arrived: a write that fails because the scheduler has
        just ended the call (a refusal) overwrites it with INTERNAL "Internal error from Core" in grpc.aio
        (grpc/grpc#36066), and the agent must still hear why it was refused."""
        code = _now(call.code())
        details = _now(call.details())
        if code is not None and code is not grpc.StatusCode.OK and details != _GRPC_OVERWRITE:
            self._ended = grpc.aio.AioRpcError(
                code, trailing_metadata=_now(call.trailing_metadata()), details=details
            )

    def _failure(self, error: grpc.aio.AioRpcError) -> SchedulerError:
        """The error for a failed call: with the status it ended with, not what grpc.aio made of it since."""
        return error_from_rpc(self._ended or error)

    async def _write(self, request: pb.ConnectRequest) -> None:
        try:
            async with self._writing:
                await self._call.write(request)
        except grpc.aio.AioRpcError as error:
            raise self._failure(error) from error
        except asyncio.InvalidStateError as error:
            raise scheduler_error_for(ErrorCode.CANCELLED, "the stream has already ended") from error

    async def _read(self) -> pb.ConnectResponse | None:
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as error:
            raise self._failure(error) from error
        return None if response is grpc.aio.EOF else response

    async def open(
        self,
        worker: DynamicWorker,
        running_jobs: Sequence[str] = (),
        *,
        timeout: float,
        accept_timeout: float | None = None,
    ) -> ConnectAck:
        """Say hello; wait at most ``accept_timeout`` s (default: ``timeout``), connecting included, for the
        scheduler to accept it (the stream's headers), then at most ``timeout`` s for the acknowledgement.

        A scheduler busy with other hellos accepts this one when it gets to it, or refuses it at once
        (``RESOURCE_EXHAUSTED`` with a delay to come back after): a hello it has not yet accepted is not given
        up after ``timeout``, which would only send one more connection to a scheduler that is behind."""
        hello = pb.ConnectRequest(hello=codec.hello_from_worker(worker, running_jobs))

        async def accepted() -> None:
            try:
                await self._write(hello)  # waits for the connection: a network that answers nothing holds it
            except SchedulerError:
                await self._read()  # a call that already ended says why (a refusal), not the failed write
                raise
            await self._call.initial_metadata()

        def expired(what: str, seconds: float) -> SchedulerError:
            self.cancel()
            return scheduler_error_for(
                ErrorCode.DEADLINE_EXCEEDED, f"{what} within {seconds:g} s", worker_id=worker.worker_id
            )

        # asyncio.timeout, not wait_for: a failure raised through wait_for's task is held in a reference cycle
        # (the task, its exception, the traceback, wait_for's frame) with this stream, its call and so its
        # connection, which then stays open until the garbage collector runs; a refused agent must let go of
        # its connection at once.
        waited = timeout if accept_timeout is None else accept_timeout
        try:
            async with asyncio.timeout(waited):
                await accepted()
        except TimeoutError:
            raise expired("the scheduler did not accept the hello", waited) from None
        try:
            async with asyncio.timeout(timeout):
                response = await self._read()
        except TimeoutError:
            raise expired("no acknowledgement", timeout) from None
        if response is None or response.WhichOneof("message") != "ack":
            raise scheduler_error_for(
                ErrorCode.INTERNAL, "the scheduler did not acknowledge the hello", worker_id=worker.worker_id
            )
        ack = response.ack
        return ConnectAck(
            codec.record_from_proto(ack.worker),
            ack.created,
            ack.heartbeat_interval_ms / 1000,
            ack.lease_ttl_ms / 1000,
            ack.credential,
        )

    async def heartbeat(self, sequence: int, usage: ResourceUsage) -> None:
        await self._write(
            pb.ConnectRequest(heartbeat=pb.Heartbeat(sequence=sequence, usage=codec.usage_to_proto(usage)))
        )

    async def report(self, status: WorkerStatus, *, drained: bool = False, reason: str = "") -> None:
        change = pb.StatusChange(status=codec.status_to_proto(status), drained=drained, reason=reason)
        await self._write(pb.ConnectRequest(status_change=change))

    async def job_finished(self, assignment_id: str, result: JobResult) -> None:
        """Report how the job of assignment ``assignment_id`` (from a RUN_JOB command) ended."""
        finished = pb.JobFinished(assignment_id=assignment_id, result=codec.job_result_to_proto(result))
        await self._write(pb.ConnectRequest(job_finished=finished))

    async def commands(self) -> AsyncIterator[WorkerCommand]:
        """The scheduler's commands, until it ends the stream."""
        while (response := await self._read()) is not None:
            if response.WhichOneof("message") == "command":
                command = codec.command_from_proto(response.command)
                if command is not None:
                    yield command

    async def close(self) -> None:
        """Half-close: tell the scheduler this side is done."""
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await self._call.done_writing()

    def cancel(self) -> None:
        self._call.cancel()


def _now(coroutine: Coroutine[Any, Any, _T]) -> _T | None:
    """The value of a coroutine that needs no waiting (a finished call's status), or None if it would wait."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    coroutine.close()
    return None


def is_transient_for_stream(error: SchedulerError) -> bool:
    """A stream can also break with CANCELLED, UNKNOWN or INTERNAL when its server goes away."""
    return error.retryable or error.code in (ErrorCode.CANCELLED, ErrorCode.UNKNOWN, ErrorCode.INTERNAL)
