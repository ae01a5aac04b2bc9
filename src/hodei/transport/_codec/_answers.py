"""A batch's answer, encoded once per kind of result rather than once per worker.

The results of one RegisterWorkers call are nearly all alike: workers registered together share their status,
their times, their lease, and the slim answer leaves out what each sent. What differs is the worker's id and
its incarnation. So the answer is encoded by :func:`registration_result_to_proto` (the reference, and the
only encoder of what a result says) once for each kind of result in the call. Each further result of that
kind is that encoding's bytes with the worker's own id and incarnation framed around them
(:mod:`._framing`). The message is then parsed from those bytes (gRPC encodes it again on its way out): in
process, 2.2 µs per result against 5.5 for a message built per result.

A kind is found by comparing values, so only values whose equality is their encoding's make one: times in UTC
(two equal local times may be an hour apart, across a change of the clocks) and no usage (0.0 equals -0.0, which
the wire keeps). A result of no kind (a refusal, a record bound to a job, a record with other times or with usage,
a record whose id or incarnation is not its entry's) is encoded by the reference alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from operator import attrgetter

from hodei.domain import WorkerRecord
from hodei.errors import SchedulerError
from hodei.ports import RegistrationReceipt
from hodei.transport._codec._framing import LENGTH_DELIMITED, VARINT, field, tag, uint64_field
from hodei.transport._codec._outcomes import registration_result_to_proto
from hodei.transport._generated.hodei.scheduler.v1 import scheduler_pb2 as pb

__all__ = ["registration_results"]

# Tags of the fields framed here; a test pins them to the contract.
_RESULTS = tag(1, LENGTH_DELIMITED)  # RegisterWorkersResponse.results
_ID = tag(1, LENGTH_DELIMITED)  # worker_id, of both WorkerRegistrationResult and Worker
_RESULT_WORKER = tag(3, LENGTH_DELIMITED)  # WorkerRegistrationResult.worker
_WORKER_INCARNATION = tag(5, VARINT)  # Worker.incarnation (uint64)

# What a slim result's encoding is made of, besides the worker's id and incarnation: every field of the record
# but those and the ones a slim answer leaves out (or that never go on the wire). A field added to the record is
# part of the kind unless it is named here.
_NOT_OF_THE_KIND = frozenset(
    {
        "worker_id",
        "incarnation",
        "worker_type",
        "capabilities",
        "labels",
        "pool",
        "hostname",
        "agent_version",
        "running_jobs",
        "_verdict",
    }
)
_KIND = tuple(f.name for f in fields(WorkerRecord) if f.name not in _NOT_OF_THE_KIND)
_kind_of = attrgetter(*_KIND)


def _in_utc(moment: datetime | None) -> bool:
    return moment is None or moment.tzinfo is UTC


def _of_a_kind(entry: pb.RegisterWorkerRequest, record: WorkerRecord) -> bool:
    """Whether ``record``, registered from ``entry``, is answered as a kind of result (else by the reference)."""
    return (
        record.incarnation == entry.incarnation  # else kept from another registration: the whole record
        and record.worker_id == entry.worker_id
        # Its encoding carries the job's trace context, which an assignment's equality leaves out.
        and record.assignment is None
        and record.usage is None
        and _in_utc(record.registered_at)
        and _in_utc(record.updated_at)
        and _in_utc(record.last_heartbeat_at)
    )


def _rest(reference: pb.WorkerRegistrationResult) -> tuple[bytes, bytes]:
    """A result's encoding without its worker's id and incarnation: the worker's fields, and the result's own."""
    result = pb.WorkerRegistrationResult()
    result.CopyFrom(reference)
    result.ClearField("worker_id")
    worker = result.worker
    worker.ClearField("worker_id")
    worker.ClearField("incarnation")
    worker_rest = worker.SerializeToString()
    result.ClearField("worker")
    return worker_rest, result.SerializeToString()


def registration_results(
    entries: Sequence[pb.RegisterWorkerRequest],
    outcomes: Sequence[RegistrationReceipt | SchedulerError],
) -> pb.RegisterWorkersResponse:
    """The answer to a RegisterWorkers call: for each entry, in order, what :func:`registration_result_to_proto`
    makes of its outcome (a slim answer where the record was written from the entry)."""
    kinds: dict[tuple[object, ...], tuple[bytes, bytes]] = {}
    pieces: list[bytes] = []
    for entry, outcome in zip(entries, outcomes, strict=True):
        worker_id = entry.worker_id
        if not isinstance(outcome, RegistrationReceipt) or not _of_a_kind(entry, record := outcome.record):
            pieces.append(
                field(_RESULTS, registration_result_to_proto(worker_id, outcome, entry).SerializeToString())
            )
            continue
        kind = (outcome.created, _kind_of(record))
        rest = kinds.get(kind)
        if rest is None:
            rest = kinds[kind] = _rest(registration_result_to_proto(worker_id, outcome, entry))
        worker_rest, result_rest = rest
        own_id = field(_ID, worker_id.encode())
        own = own_id + uint64_field(_WORKER_INCARNATION, record.incarnation)
        pieces.append(field(_RESULTS, own_id + field(_RESULT_WORKER, own + worker_rest) + result_rest))
    return pb.RegisterWorkersResponse.FromString(b"".join(pieces))
