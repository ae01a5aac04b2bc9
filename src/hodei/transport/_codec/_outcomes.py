"""What the scheduler answers and tells: registration receipts and results (a refusal's code and field
violations), unregistrations, listing filters, commands to an agent and lifecycle events."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from functools import partial

from hodei._quoting import quote_short
from hodei._violations import fit_violations
from hodei.domain import DynamicWorker, FieldViolation, WorkerRecord, WorkerType
from hodei.errors import ErrorCode, InvalidWorkerData, SchedulerError, scheduler_error_for
from hodei.lifecycle import CommandKind, WorkerCommand, WorkerEvent, WorkerEventKind
from hodei.ports import RegistrationReceipt, UnregistrationStatus, WorkerFilter
from hodei.transport._codec._jobs import (
    assignment_from_proto,
    assignment_to_proto,
    demand_from_proto,
    demand_to_proto,
)
from hodei.transport._codec._records import (
    WORKER_TYPES,
    put_record,
    record_from_proto,
    record_to_proto,
    slim_record,
    status_from_proto,
    status_to_proto,
)
from hodei.transport._codec._time import moment_of, timestamp
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2 as pb

__all__ = [
    "command_from_proto",
    "command_to_proto",
    "event_from_proto",
    "event_kinds_from_proto",
    "event_kinds_to_proto",
    "event_to_proto",
    "filter_from_proto",
    "filter_to_proto",
    "receipt_from_proto",
    "registration_answer",
    "registration_result_to_proto",
    "result_from_proto",
    "unregister_incarnation",
    "unregister_request",
    "unregistration_from_proto",
    "unregistration_to_proto",
]


def receipt_from_proto(
    message: pb.RegisterWorkerResponse | pb.WorkerRegistrationResult, sent: DynamicWorker | None = None
) -> RegistrationReceipt:
    """The receipt of a registration answered with ``message``; a slim answer's record is completed with the
    worker ``sent``."""
    worker = message.worker
    credential = message.credential if isinstance(message, pb.RegisterWorkerResponse) else ""
    decode = (
        partial(slim_record, worker, sent)
        if sent is not None and not worker.HasField("metadata")
        else partial(record_from_proto, worker)
    )
    return RegistrationReceipt(decode, created=message.created, credential=credential)


def _written_from(record: WorkerRecord, request: pb.RegisterWorkerRequest) -> bool:
    """Whether ``record``, registered from ``request``, was written from this very request (same incarnation: not
    kept from a newer registration). Only then may an answer leave out its capabilities and metadata, which are
    the request's own."""
    return record.incarnation == request.incarnation


def registration_answer(
    receipt: RegistrationReceipt, request: pb.RegisterWorkerRequest, *, credential: str = ""
) -> pb.RegisterWorkerResponse:
    """The answer to a RegisterWorker call of ``request`` that ``receipt`` settled; slim if the request asked
    (``slim_answer``) and the record was written from it. Its worker is written in place (:func:`put_record`)."""
    answer = pb.RegisterWorkerResponse(
        status=pb.REGISTRATION_STATUS_SUCCESS, created=receipt.created, credential=credential
    )
    record = receipt.record
    put_record(answer.worker, record, slim=request.slim_answer and _written_from(record, request))
    return answer


def _error_to_proto(error: SchedulerError) -> pb.WorkerError:
    return pb.WorkerError(
        code=int(error.code),
        message=error.message,
        field_violations=[
            pb.FieldViolation(field=v.field, description=v.description)
            for v in fit_violations(error.violations, message=error.message)
        ],
        retry_delay_ms=round(error.retry_after * 1000) if error.retry_after else 0,
    )


def registration_result_to_proto(
    worker_id: str,
    outcome: RegistrationReceipt | SchedulerError,
    request: pb.RegisterWorkerRequest | None = None,
) -> pb.WorkerRegistrationResult:
    if isinstance(outcome, SchedulerError):
        return pb.WorkerRegistrationResult(
            worker_id=worker_id,
            status=pb.REGISTRATION_STATUS_FAILED,
            error=_error_to_proto(outcome),
        )
    result = pb.WorkerRegistrationResult(
        worker_id=worker_id, status=pb.REGISTRATION_STATUS_SUCCESS, created=outcome.created
    )
    record = outcome.record
    put_record(result.worker, record, slim=request is not None and _written_from(record, request))
    return result


def result_from_proto(
    message: pb.WorkerRegistrationResult, sent: DynamicWorker | None = None
) -> RegistrationReceipt | SchedulerError:
    if message.status == pb.REGISTRATION_STATUS_SUCCESS:
        return receipt_from_proto(message, sent)
    error = message.error
    try:
        code = ErrorCode(error.code)
    except ValueError:
        code = ErrorCode.UNKNOWN
    if code is ErrorCode.OK:  # a failed result must carry an error; treat a missing one as the server's bug
        code = ErrorCode.INTERNAL
    return scheduler_error_for(
        code,
        error.message or "the scheduler refused the worker without saying why",
        worker_id=message.worker_id,
        violations=[FieldViolation(v.field, v.description) for v in error.field_violations],
        retry_after=error.retry_delay_ms / 1000 if error.retry_delay_ms else None,
    )


def unregister_request(
    worker_id: str, *, reason: str = "", incarnation: int | None = None
) -> pb.UnregisterWorkerRequest:
    """The request; ``incarnation`` (None: unset) fences it against a newer registration."""
    return pb.UnregisterWorkerRequest(worker_id=worker_id, reason=reason, incarnation=incarnation)


def unregister_incarnation(request: pb.UnregisterWorkerRequest) -> int | None:
    """The incarnation an unregistration is fenced by, or None when the caller sent none."""
    return request.incarnation if request.HasField("incarnation") else None


