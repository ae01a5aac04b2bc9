"""The gRPC face of the registry. It only translates: proto in, domain call, proto out, errors to codes."""

from __future__ import annotations

from typing import NoReturn

import grpc

from hodei.domain import DynamicWorker, FieldViolation
from hodei.errors import InvalidWorkerData, SchedulerError, WorkerNotFound
from hodei.scheduler.registry import MAX_BATCH_SIZE, WorkerRegistry
from hodei.transport import codec
from hodei.transport.codec import pb, pb_grpc
from hodei.transport.status import grpc_code, status_trailer

__all__ = ["SchedulerServicer"]


async def _abort(context: grpc.aio.ServicerContext[object, object], error: SchedulerError) -> NoReturn:
    await context.abort(grpc_code(error.code), error.message, trailing_metadata=status_trailer(error))
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    def __init__(self, registry: WorkerRegistry) -> None:
        self._registry = registry

    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RegisterWorkerResponse:
        try:
            receipt = await self._registry.register(codec.worker_from_request(request))
        except SchedulerError as error:
            await _abort(context, error)
        return pb.RegisterWorkerResponse(
            status=pb.REGISTRATION_STATUS_SUCCESS,
            worker=codec.record_to_proto(receipt.record),
            created=receipt.created,
        )

    async def RegisterWorkers(
        self, request: pb.RegisterWorkersRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RegisterWorkersResponse:
        if len(request.workers) > MAX_BATCH_SIZE:
            await _abort(
                context,
                InvalidWorkerData(
                    f"a batch holds at most {MAX_BATCH_SIZE} workers, got {len(request.workers)}",
                    violations=[FieldViolation("workers", f"at most {MAX_BATCH_SIZE} workers per call")],
                ),
            )
        outcomes: list[object] = []
        decoded: list[DynamicWorker] = []
        for entry in request.workers:
            try:
                worker = codec.worker_from_request(entry)
            except SchedulerError as error:
                outcomes.append(error)
            else:
                outcomes.append(None)
                decoded.append(worker)
        registered = iter(await self._registry.register_many(decoded))
        return pb.RegisterWorkersResponse(
            results=[
                codec.registration_result_to_proto(
                    entry.worker_id, outcome if isinstance(outcome, SchedulerError) else next(registered)
                )
                for entry, outcome in zip(request.workers, outcomes, strict=True)
            ]
        )

    async def UnregisterWorker(
        self, request: pb.UnregisterWorkerRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.UnregisterWorkerResponse:
        status = await self._registry.unregister(request.worker_id)
        return pb.UnregisterWorkerResponse(status=codec.unregistration_to_proto(status))

    async def GetWorker(
        self, request: pb.GetWorkerRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.GetWorkerResponse:
        record = await self._registry.get(request.worker_id)
        if record is None:
            await _abort(
                context,
                WorkerNotFound(
                    f"worker {request.worker_id!r} is not registered", worker_id=request.worker_id
                ),
            )
        return pb.GetWorkerResponse(worker=codec.record_to_proto(record))

    async def ListWorkers(
        self, request: pb.ListWorkersRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListWorkersResponse:
        try:
            page = await self._registry.list(
                codec.filter_from_proto(request), page_size=request.page_size, page_token=request.page_token
            )
        except SchedulerError as error:
            await _abort(context, error)
        return pb.ListWorkersResponse(
            workers=[codec.record_to_proto(r) for r in page.workers], next_page_token=page.next_page_token
        )
