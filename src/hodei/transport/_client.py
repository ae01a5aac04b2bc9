"""SchedulerPortClient: the :class:`~hodei.ports.SchedulerPort` over grpc.aio, to one scheduler or several."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from hodei.domain import DynamicWorker, Job, JobOutcome, WorkerRecord
from hodei.errors import (
    ErrorCode,
    RegistrationCancelled,
    SchedulerError,
    WorkerNotFound,
    scheduler_error_for,
)
from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.pools import PoolStatus, Requirements, ScaleEvent, WaitingDemand
from hodei.ports import (
    Acquired,
    AssignmentView,
    DrainOutcome,
    RegistrationReceipt,
    UnregistrationStatus,
    WorkerFilter,
    WorkerPage,
)
from hodei.security._access import authorization_metadata
from hodei.security._tls import ClientTlsConfig
from hodei.transport import _codec as codec
from hodei.transport._addresses import channel_target, scheduler_addresses
from hodei.transport._channel import FAILOVER_CHANNEL_OPTIONS, open_channel
from hodei.transport._codec import pb
from hodei.transport._status import error_from_rpc

__all__ = [
    "Credential",
    "SchedulerPortClient",
]

R = TypeVar("R")

Credential = str | Callable[[], str]
"""A token, or a function that gives the token to present now (an agent's changes as it is handed new ones)."""


class SchedulerPortClient:
    """Talks to a scheduler: ``SchedulerPortClient("127.0.0.1:50051")`` or ``SchedulerPortClient(channel)``.

    Given several replicas' addresses — ``SchedulerPortClient("10.0.0.1:50051,10.0.0.2:50051")`` or a
    sequence of ``HOST:PORT`` strings — it uses the first that answers and fails over to the next when that
    one goes away (:data:`FAILOVER_CHANNEL_OPTIONS`). ``target`` is then the addresses joined by commas. Host
    names are resolved once, when the client is made: a malformed list raises ``ValueError``, a name that does
    not resolve :class:`~hodei.errors.SchedulerUnavailable`.

    A client made from addresses owns its channel and closes it in :meth:`close` (or at the end of
    ``async with``); a channel passed in belongs to the caller. Every failed call raises the
    :class:`~hodei.errors.SchedulerError` kind of its status code.

    When tracing is configured (:func:`hodei.observability._tracing.configure_tracing`) before the client is
    made, the channel it makes traces each call and sends the W3C trace context along; a channel passed in is
    traced only if its maker added the interceptors (:func:`hodei.transport.open_channel` does).

    Against a scheduler with auth on, ``credential`` (an operator token, or a worker's own credential; or a
    function giving the one to use now) goes with every call as ``authorization: Bearer <token>`` metadata.
    ``tls`` makes the channel speak TLS, trusting its CA and presenting its client certificate if it has one
    (for a client made from addresses; a channel passed in is already what its maker made it).
    """

    def __init__(
        self,
        target: str | Sequence[str] | grpc.aio.Channel,
        *,
        options: Sequence[tuple[str, Any]] = (),
        credential: Credential | None = None,
        tls: ClientTlsConfig | None = None,
    ) -> None:
        self._credential = credential
        if isinstance(target, Sequence):
            addresses = scheduler_addresses(target)
            if len(addresses) > 1:
                given = {key for key, _ in options}
                options = [*(o for o in FAILOVER_CHANNEL_OPTIONS if o[0] not in given), *options]
            self._channel = open_channel(channel_target(addresses), tls=tls, options=options)
            self._owns_channel = True
            self.target = ",".join(addresses)
        else:
            if tls is not None:
                raise ValueError(
                    "tls is for a client that makes its own channel; this one was given a channel"
                )
            self._channel = target
            self._owns_channel = False
            self.target = ""
        self._stub = codec.pb_grpc.SchedulerServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._encoder = codec.RequestEncoder()
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

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The credential's metadata for one call (None without a credential)."""
        credential = self._credential
        token = credential() if callable(credential) else credential
        return authorization_metadata(token) if token else None

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
            return await method(request, timeout=timeout, metadata=self._metadata())
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, worker_id=worker_id) from error

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        # Raises InvalidWorkerData if the wire cannot hold it. The answer leaves out what was sent.
        request = self._encoder.request(worker, slim_answer=True)
        response = await self._call(self._stub.RegisterWorker, request, timeout, worker.worker_id)
        return codec.receipt_from_proto(response, worker)

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        # Each worker's outcome in its place: a worker that cannot even be encoded is refused alone.
        request, refused = self._encoder.batch(workers)
        outcomes: list[RegistrationReceipt | SchedulerError | None] = list(refused)
        sendable = [index for index, refusal in enumerate(refused) if refusal is None]
        if sendable:
            response = await self._call(self._stub.RegisterWorkers, request, timeout, None)
            if len(response.results) != len(sendable):
                raise scheduler_error_for(
                    ErrorCode.INTERNAL,
                    f"the scheduler answered {len(response.results)} results for {len(sendable)} workers",
                )
            for index, result in zip(sendable, response.results, strict=True):
                outcomes[index] = codec.result_from_proto(result, workers[index])
        return [outcome for outcome in outcomes if outcome is not None]

    async def unregister_worker(
        self,
        worker_id: str,
        *,
        reason: str = "",
        incarnation: int | None = None,
        timeout: float | None = None,
    ) -> UnregistrationStatus:
        request = codec.unregister_request(worker_id, reason=reason, incarnation=incarnation)
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
        self,
        worker_id: str,
        *,
        deadline: float = 0.0,
        reason: str = "",
        only_if_available: bool = False,
        timeout: float | None = None,
    ) -> DrainOutcome:
        """Mark the worker DRAINING and tell its agent; raises WorkerNotFound for an unknown worker, and with
        ``only_if_available`` WorkerNotIdle for a worker busy (nothing changed)."""
        request = pb.DrainWorkerRequest(
            worker_id=worker_id,
            deadline_ms=round(deadline * 1000),
            reason=reason,
            only_if_available=only_if_available,
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

    async def report_orphan_removed(
        self, worker_id: str, *, reason: str = "", timeout: float | None = None
    ) -> None:
        """Tell the scheduler's watchers that a machine of ``worker_id`` with no registration was destroyed."""
        request = pb.ReportOrphanRemovedRequest(worker_id=worker_id, reason=reason)
        await self._call(self._stub.ReportOrphanRemoved, request, timeout, worker_id)

    async def watch_workers(
        self, *, include_snapshot: bool = False, kinds: Collection[WorkerEventKind] | None = None
    ) -> AsyncIterator[WorkerEvent]:
        """Lifecycle events as they happen (after one SNAPSHOT event per worker, if asked), until closed; of
        ``kinds`` only, if given (the scheduler then builds no event for a kind nobody watches). No kind at all
        cannot be asked for (the wire says "every kind" with none): ``ValueError``."""
        if self._closed:
            raise RegistrationCancelled("the SchedulerPortClient is closed")
        if kinds is not None and not kinds:
            raise ValueError("kinds: name at least one kind, or None for every kind")
        request = pb.WatchWorkersRequest(
            include_snapshot=include_snapshot, kinds=codec.event_kinds_to_proto(kinds or ())
        )
        call = self._stub.WatchWorkers(request, metadata=self._metadata())
        try:
            async for response in call:
                event = codec.event_from_proto(response.event)
                if event is not None:
                    yield event
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from error
        finally:
            call.cancel()

    # -- resource pools (PoolPort) -------------------------------------------------------------------------

    async def acquire_worker(
        self,
        job_id: str,
        requirements: Requirements,
        *,
        job: Job | None = None,
        priority: int = 0,
        wait: float = 0.0,
        lease_ttl: float = 0.0,
        timeout: float | None = None,
    ) -> Acquired:
        request = pb.AcquireWorkerRequest(
            job_id=job_id,
            requirements=codec.requirements_to_proto(requirements),
            priority=priority,
            wait_ms=_milliseconds(wait),
            job=codec.job_to_proto(job) if job is not None else None,
            lease_ttl_ms=_milliseconds(lease_ttl),
        )
        if timeout is None:
            timeout = wait + _ANSWER_MARGIN
        response = await self._call(self._stub.AcquireWorker, request, timeout, None)
        assignment, _ = codec.assignment_from_proto(response.assignment)
        return Acquired(assignment, codec.record_from_proto(response.worker), response.created)

    async def renew_assignment(
        self, assignment_id: str, *, wait: float = 0.0, timeout: float | None = None
    ) -> AssignmentView:
        request = pb.RenewAssignmentRequest(assignment_id=assignment_id, wait_ms=_milliseconds(wait))
        if timeout is None:
            timeout = wait + _ANSWER_MARGIN
        response = await self._call(self._stub.RenewAssignment, request, timeout, None)
        return AssignmentView(*codec.assignment_from_proto(response.assignment))

    async def release_worker(
        self,
        assignment_id: str,
        *,
        outcome: JobOutcome = JobOutcome.SUCCEEDED,
        recycle: bool = False,
        reason: str = "",
        timeout: float | None = None,
    ) -> AssignmentView:
        request = pb.ReleaseWorkerRequest(
            assignment_id=assignment_id,
            outcome=codec.outcome_to_proto(outcome),
            recycle=recycle,
            reason=reason,
        )
        response = await self._call(self._stub.ReleaseWorker, request, timeout, None)
        assignment, result = codec.assignment_from_proto(response.assignment)
        record = codec.record_from_proto(response.worker) if response.HasField("worker") else None
        return AssignmentView(assignment, result, record)

    async def get_demand(self, *, timeout: float | None = None) -> list[WaitingDemand]:
        response = await self._call(self._stub.GetDemand, pb.GetDemandRequest(), timeout, None)
        return [codec.demand_from_proto(d) for d in response.demand]

    async def apply_pools(self, source: str, text: str, *, timeout: float | None = None) -> list[PoolStatus]:
        request = pb.ApplyPoolsRequest(source=source, text=text)
        response = await self._call(self._stub.ApplyPools, request, timeout, None)
        return [codec.pool_from_proto(p) for p in response.pools]

    async def list_pools(self, *, timeout: float | None = None) -> list[PoolStatus]:
        response = await self._call(self._stub.ListPools, pb.ListPoolsRequest(), timeout, None)
        return [codec.pool_from_proto(p) for p in response.pools]

    async def report_scale_event(self, event: ScaleEvent, *, timeout: float | None = None) -> None:
        request = pb.ReportScaleEventRequest(event=codec.scale_event_to_proto(event))
        await self._call(self._stub.ReportScaleEvent, request, timeout, None)


_ANSWER_MARGIN = 10.0
"""A waiting call's deadline beyond its wait, when the caller names none: time for the answer to come back."""


def _milliseconds(seconds: float) -> int:
    return max(0, min(2**32 - 1, round(seconds * 1000)))
