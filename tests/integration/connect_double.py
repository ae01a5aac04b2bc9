"""ConnectDouble: a real grpc.aio server on loopback playing the scheduler's side of Connect, for agent tests.

It acknowledges every hello, records what each stream's agent sends (heartbeats, status changes, finished jobs),
and sends the commands a test gives it; a test may cut a stream (UNAVAILABLE) to make the agent reconnect, and
refuse hellos for a while.
Every other RPC answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from hodei.domain import JobResult, ResourceUsage, WorkerStatus
from hodei.lifecycle import WorkerCommand
from hodei.transport import _codec as codec
from hodei.transport._codec import pb, pb_grpc
from tests.helpers import wait_until


class AgentCall:
    """One Connect call, as the double saw it."""

    def __init__(self, hello: pb.WorkerHello) -> None:
        self.hello = hello
        self.worker_id = hello.worker_id
        self.running_jobs = list(hello.running_jobs)
        self.received: list[pb.ConnectRequest] = []
        self.ended = False
        self._outbox: asyncio.Queue[pb.ConnectResponse | None] = asyncio.Queue()
        self._cut = False

    def send(self, command: WorkerCommand) -> None:
        self._outbox.put_nowait(pb.ConnectResponse(command=codec.command_to_proto(command)))

    def cut(self) -> None:
        """End the call with UNAVAILABLE, as a scheduler that goes away does."""
        self._cut = True
        self._outbox.put_nowait(None)

    @property
    def finished(self) -> list[tuple[str, JobResult]]:
        return [
            (m.job_finished.assignment_id, codec.job_result_from_proto(m.job_finished.result))
            for m in self.received
            if m.WhichOneof("message") == "job_finished"
        ]

    @property
    def heartbeats(self) -> list[ResourceUsage]:
        return [
            codec.usage_from_proto(m.heartbeat.usage)
            for m in self.received
            if m.WhichOneof("message") == "heartbeat"
        ]

    @property
    def reports(self) -> list[tuple[WorkerStatus, bool]]:
        """The status changes the agent reported: (status, drained)."""
        return [
            (codec.status_from_proto(m.status_change.status), m.status_change.drained)
            for m in self.received
            if m.WhichOneof("message") == "status_change"
        ]

    def kinds(self) -> list[str]:
        """What the agent sent, in order, heartbeats left out: ``job_finished:ID``, ``draining``, ``drained``."""
        shown: list[str] = []
        for m in self.received:
            which = m.WhichOneof("message")
            if which == "job_finished":
                shown.append(f"job_finished:{m.job_finished.assignment_id}")
            elif which == "status_change":
                shown.append("drained" if m.status_change.drained else "draining")
        return shown

    async def result(self, assignment_id: str, timeout: float = 15.0) -> JobResult:
        """The result of ``assignment_id`` sent on this call (waiting at most ``timeout`` s for it)."""
        await wait_until(lambda: any(a == assignment_id for a, _ in self.finished), timeout=timeout)
        return next(r for a, r in self.finished if a == assignment_id)


class ConnectDouble(pb_grpc.SchedulerServiceServicer):  # type: ignore[misc]
    """``async with ConnectDouble() as double:`` — agents dial ``double.target``; ``await double.call(worker_id)``
    is the n-th Connect call of a worker."""

    def __init__(self, *, heartbeat_interval: float = 0.05) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.refusing = False  # while set, every hello is answered UNAVAILABLE (a scheduler that is down)
        self.refused = 0
        self.calls: list[AgentCall] = []
        self._server = grpc.aio.server()
        pb_grpc.add_SchedulerServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectDouble:
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for call in self.calls:
            call.cut()
        await self._server.stop(0.5)

    async def call(self, worker_id: str, index: int = 0, timeout: float = 15.0) -> AgentCall:
        """The ``index``-th Connect call of ``worker_id`` (0: its first), once its hello was acknowledged."""

        def of_worker() -> list[AgentCall]:
            return [c for c in self.calls if c.worker_id == worker_id]

        await wait_until(lambda: len(of_worker()) > index, timeout=timeout)
        return of_worker()[index]

    async def go_down(self, call: AgentCall) -> None:
        """Cut ``call`` and refuse every hello from now on (set ``refusing`` back to come up), returning once
        its agent has been refused twice: it is between sessions, retrying."""
        self.refusing = True
        refused = self.refused
        call.cut()
        await wait_until(lambda: self.refused >= refused + 2)

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.refusing:
            self.refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "refused by the test")
        first = await context.read()
        assert first is not grpc.aio.EOF and first.WhichOneof("message") == "hello"
        hello = first.hello
        worker = pb.Worker(
            worker_id=hello.worker_id, status=pb.WORKER_STATUS_AVAILABLE, incarnation=hello.incarnation
        )
        ack = pb.ConnectAck(
            worker=worker,
            created=True,
            heartbeat_interval_ms=round(self.heartbeat_interval * 1000),
            lease_ttl_ms=15_000,
        )
        await context.write(pb.ConnectResponse(ack=ack))
        call = AgentCall(hello)
        self.calls.append(call)
        reader = asyncio.create_task(self._read(call, context))
        try:
            while (response := await call._outbox.get()) is not None:
                await context.write(response)
            if call._cut:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "cut by the test")
        finally:
            call.ended = True
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    @staticmethod
    async def _read(call: AgentCall, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                call.received.append(message)
        finally:
            call._outbox.put_nowait(None)  # the agent closed its side, or the call ended: end it here too
