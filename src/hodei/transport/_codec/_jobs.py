"""Resource pools on the wire: requirements, jobs and their results, assignments, waiting demand, pools."""

from __future__ import annotations

from hodei.domain import Assignment, Job, JobOutcome, JobResult, WorkerCapabilities, WorkerStatus, WorkerType
from hodei.pools import (
    PoolKind,
    PoolSpec,
    PoolStatus,
    Requirements,
    ScaleEvent,
    WaitingDemand,
    WorkerTemplate,
)
from hodei.transport._codec._time import moment, timestamp
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2 as pb

__all__ = [
    "assignment_from_proto",
    "assignment_to_proto",
    "demand_from_proto",
    "demand_to_proto",
    "job_from_proto",
    "job_result_from_proto",
    "job_result_to_proto",
    "job_to_proto",
    "outcome_from_proto",
    "outcome_to_proto",
    "pool_from_proto",
    "pool_to_proto",
    "requirements_from_proto",
    "requirements_to_proto",
    "scale_event_from_proto",
    "scale_event_to_proto",
]

_OUTCOME_TO_PROTO: dict[JobOutcome, pb.JobOutcome] = {
    outcome: getattr(pb, f"JOB_OUTCOME_{outcome.name}") for outcome in JobOutcome
}
_OUTCOME_FROM_PROTO: dict[int, JobOutcome] = {value: outcome for outcome, value in _OUTCOME_TO_PROTO.items()}


def _ms(seconds: float) -> int:
    return max(0, min(2**32 - 1, round(seconds * 1000)))


def requirements_to_proto(requirements: Requirements) -> pb.Requirements:
    return pb.Requirements(
        pool=requirements.pool or "",
        cpu_cores=requirements.cpu_cores,
        memory_mb=requirements.memory_mb,
        disk_mb=requirements.disk_mb,
        gpu_count=requirements.gpu_count,
        labels=dict(requirements.labels),
    )


def requirements_from_proto(message: pb.Requirements) -> Requirements:
    return Requirements(
        pool=message.pool or None,
        cpu_cores=message.cpu_cores,
        memory_mb=message.memory_mb,
        disk_mb=message.disk_mb,
        gpu_count=message.gpu_count,
        labels=dict(message.labels),
    )


def job_to_proto(job: Job) -> pb.Job:
    return pb.Job(
        command=list(job.command),
        environment=dict(job.environment),
        timeout_ms=_ms(job.timeout) if job.timeout is not None else 0,
    )


def job_from_proto(message: pb.Job) -> Job:
    return Job(
        tuple(message.command),
        dict(message.environment),
        message.timeout_ms / 1000 if message.timeout_ms else None,
    )


def outcome_to_proto(outcome: JobOutcome) -> pb.JobOutcome:
    return _OUTCOME_TO_PROTO[outcome]


def outcome_from_proto(value: int, *, default: JobOutcome = JobOutcome.SUCCEEDED) -> JobOutcome:
    """The outcome; ``default`` for UNSPECIFIED or a value this side does not know."""
    return _OUTCOME_FROM_PROTO.get(value, default)


def job_result_to_proto(result: JobResult) -> pb.JobResult:
    return pb.JobResult(
        outcome=_OUTCOME_TO_PROTO[result.outcome],
        exit_code=result.exit_code,
        output_tail=result.output_tail,
        reason=result.reason,
    )


def job_result_from_proto(message: pb.JobResult) -> JobResult:
    return JobResult(
        outcome=outcome_from_proto(message.outcome, default=JobOutcome.FAILED),
        exit_code=message.exit_code,
        output_tail=message.output_tail,
        reason=message.reason,
    )


def assignment_to_proto(assignment: Assignment, ended: JobResult | None = None) -> pb.Assignment:
    """The assignment; ``ended``: how it ended (ENDED with that result), else BOUND."""
    return pb.Assignment(
        assignment_id=assignment.assignment_id,
        job_id=assignment.job_id,
        worker_id=assignment.worker_id,
        incarnation=assignment.incarnation,
        lease_ttl_ms=_ms(assignment.lease_ttl),
        job=job_to_proto(assignment.job) if assignment.job is not None else None,
        bound_at=timestamp(assignment.bound_at),
        state=pb.ASSIGNMENT_STATE_ENDED if ended is not None else pb.ASSIGNMENT_STATE_BOUND,
        result=job_result_to_proto(ended) if ended is not None else None,
        priority=assignment.priority,
        trace_context=dict(assignment.trace_context),
    )


