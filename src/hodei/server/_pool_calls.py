"""The resource-pool RPCs: a job acquires a worker, renews and releases its assignment; the demand, the pools and
the autoscaler's scale events. Like the rest of the face, they only translate: proto in, a Scheduler call, proto
out, errors to codes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from hodei.domain import FieldViolation
from hodei.errors import InvalidWorkerData, SchedulerError
from hodei.observability import _tracing as tracing
from hodei.pools import PoolFileError
from hodei.scheduler._core import Scheduler
from hodei.server._agent_stream import Context
from hodei.server._checks import check_reason, invalid
from hodei.transport import _codec as codec
from hodei.transport._codec import pb, pb_grpc
from hodei.transport._status import abort_with

__all__ = ["MAX_POOLS_TEXT", "PoolCalls"]

MAX_POOLS_TEXT = 1024 * 1024
"""The largest pools file ApplyPools takes, in bytes."""


class PoolCalls(pb_grpc.SchedulerServiceServicer):
    """A base of :class:`~hodei.server._servicer.SchedulerServicer`, which gives these calls its scheduler and
    its ``_authorize`` (end the call unless the caller may do this action), asked first by each of them."""

    _scheduler: Scheduler
    _authorize: Callable[[Context, str], Awaitable[None]]

    async def AcquireWorker(
        self, request: pb.AcquireWorkerRequest, context: Context
    ) -> pb.AcquireWorkerResponse:
        await self._authorize(context, "AcquireWorker")
        try:
            acquired = await self._scheduler.acquire(
                request.job_id,
                codec.requirements_from_proto(request.requirements),
                job=codec.job_from_proto(request.job) if request.HasField("job") else None,
                priority=request.priority,
                wait=request.wait_ms / 1000,
                lease_ttl=request.lease_ttl_ms / 1000,
                trace_context=tracing.trace_context(),
            )
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.AcquireWorkerResponse(
            assignment=codec.assignment_to_proto(acquired.assignment),
            worker=codec.record_to_proto(acquired.record),
            created=acquired.created,
        )

    async def RenewAssignment(
        self, request: pb.RenewAssignmentRequest, context: Context
    ) -> pb.RenewAssignmentResponse:
        await self._authorize(context, "RenewAssignment")
        try:
            view = await self._scheduler.renew(request.assignment_id, wait=request.wait_ms / 1000)
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.RenewAssignmentResponse(assignment=codec.assignment_to_proto(view.assignment, view.result))

    async def ReleaseWorker(
        self, request: pb.ReleaseWorkerRequest, context: Context
    ) -> pb.ReleaseWorkerResponse:
        await self._authorize(context, "ReleaseWorker")
        try:
            check_reason(request.reason)
            view = await self._scheduler.release(
                request.assignment_id,
                outcome=codec.outcome_from_proto(request.outcome),
                recycle=request.recycle,
                reason=request.reason,
            )
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.ReleaseWorkerResponse(
            assignment=codec.assignment_to_proto(view.assignment, view.result),
            worker=codec.record_to_proto(self._scheduler.view(view.record))
            if view.record is not None
            else None,
        )

    async def GetDemand(self, request: pb.GetDemandRequest, context: Context) -> pb.GetDemandResponse:
        await self._authorize(context, "GetDemand")
        return pb.GetDemandResponse(demand=[codec.demand_to_proto(d) for d in self._scheduler.demand()])

    async def ApplyPools(self, request: pb.ApplyPoolsRequest, context: Context) -> pb.ApplyPoolsResponse:
        await self._authorize(context, "ApplyPools")
        try:
            check_reason(request.source, "source")
            if len(request.text.encode()) > MAX_POOLS_TEXT:
                raise invalid("text", f"must be at most {MAX_POOLS_TEXT} bytes")
            pools = await self._scheduler.apply_pools(request.source or "<pools>", request.text)
        except PoolFileError as error:
            violations = [
                FieldViolation(f"{error.path}:{line}: {field}", text) for line, field, text in error.problems
            ]
            await abort_with(context, InvalidWorkerData(str(error), violations=violations))
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.ApplyPoolsResponse(pools=[codec.pool_to_proto(p) for p in pools])

    async def ListPools(self, request: pb.ListPoolsRequest, context: Context) -> pb.ListPoolsResponse:
        await self._authorize(context, "ListPools")
        try:
            pools = await self._scheduler.list_pools()
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.ListPoolsResponse(pools=[codec.pool_to_proto(p) for p in pools])

    async def ReportScaleEvent(
        self, request: pb.ReportScaleEventRequest, context: Context
    ) -> pb.ReportScaleEventResponse:
        await self._authorize(context, "ReportScaleEvent")
        try:
            self._scheduler.report_scale(codec.scale_event_from_proto(request.event))
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.ReportScaleEventResponse()