def unregistration_to_proto(status: UnregistrationStatus) -> pb.UnregistrationStatus:
    if status is UnregistrationStatus.SUCCESS:
        return pb.UNREGISTRATION_STATUS_SUCCESS
    return pb.UNREGISTRATION_STATUS_NOT_REGISTERED


def unregistration_from_proto(value: int) -> UnregistrationStatus:
    if value == pb.UNREGISTRATION_STATUS_SUCCESS:
        return UnregistrationStatus.SUCCESS
    if value == pb.UNREGISTRATION_STATUS_NOT_REGISTERED:
        return UnregistrationStatus.NOT_REGISTERED
    raise scheduler_error_for(
        ErrorCode.INTERNAL, f"the scheduler answered an unknown unregistration status {value}"
    )


def filter_to_proto(
    worker_filter: WorkerFilter, *, page_size: int = 0, page_token: str = ""
) -> pb.ListWorkersRequest:
    return pb.ListWorkersRequest(
        statuses=[status_to_proto(s) for s in sorted(worker_filter.statuses)],
        worker_type=worker_filter.worker_type.value if worker_filter.worker_type else "",
        labels=dict(worker_filter.labels),
        page_size=page_size,
        page_token=page_token,
    )


def filter_from_proto(request: pb.ListWorkersRequest) -> WorkerFilter:
    worker_type: WorkerType | None = None
    if request.worker_type:
        worker_type = WORKER_TYPES.get(request.worker_type)
        if worker_type is None:
            allowed = ", ".join(WORKER_TYPES)
            raise InvalidWorkerData(
                f"unknown worker type {quote_short(request.worker_type)}",
                violations=[FieldViolation("worker_type", f"must be one of {allowed}")],
            )
    labels: Mapping[str, str] = dict(request.labels)
    return WorkerFilter(
        statuses=frozenset(status_from_proto(s) for s in request.statuses),
        worker_type=worker_type,
        labels=labels,
    )


def command_to_proto(command: WorkerCommand) -> pb.WorkerCommand:
    if command.kind is CommandKind.DRAIN:
        return pb.WorkerCommand(
            drain=pb.DrainCommand(deadline_ms=round(command.deadline * 1000), reason=command.reason)
        )
    if command.kind is CommandKind.SHUTDOWN:
        return pb.WorkerCommand(shutdown=pb.ShutdownCommand(reason=command.reason))
    if command.kind is CommandKind.RUN_JOB:
        assert command.assignment is not None
        return pb.WorkerCommand(run_job=pb.RunJobCommand(assignment=assignment_to_proto(command.assignment)))
    if command.kind is CommandKind.CANCEL_JOB:
        return pb.WorkerCommand(
            cancel_job=pb.CancelJobCommand(assignment_id=command.assignment_id, reason=command.reason)
        )
    return pb.WorkerCommand(reregister=pb.ReregisterCommand(reason=command.reason))


def command_from_proto(message: pb.WorkerCommand) -> WorkerCommand | None:
    """The command, or None for a kind this agent does not know (a newer scheduler's)."""
    which = message.WhichOneof("command")
    if which == "drain":
        return WorkerCommand(CommandKind.DRAIN, message.drain.reason, message.drain.deadline_ms / 1000)
    if which == "shutdown":
        return WorkerCommand(CommandKind.SHUTDOWN, message.shutdown.reason)
    if which == "reregister":
        return WorkerCommand(CommandKind.REREGISTER, message.reregister.reason)
    if which == "run_job":
        assignment, _ = assignment_from_proto(message.run_job.assignment)
        return WorkerCommand(CommandKind.RUN_JOB, assignment=assignment)
    if which == "cancel_job":
        cancel = message.cancel_job
        return WorkerCommand(CommandKind.CANCEL_JOB, cancel.reason, assignment_id=cancel.assignment_id)
    return None


_EVENT_TO_PROTO: dict[WorkerEventKind, pb.WorkerEventKind] = {
    kind: getattr(pb, f"WORKER_EVENT_KIND_{kind.name}") for kind in WorkerEventKind
}
_EVENT_FROM_PROTO: dict[int, WorkerEventKind] = {value: kind for kind, value in _EVENT_TO_PROTO.items()}


def event_kinds_to_proto(kinds: Collection[WorkerEventKind]) -> list[pb.WorkerEventKind]:
    return [_EVENT_TO_PROTO[kind] for kind in sorted(kinds)]


def event_kinds_from_proto(values: Iterable[int]) -> frozenset[WorkerEventKind]:
    """The kinds asked for; values this scheduler does not know (a newer client's) are left out."""
    return frozenset(_EVENT_FROM_PROTO[value] for value in values if value in _EVENT_FROM_PROTO)


def event_to_proto(event: WorkerEvent) -> pb.WorkerEvent:
    return pb.WorkerEvent(
        sequence=event.sequence,
        kind=_EVENT_TO_PROTO[event.kind],
        worker_id=event.worker_id,
        worker=record_to_proto(event.record) if event.record is not None else None,
        reason=event.reason,
        time=timestamp(event.time),
        demand=[demand_to_proto(d) for d in event.demand],
    )


def event_from_proto(message: pb.WorkerEvent) -> WorkerEvent | None:
    """The event, or None for a kind this client does not know (a newer scheduler's)."""
    kind = _EVENT_FROM_PROTO.get(message.kind)
    if kind is None:
        return None
    return WorkerEvent(
        sequence=message.sequence,
        kind=kind,
        worker_id=message.worker_id,
        record=record_from_proto(message.worker) if message.HasField("worker") else None,
        reason=message.reason,
        time=moment_of(message.time),
        demand=tuple(demand_from_proto(d) for d in message.demand),
    )
