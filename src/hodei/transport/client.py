"""SchedulerPortClient: the :class:`~hodei.ports.SchedulerPort` over grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from hodei.domain import DynamicWorker, WorkerRecord
from hodei.errors import ErrorCode, RegistrationCancelled, SchedulerError, WorkerNotFound, scheduler_error_for
from hodei.lifecycle import WorkerEvent
from hodei.ports import DrainOutcome, RegistrationReceipt, UnregistrationStatus, WorkerFilter, WorkerPage
from hodei.transport import codec
from hodei.transport.codec import pb
from hodei.transport.status import error_from_rpc

__all__ = ["SchedulerPortClient"]

R = TypeVar("R")


class SchedulerPortClient:
    """Talks to a scheduler: ``SchedulerPortClient("127.0.0.1:50051")`` or ``SchedulerPortClient(channel)``.

    A client made from an address owns its channel and closes it in :meth:`close` (or at the end of
    ``async with``); a channel passed in belongs to the caller. Every failed call raises the
    :class:`~hodei.errors.SchedulerError` kind of its status code.
    """

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        *,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if isinstance(target, str):
            self._channel = grpc.aio.insecure_channel(target, options=list(options))
            self._owns_channel = True
            self.target = target
        else:
            self._channel = target
            self._owns_channel = False
            self.target = ""
        self._stub = codec.pb_grpc.SchedulerServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._closed = False

    async def __aenter__(self) -> SchedulerPortClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel if this client owns it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_channel:
            await self._channel.close()

    async def _call(
        self,
        method: Callable[..., Awaitable[R]],
        request: object,
        timeout: float | None,
        worker_id: str | None,
    ) -> R:
        if self._closed:
            raise RegistrationCancelled("the SchedulerPortClient is closed", worker_id=worker_id)
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, worker_id=worker_id) from error

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        request = codec.worker_to_request(worker)  # raises InvalidWorkerData if the wire cannot hold it
        response = await self._call(self._stub.RegisterWorker, request, timeout, worker.worker_id)
        return codec.receipt_from_proto(response)

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        # Each worker's outcome in its place: a worker that cannot even be encoded is refused alone.
        encoded = codec.workers_to_requests(workers)
        outcomes: list[RegistrationReceipt | SchedulerError | None] = [
            e if isinstance(e, SchedulerError) else None for e in encoded
        ]
        sendable = [(i, e) for i, e in enumerate(encoded) if not isinstance(e, SchedulerError)]
        if sendable:
            request = pb.RegisterWorkersRequest(workers=[e for _, e in sendable])
            response = await self._call(self._stub.RegisterWorkers, request, timeout, None)
            if len(response.results) != len(sendable):
                raise scheduler_error_for(
                    ErrorCode.INTERNAL,
                    f"the scheduler answered {len(response.results)} results for {len(sendable)} workers",
                )
            for (index, _), result in zip(sendable, response.results, strict=True):
                outcomes[index] = codec.result_from_proto(result, workers[index])
        return [outcome for outcome in outcomes if outcome is not None]

    async def unregister_worker(
        self, worker_id: str, *, timeout: float | None = None
    ) -> UnregistrationStatus:
        request = pb.UnregisterWorkerRequest(worker_id=worker_id)
        response = await self._call(self._stub.UnregisterWorker, request, timeout, worker_id)
        return codec.unregistration_from_proto(response.status)

    async def get_worker(self, worker_id: str, *, timeout: float | None = None) -> WorkerRecord | None:
        """The worker as registered, or ``None`` if the scheduler does not know it."""
        try:
            response = await self._call(
                self._stub.GetWorker, pb.GetWorkerRequest(worker_id=worker_id), timeout, worker_id
            )
        except WorkerNotFound:
            return None
        return codec.record_from_proto(response.worker)

    async def list_workers(
        self,
        worker_filter: WorkerFilter | None = None,
        *,
        page_size: int = 100,
        page_token: str = "",
        timeout: float | None = None,
    ) -> WorkerPage:
        request = codec.filter_to_proto(
            worker_filter or WorkerFilter(), page_size=page_size, page_token=page_token
        )
        response = await self._call(self._stub.ListWorkers, request, timeout, None)
        return WorkerPage([codec.record_from_proto(w) for w in response.workers], response.next_page_token)

    async def drain_worker(
        self, worker_id: str, *, deadline: float = 0.0, reason: str = "", timeout: float | None = None
    ) -> DrainOutcome:
        """Mark the worker DRAINING and tell its agent; raises WorkerNotFound for an unknown worker."""
        request = pb.DrainWorkerRequest(
            worker_id=worker_id, deadline_ms=round(deadline * 1000), reason=reason
        )
        response = await self._call(self._stub.DrainWorker, request, timeout, worker_id)
        return DrainOutcome(codec.record_from_proto(response.worker), response.delivered)

    async def shutdown_worker(
        self, worker_id: str, *, reason: str = "", timeout: float | None = None
    ) -> bool:
        """Tell the worker's agent to drain, unregister and exit; False if no agent is connected."""
        request = pb.ShutdownWorkerRequest(worker_id=worker_id, reason=reason)
        response = await self._call(self._stub.ShutdownWorker, request, timeout, worker_id)
        return bool(response.delivered)

    async def watch_workers(self, *, include_snapshot: bool = False) -> AsyncIterator[WorkerEvent]:
        """Lifecycle events as they happen (after one SNAPSHOT event per worker, if asked), until closed."""
        if self._closed:
            raise RegistrationCancelled("the SchedulerPortClient is closed")
        call = self._stub.WatchWorkers(pb.WatchWorkersRequest(include_snapshot=include_snapshot))
        try:
            async for response in call:
                event = codec.event_from_proto(response.event)
                if event is not None:
                    yield event
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()
