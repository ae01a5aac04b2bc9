"""SchedulerPortClient: the :class:`~hodei.ports.SchedulerPort` over grpc.aio."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from hodei.domain import DynamicWorker, WorkerRecord
from hodei.errors import ErrorCode, SchedulerError, WorkerNotFound, scheduler_error_for
from hodei.ports import RegistrationReceipt, UnregistrationStatus, WorkerFilter, WorkerPage
from hodei.transport import codec
from hodei.transport.codec import pb
from hodei.transport.status import error_from_rpc

__all__ = ["SchedulerPortClient"]


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

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        try:
            response = await self._stub.RegisterWorker(codec.worker_to_request(worker), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, worker_id=worker.worker_id) from error
        return codec.receipt_from_proto(response)

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        request = pb.RegisterWorkersRequest(workers=[codec.worker_to_request(w) for w in workers])
        try:
            response = await self._stub.RegisterWorkers(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from error
        if len(response.results) != len(workers):
            raise scheduler_error_for(
                ErrorCode.INTERNAL,
                f"the scheduler answered {len(response.results)} results for {len(workers)} workers",
            )
        return [codec.result_from_proto(result) for result in response.results]

    async def unregister_worker(
        self, worker_id: str, *, timeout: float | None = None
    ) -> UnregistrationStatus:
        try:
            response = await self._stub.UnregisterWorker(
                pb.UnregisterWorkerRequest(worker_id=worker_id), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, worker_id=worker_id) from error
        return codec.unregistration_from_proto(response.status)

    async def get_worker(self, worker_id: str, *, timeout: float | None = None) -> WorkerRecord | None:
        """The worker as registered, or ``None`` if the scheduler does not know it."""
        try:
            response = await self._stub.GetWorker(pb.GetWorkerRequest(worker_id=worker_id), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            mapped = error_from_rpc(error, worker_id=worker_id)
            if isinstance(mapped, WorkerNotFound):
                return None
            raise mapped from error
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
        try:
            response = await self._stub.ListWorkers(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from error
        return WorkerPage([codec.record_from_proto(w) for w in response.workers], response.next_page_token)
