"""The gRPC face of the scheduler. It only translates: proto in, a Scheduler call, proto out, errors to codes.

With auth on, each method first asks :class:`~hodei.security.CallAuthorizer` whether the caller (authenticated
at the door by :class:`~hodei.server._authentication.Authentication`) may do this to this worker. The calls on
workers are here; those on resource pools (acquire, renew, release, demand, pools, scale events) in its base,
:class:`~hodei.server._pool_calls.PoolCalls`; the agents' Connect stream in :mod:`~hodei.server._agent_stream`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from hodei._quoting import clip
from hodei.domain import (
    MAX_WORKER_ID_LENGTH,
    DynamicWorker,
    WorkerRecord,
    validate_reason,
    validate_worker_id,
)
from hodei.errors import AccessDenied, InvalidWorkerData, SchedulerError, SchedulerTimeout
from hodei.ports import RegistrationReceipt, SpentTokens
from hodei.scheduler._core import Scheduler
from hodei.scheduler._registry import MAX_BATCH_SIZE
from hodei.security._access import AccessPolicy, CallAuthorizer
from hodei.security._refusals import AuthError
from hodei.server._agent_stream import ConnectHandler, Context
from hodei.server._authentication import access_denied, current_caller, log_refusal
from hodei.server._bounds import HelloBound
from hodei.server._checks import check_reason, invalid, not_found, registrable
from hodei.server._pool_calls import PoolCalls
from hodei.transport import _codec as codec
from hodei.transport._codec import pb
from hodei.transport._status import abort_with

__all__ = ["SchedulerServicer"]


log = logging.getLogger(__name__)


def _log_registered(receipt: RegistrationReceipt) -> None:
    """One debug line per registration call: at thousands a second, an info line each would cost the scheduler
    about a sixth of its throughput (the client logs its own ``registration.succeeded`` at info; a batch call is
    one info line; refusals are warnings; every later change of the worker's life is an info line)."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    record = receipt.record
    log.debug(
        "worker.registered" if receipt.created else "worker.updated",
        extra={
            "worker_id": record.worker_id,
            "worker_type": record.worker_type.value,
            "status": record.status.value,
            "incarnation": record.incarnation,
        },
    )


def _log_refused(worker_id: str, error: SchedulerError) -> None:
    log.warning(
        "registration.refused",
        extra={
            "worker_id": clip(worker_id, MAX_WORKER_ID_LENGTH),  # the caller's text, maybe megabytes
            "code": error.code.name,
            "reason": error.message,
        },
    )


def _log_batch(outcomes: Sequence[RegistrationReceipt | SchedulerError]) -> None:
    """One line per batch call, whatever its size: the counts, and the codes of the refused."""
    if not log.isEnabledFor(logging.INFO):
        return
    created = updated = 0
    codes: dict[str, int] = {}
    for outcome in outcomes:
        if isinstance(outcome, RegistrationReceipt):
            if outcome.created:
                created += 1
            else:
                updated += 1
        else:
            codes[outcome.code.name] = codes.get(outcome.code.name, 0) + 1
    # "created" would clash with the LogRecord attribute of that name.
    fields: dict[str, Any] = {"workers": len(outcomes), "added": created, "updated": updated}
    if codes:
        fields |= {"refused": sum(codes.values()), "codes": codes}
    log.log(logging.WARNING if codes else logging.INFO, "workers.registered", extra=fields)


def _call_over(context: Context) -> bool:
    """Whether the caller has given up (cancelled, or past its deadline): a registration the network held until
    then and written now could land after the caller's rollback unregistered the worker, and stay forever."""
    remaining = context.time_remaining()  # None: the caller set no deadline
    return context.cancelled() or (remaining is not None and remaining <= 0)


class SchedulerServicer(PoolCalls):
    """``access``: the rules each call must pass (None: auth off, everything is allowed); ``hellos``: the bound
    on agents' hellos worked on at once (default: :class:`HelloBound`'s)."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        access: AccessPolicy | None = None,
        hellos: HelloBound | None = None,
    ) -> None:
        self._scheduler = scheduler
        # The shapes of the workers registering: RegisterWorker, RegisterWorkers and Connect decode in them.
        self._shapes = codec.Shapes()
        store = scheduler.registry.store
        self._authorizer = (
            None
            if access is None
            else CallAuthorizer(
                access,
                # A store that remembers spent join tokens for every replica and across restarts (SQLite, PostgreSQL).
                spent=store if isinstance(store, SpentTokens) else None,
                vet=scheduler.registry.check,
            )
        )
        self._connections = ConnectHandler(
            scheduler,
            hellos or HelloBound(metrics=scheduler.metrics),
            allow=lambda context, worker: self._allow(context, "Connect", worker=worker),
            shapes=self._shapes,
        )

    async def _allow(
        self,
        context: Context,
        action: str,
        worker_id: str | None = None,
        *,
        worker: WorkerRecord | DynamicWorker | None = None,
    ) -> str:
        """The worker credential to hand back (empty: none) if the caller may do ``action`` to ``worker_id``, or
        register ``worker``; else :class:`AccessDenied` (or the registry's refusal of ``worker``)."""
        if self._authorizer is None:
            return ""
        try:
            grant = await self._authorizer.allow(current_caller(), action, worker_id=worker_id, worker=worker)
        except AuthError as error:
            log_refusal(action, error, context.peer())
            raise access_denied(error) from error
        return grant.credential

    async def _authorize(self, context: Context, action: str, worker_id: str | None = None) -> None:
        """End the call unless the caller may do ``action`` (to ``worker_id``)."""
        try:
            await self._allow(context, action, worker_id)
        except SchedulerError as error:  # refused, or the store of spent tokens could not be used
            await abort_with(context, error)

    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: Context
    ) -> pb.RegisterWorkerResponse:
        record: WorkerRecord | None = None
        try:
            record = codec.record_from_request(
                request, registered_at=self._scheduler.registry.now(), shapes=self._shapes
            )
            credential = await self._allow(context, "RegisterWorker", worker=record)
            if _call_over(context):
                raise SchedulerTimeout(
                    "the call ended before the registration was written", worker_id=record.worker_id
                )
            receipt = await self._scheduler.register_record(record)
        except SchedulerError as error:
            if record is None:  # not even decoded: the registry never saw it, so it is counted here
                self._scheduler.registry.count_invalid(request.metadata.worker_type)
            if not isinstance(error, AccessDenied):  # logged as auth.refused
                _log_refused(request.worker_id, error)
            await abort_with(context, error)
        _log_registered(receipt)
        return codec.registration_answer(receipt, request, credential=credential)

    async def RegisterWorkers(
        self, request: pb.RegisterWorkersRequest, context: Context
    ) -> pb.RegisterWorkersResponse:
        await self._authorize(context, "RegisterWorkers")
        if len(request.workers) > MAX_BATCH_SIZE:
            await abort_with(context, invalid("workers", f"at most {MAX_BATCH_SIZE} workers per call"))
        now = self._scheduler.registry.now()
        outcomes: list[SchedulerError | None] = []
        decoded: list[WorkerRecord] = []
        undecoded: list[str] = []  # worker types of entries refused here (the registry never sees them)
        for entry in request.workers:
            try:
                decoded.append(codec.record_from_request(entry, registered_at=now, shapes=self._shapes))
                outcomes.append(None)
            except SchedulerError as error:
                outcomes.append(error)
                undecoded.append(entry.metadata.worker_type)
        if _call_over(context):
            await abort_with(
                context, SchedulerTimeout("the call ended before the registrations were written")
            )
        try:
            registered = iter(await self._scheduler.register_records(decoded))
        except SchedulerError as error:  # the store could not be reached: nothing of the batch was written
            await abort_with(context, error)
        for worker_type in undecoded:
            self._scheduler.registry.count_invalid(worker_type)
        answers = [outcome or next(registered) for outcome in outcomes]
        _log_batch(answers)
        return codec.registration_results(request.workers, answers)

    async def UnregisterWorker(
        self, request: pb.UnregisterWorkerRequest, context: Context
    ) -> pb.UnregisterWorkerResponse:
        await self._authorize(context, "UnregisterWorker", request.worker_id)
        try:
            check_reason(request.reason)
        except InvalidWorkerData as error:
            await abort_with(context, error)
        if not registrable(request.worker_id):
            return pb.UnregisterWorkerResponse(status=pb.UNREGISTRATION_STATUS_NOT_REGISTERED)
        try:
            status = await self._scheduler.unregister(
                request.worker_id, reason=request.reason, incarnation=codec.unregister_incarnation(request)
            )
        except SchedulerError as error:  # the store could not be used (UNAVAILABLE), or a stale farewell
            await abort_with(context, error)
        return pb.UnregisterWorkerResponse(status=codec.unregistration_to_proto(status))

    async def ReportOrphanRemoved(
        self, request: pb.ReportOrphanRemovedRequest, context: Context
    ) -> pb.ReportOrphanRemovedResponse:
        await self._authorize(context, "ReportOrphanRemoved")
        violations = validate_worker_id(request.worker_id) + validate_reason(request.reason)
        if violations:
            await abort_with(
                context,
                InvalidWorkerData(
                    "; ".join(map(str, violations)), worker_id=request.worker_id, violations=violations
                ),
            )
        self._scheduler.report_orphan_removed(request.worker_id, reason=request.reason)
        log.info("worker.orphan_removed", extra={"worker_id": request.worker_id, "reason": request.reason})
        return pb.ReportOrphanRemovedResponse()

    async def GetWorker(self, request: pb.GetWorkerRequest, context: Context) -> pb.GetWorkerResponse:
        await self._authorize(context, "GetWorker")
        try:
            record = await self._scheduler.get(request.worker_id) if registrable(request.worker_id) else None
        except SchedulerError as error:  # the store could not be used: UNAVAILABLE, never UNKNOWN
            await abort_with(context, error)
        if record is None:
            await abort_with(context, not_found(request.worker_id))
        return pb.GetWorkerResponse(worker=codec.record_to_proto(record))

    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Context) -> pb.ListWorkersResponse:
        await self._authorize(context, "ListWorkers")
        try:
            page = await self._scheduler.list(
                codec.filter_from_proto(request), page_size=request.page_size, page_token=request.page_token
            )
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.ListWorkersResponse(
            workers=[codec.record_to_proto(r) for r in page.workers], next_page_token=page.next_page_token
        )

    async def DrainWorker(self, request: pb.DrainWorkerRequest, context: Context) -> pb.DrainWorkerResponse:
        await self._authorize(context, "DrainWorker")
        try:
            check_reason(request.reason)
            if not registrable(request.worker_id):
                raise not_found(request.worker_id)
            outcome = await self._scheduler.drain(
                request.worker_id,
                deadline=request.deadline_ms / 1000,
                reason=request.reason,
                only_if_available=request.only_if_available,
            )
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.DrainWorkerResponse(
            worker=codec.record_to_proto(outcome.record), delivered=outcome.delivered
        )

    async def ShutdownWorker(
        self, request: pb.ShutdownWorkerRequest, context: Context
    ) -> pb.ShutdownWorkerResponse:
        await self._authorize(context, "ShutdownWorker")
        try:
            check_reason(request.reason)
            if not registrable(request.worker_id):
                raise not_found(request.worker_id)
            delivered = await self._scheduler.shutdown(request.worker_id, reason=request.reason)
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.ShutdownWorkerResponse(delivered=delivered)

    async def WatchWorkers(
        self, request: pb.WatchWorkersRequest, context: Context
    ) -> AsyncIterator[pb.WatchWorkersResponse]:
        await self._authorize(context, "WatchWorkers")
        # Counted before any is read: a message's worth of kinds is millions.
        if len(request.kinds) > MAX_WATCHED_KINDS:
            await abort_with(context, invalid("kinds", f"at most {MAX_WATCHED_KINDS} kinds"))
        # Kinds asked for, of which this scheduler knows none: a watch that hears nothing, not everything.
        kinds = codec.event_kinds_from_proto(request.kinds) if request.kinds else None
        watcher = self._scheduler.events.watch(kinds)
        try:
            if request.include_snapshot:
                for record in await self._scheduler.registry.all_records():
                    event = self._scheduler.events.snapshot_event(self._scheduler.view(record))
                    yield pb.WatchWorkersResponse(event=codec.event_to_proto(event))
            async for event in watcher:
                yield pb.WatchWorkersResponse(event=codec.event_to_proto(event))
        except SchedulerError as error:
            await abort_with(context, error)
        finally:
            watcher.close()

    async def Connect(self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Context) -> None:
        await self._connections.serve(context)


MAX_WATCHED_KINDS = 64
"""The most event kinds one WatchWorkers may name (there are fewer than 20; room for a newer client's)."""
