"""The gRPC face of the scheduler. It only translates: proto in, a Scheduler call, proto out, errors to codes.

With auth on, each method first asks :class:`~hodei.security.AccessPolicy` whether the caller (authenticated at
the door by :class:`~hodei.server._authentication.Authentication`) may do this to this worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from hodei._quoting import clip, quote_short
from hodei.domain import (
    MAX_WORKER_ID_LENGTH,
    DynamicWorker,
    FieldViolation,
    WorkerRecord,
    validate_reason,
    validate_worker_id,
)
from hodei.errors import AccessDenied, InvalidWorkerData, SchedulerError, SchedulerTimeout, WorkerNotFound
from hodei.ports import RegistrationReceipt, SpentTokens
from hodei.scheduler._core import AgentSession, Scheduler
from hodei.scheduler._registry import MAX_BATCH_SIZE
from hodei.security._access import AccessPolicy
from hodei.security._claims import JoinClaims, OperatorClaims
from hodei.security._refusals import AuthError, AuthFailure, TokenKind
from hodei.server._admission import HelloAdmission
from hodei.server._authentication import access_denied, current_caller, log_refusal
from hodei.transport import _codec as codec
from hodei.transport._codec import pb, pb_grpc
from hodei.transport._status import abort_with

__all__ = ["SchedulerServicer"]

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
HELLO_TIMEOUT = 10.0  # seconds an agent has to say who it is
_CONNECT_REQUEST = pb.ConnectRequest.DESCRIPTOR.full_name

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


def _invalid(field: str, description: str) -> InvalidWorkerData:
    return InvalidWorkerData(f"{field} {description}", violations=[FieldViolation(field, description)])


def _check_reason(reason: str, field: str = "reason") -> None:
    """Raise InvalidWorkerData for a reason too long or holding control characters (it reaches events, logs
    and terminals)."""
    if violations := validate_reason(reason, field):
        raise InvalidWorkerData(str(violations[0]), violations=violations)


def _not_found(worker_id: str) -> WorkerNotFound:
    return WorkerNotFound(f"worker {quote_short(worker_id)} is not registered", worker_id=worker_id)


def _registrable(worker_id: str) -> bool:
    """Whether a worker of this id could be registered at all (if not, the store need not be asked)."""
    return not validate_worker_id(worker_id)


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    """``access``: the rules each call must pass (None: auth off, everything is allowed); ``hellos``: the bound
    on agents' hellos worked on at once (default: :class:`HelloAdmission`'s)."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        access: AccessPolicy | None = None,
        hellos: HelloAdmission | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._access = access
        self._hellos = hellos or HelloAdmission(metrics=scheduler.metrics)
        store = scheduler.registry.store
        # A store that remembers spent join tokens for every replica and across restarts (SQLite, PostgreSQL).
        self._spent_tokens = store if isinstance(store, SpentTokens) else None

    async def _allow(
        self,
        context: Context,
        action: str,
        worker_id: str | None = None,
        *,
        worker: WorkerRecord | DynamicWorker | None = None,
    ) -> str:
        """Whether the caller may do ``action`` to ``worker_id``, or register ``worker``: the worker credential
        to hand back (empty: none), or :class:`AccessDenied` (or the registry's refusal of ``worker``). Spends
        a join token: in this process's ledger, and in the registry store when it keeps spent tokens (then a
        token spent on another replica, or before a restart, is refused too)."""
        if worker is not None:
            worker_id = worker.worker_id
        if self._access is None:
            return ""
        claims = current_caller()
        if worker is not None and claims is not None and not isinstance(claims, OperatorClaims):
            # What the registry would refuse is refused first: a join token is spent only on a registration
            # that passes.
            self._scheduler.registry.check(worker)
        try:
            if claims is None:  # a call that did not pass the door: refused, never let through
                raise AuthError.refusal(AuthFailure.MISSING, kind=None, action=action)
            grant = self._access.authorize(
                claims,
                action,
                worker_id=worker_id,
                pool=None if worker is None else worker.pool,
                labels=None if worker is None else worker.labels,
                incarnation=0 if worker is None else worker.incarnation,
            )
            if isinstance(claims, JoinClaims) and claims.single_use and worker is not None:
                await self._spend_durably(claims, worker)
        except AuthError as error:
            log_refusal(action, error, context.peer())
            raise access_denied(error) from error
        return grant.credential

    async def _spend_durably(self, claims: JoinClaims, worker: WorkerRecord | DynamicWorker) -> None:
        """Spent for this registration (worker id and incarnation): the same one retried (its answer lost, or
        its commit ambiguous) is let through; another is a replay."""
        if self._spent_tokens is None or self._access is None:
            return
        until = self._access.authority.remember_until(claims)
        if not await self._spent_tokens.spend(claims.token_id, until, worker.worker_id, worker.incarnation):
            raise AuthError.refusal(AuthFailure.REPLAYED, kind=TokenKind.JOIN, worker_id=worker.worker_id)

    async def _admit(self, context: Context, action: str, worker_id: str | None = None) -> None:
        """End the call unless the caller may do ``action`` (to ``worker_id``)."""
        if self._access is None:
            return
        try:
            await self._allow(context, action, worker_id)
        except SchedulerError as error:  # refused, or the store of spent tokens could not be used
            await abort_with(context, error)

    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: Context
    ) -> pb.RegisterWorkerResponse:
        record: WorkerRecord | None = None
        try:
            record = codec.record_from_request(request, registered_at=self._scheduler.registry.now())
            credential = await self._allow(context, "RegisterWorker", worker=record)
            receipt = await self._scheduler.register_record(record)
        except SchedulerError as error:
            if record is None:  # not even decoded: the registry never saw it, so it is counted here
                self._scheduler.registry.count_invalid(request.metadata.worker_type)
            if not isinstance(error, AccessDenied):  # logged as auth.refused
                _log_refused(request.worker_id, error)
            await abort_with(context, error)
        _log_registered(receipt)
        return pb.RegisterWorkerResponse(
            status=pb.REGISTRATION_STATUS_SUCCESS,
            worker=codec.record_to_proto(receipt.record),
            created=receipt.created,
            credential=credential,
        )

    async def RegisterWorkers(
        self, request: pb.RegisterWorkersRequest, context: Context
    ) -> pb.RegisterWorkersResponse:
        await self._admit(context, "RegisterWorkers")
        if len(request.workers) > MAX_BATCH_SIZE:
            await abort_with(context, _invalid("workers", f"at most {MAX_BATCH_SIZE} workers per call"))
        now = self._scheduler.registry.now()
        shared: dict[bytes, Any] = {}
        outcomes: list[SchedulerError | None] = []
        decoded: list[WorkerRecord] = []
        undecoded: list[str] = []  # worker types of entries refused here (the registry never sees them)
        for entry in request.workers:
            try:
                decoded.append(codec.record_from_request(entry, registered_at=now, shared=shared))
                outcomes.append(None)
            except SchedulerError as error:
                outcomes.append(error)
                undecoded.append(entry.metadata.worker_type)
        try:
            registered = iter(await self._scheduler.register_records(decoded))
        except SchedulerError as error:  # the store could not be reached: nothing of the batch was written
            await abort_with(context, error)
        for worker_type in undecoded:
            self._scheduler.registry.count_invalid(worker_type)
        answers = [outcome or next(registered) for outcome in outcomes]
        _log_batch(answers)
        return pb.RegisterWorkersResponse(
            results=[
                codec.registration_result_to_proto(entry.worker_id, answer, entry)
                for entry, answer in zip(request.workers, answers, strict=True)
            ]
        )

    async def UnregisterWorker(
        self, request: pb.UnregisterWorkerRequest, context: Context
    ) -> pb.UnregisterWorkerResponse:
        await self._admit(context, "UnregisterWorker", request.worker_id)
        try:
            _check_reason(request.reason)
        except InvalidWorkerData as error:
            await abort_with(context, error)
        if not _registrable(request.worker_id):
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
        await self._admit(context, "ReportOrphanRemoved")
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
        await self._admit(context, "GetWorker")
        try:
            record = await self._scheduler.get(request.worker_id) if _registrable(request.worker_id) else None
        except SchedulerError as error:  # the store could not be used: UNAVAILABLE, never UNKNOWN
            await abort_with(context, error)
        if record is None:
            await abort_with(context, _not_found(request.worker_id))
        return pb.GetWorkerResponse(worker=codec.record_to_proto(record))

    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Context) -> pb.ListWorkersResponse:
        await self._admit(context, "ListWorkers")
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
        await self._admit(context, "DrainWorker")
        try:
            _check_reason(request.reason)
            if not _registrable(request.worker_id):
                raise _not_found(request.worker_id)
            outcome = await self._scheduler.drain(
                request.worker_id, deadline=request.deadline_ms / 1000, reason=request.reason
            )
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.DrainWorkerResponse(
            worker=codec.record_to_proto(outcome.record), delivered=outcome.delivered
        )

    async def ShutdownWorker(
        self, request: pb.ShutdownWorkerRequest, context: Context
    ) -> pb.ShutdownWorkerResponse:
        await self._admit(context, "ShutdownWorker")
        try:
            _check_reason(request.reason)
            if not _registrable(request.worker_id):
                raise _not_found(request.worker_id)
            delivered = await self._scheduler.shutdown(request.worker_id, reason=request.reason)
        except SchedulerError as error:
            await abort_with(context, error)
        return pb.ShutdownWorkerResponse(delivered=delivered)

    async def WatchWorkers(
        self, request: pb.WatchWorkersRequest, context: Context
    ) -> AsyncIterator[pb.WatchWorkersResponse]:
        await self._admit(context, "WatchWorkers")
        watcher = self._scheduler.events.watch()
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
            await abort_with(context, _invalid("hello", f"is not a valid {_CONNECT_REQUEST}"))
        if first is grpc.aio.EOF or first.WhichOneof("message") != "hello":
            await abort_with(context, _invalid("hello", "must be the first message of the stream"))
        if first.hello.incarnation == 0:
            # An agent fences itself with its incarnation; 0 would take over another agent's stream unfenced.
            self._scheduler.registry.count_invalid(first.hello.metadata.worker_type)
            await abort_with(context, _invalid("hello.incarnation", "must be greater than 0"))
        hello: pb.ConnectRequest = first
        return hello

    async def _open_session(
        self, context: Context, first: pb.ConnectRequest
    ) -> tuple[AgentSession, pb.ConnectAck]:
        worker: DynamicWorker | None = None
        try:
            worker = codec.worker_from_request(first.hello)
            credential = await self._allow(context, "Connect", worker=worker)
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
                    _check_reason(change.reason, "status_change.reason")
                    await self._scheduler.report_status(
                        session,
                        codec.status_from_proto(change.status),
                        drained=change.drained,
                        reason=change.reason,
                    )
                else:
                    raise _invalid(
                        "message", "after the hello, only heartbeats and status changes are accepted"
                    )
            return None
        except SchedulerError as error:
            return error
        except DecodeError:
            return _invalid("message", f"is not a valid {_CONNECT_REQUEST}")
        finally:
            session.close()