def assignment_from_proto(message: pb.Assignment) -> tuple[Assignment, JobResult | None]:
    """The assignment, and its result once it ended (None while BOUND)."""
    assignment = Assignment(
        assignment_id=message.assignment_id,
        job_id=message.job_id,
        worker_id=message.worker_id,
        incarnation=message.incarnation,
        lease_ttl=message.lease_ttl_ms / 1000,
        job=job_from_proto(message.job) if message.HasField("job") else None,
        priority=message.priority,
        bound_at=moment(message.bound_at, message.HasField("bound_at")),
        trace_context=dict(message.trace_context),
    )
    ended = message.state == pb.ASSIGNMENT_STATE_ENDED
    return assignment, job_result_from_proto(message.result) if ended else None


def demand_to_proto(demand: WaitingDemand) -> pb.WaitingDemand:
    return pb.WaitingDemand(
        requirements=requirements_to_proto(demand.requirements),
        shape=demand.shape,
        waiting=demand.waiting,
        oldest_wait_ms=_ms(demand.oldest_wait),
        pools=list(demand.pools),
    )


def demand_from_proto(message: pb.WaitingDemand) -> WaitingDemand:
    return WaitingDemand(
        requirements=requirements_from_proto(message.requirements),
        waiting=message.waiting,
        oldest_wait=message.oldest_wait_ms / 1000,
        pools=tuple(message.pools),
    )


def pool_to_proto(status: PoolStatus) -> pb.Pool:
    spec, template = status.spec, status.spec.template
    return pb.Pool(
        name=spec.name,
        kind=spec.kind.value,
        provider=spec.provider.value,
        template=pb.WorkerCapabilities(
            cpu_cores=template.cpu_cores,
            memory_mb=template.memory_mb,
            disk_mb=template.disk_mb,
            gpu_count=template.gpu_count,
        ),
        labels=dict(template.labels),
        image=template.image or "",
        min=spec.min,
        max=spec.max,
        warm=spec.warm,
        idle_timeout_ms=_ms(spec.idle_timeout),
        max_provisioning=spec.max_provisioning,
        provision_timeout_ms=_ms(spec.provision_timeout),
        scale_up_cooldown_ms=_ms(spec.scale_up_cooldown),
        scale_down_cooldown_ms=_ms(spec.scale_down_cooldown),
        max_use_count=spec.max_use_count or 0,
        workers={status.value: count for status, count in status.workers.items() if count},
        waiting=status.waiting,
        recent=[scale_event_to_proto(event) for event in status.recent],
    )


def pool_from_proto(message: pb.Pool) -> PoolStatus:
    capabilities = WorkerCapabilities(
        message.template.cpu_cores,
        message.template.memory_mb,
        message.template.disk_mb,
        message.template.gpu_count,
    )
    spec = PoolSpec(
        name=message.name,
        kind=PoolKind(message.kind),
        provider=WorkerType(message.provider),
        template=WorkerTemplate(
            cpu_cores=capabilities.cpu_cores,
            memory_mb=capabilities.memory_mb,
            disk_mb=capabilities.disk_mb,
            gpu_count=capabilities.gpu_count,
            labels=dict(message.labels),
            image=message.image or None,
        ),
        min=message.min,
        max=message.max,
        warm=message.warm,
        idle_timeout=message.idle_timeout_ms / 1000,
        max_provisioning=message.max_provisioning,
        provision_timeout=message.provision_timeout_ms / 1000,
        scale_up_cooldown=message.scale_up_cooldown_ms / 1000,
        scale_down_cooldown=message.scale_down_cooldown_ms / 1000,
        max_use_count=message.max_use_count or None,
    )
    known = {status.value: status for status in WorkerStatus}
    workers = {known[name]: count for name, count in message.workers.items() if name in known}
    return PoolStatus(
        spec, workers, message.waiting, tuple(scale_event_from_proto(e) for e in message.recent)
    )


def scale_event_to_proto(event: ScaleEvent) -> pb.ScaleEvent:
    return pb.ScaleEvent(
        pool=event.pool,
        direction=event.direction,
        reason=event.reason,
        desired=event.desired,
        count=event.count,
        time=timestamp(event.time),
    )


def scale_event_from_proto(message: pb.ScaleEvent) -> ScaleEvent:
    return ScaleEvent(
        pool=message.pool,
        direction=message.direction,
        reason=message.reason,
        desired=message.desired,
        count=message.count,
        time=moment(message.time, message.HasField("time")),
    )
