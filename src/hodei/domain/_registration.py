"""Registration as an idempotent upsert fenced by incarnation, the form a store keeps, and a record's size."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import replace

from hodei._kept import SameAsLast
from hodei.domain._assignments import Assignment
from hodei.domain._values import WorkerStatus
from hodei.domain._workers import WorkerRecord

__all__ = [
    "Change",
    "UpsertOutcome",
    "apply_change",
    "merge_registration",
    "merge_registrations",
    "stored_form",
    "wire_size",
]

Change = Callable[[WorkerRecord], "WorkerRecord | None"]
"""A store's read-modify-write of one record: the stored record in, the one to write out (None: leave it)."""


class UpsertOutcome(enum.Enum):
    """What writing a registration did to the registry."""

    CREATED = "created"
    UPDATED = "updated"
    KEPT = "kept"  # an unfenced (incarnation 0) registration of a worker its agent manages: the agent's wins
    STALE = "stale"  # an older incarnation than the stored one: nothing written


def merge_registration(stored: WorkerRecord | None, new: WorkerRecord) -> tuple[UpsertOutcome, WorkerRecord]:
    """The rule of registration as an idempotent upsert fenced by incarnation; every store applies it atomically.

    A higher incarnation is a restarted worker: it replaces the record and starts ``AVAILABLE``. The same
    incarnation is a retry or a refresh: the fields are replaced but the status is kept (a ``LOST`` worker is
    ``AVAILABLE`` again). A lower incarnation is refused. Incarnation 0 means "not fenced" (the control plane
    registering what it provisioned): it never overrides a worker whose agent registered with an incarnation.
    """
    if stored is None:
        return UpsertOutcome.CREATED, new
    if new.incarnation == 0 and stored.incarnation > 0:
        return UpsertOutcome.KEPT, stored
    if new.incarnation < stored.incarnation:
        return UpsertOutcome.STALE, stored
    restarted = new.incarnation > stored.incarnation
    keep_status = not restarted and stored.status is not WorkerStatus.LOST
    merged = replace(
        new,
        registered_at=stored.registered_at,
        status=stored.status if keep_status else new.status,
        drained=stored.drained if keep_status else new.drained,
        # A refresh keeps the job it is bound to, and so does an agent that reconnects (a new incarnation)
        # still running it; a restarted worker runs none of it (its holder is told).
        assignment=_kept_assignment(stored, new, restarted),
        use_count=stored.use_count if not restarted or new.running_jobs else new.use_count,
        lease_ttl=new.lease_ttl if new.lease_ttl is not None else stored.lease_ttl,
    )
    return UpsertOutcome.UPDATED, merged


def _kept_assignment(stored: WorkerRecord, new: WorkerRecord, restarted: bool) -> Assignment | None:
    bound = stored.assignment
    if bound is None or not restarted:
        return bound
    if bound.assignment_id in new.running_jobs:
        return replace(bound, incarnation=new.incarnation)
    return None


def apply_change(
    before: WorkerRecord | None, change: Change
) -> tuple[tuple[WorkerRecord, WorkerRecord] | None, WorkerRecord | None]:
    """The rule of ``modify`` for one record, as every store applies it: what it answers (``(before, after)``,
    or None for a record not stored) and the record to write (None: nothing to write)."""
    if before is None:
        return None, None
    after = change(before)
    if after is None:
        return (before, before), None
    after = stored_form(after)
    return (before, after), after


def stored_form(record: WorkerRecord) -> WorkerRecord:
    """The record without its live fields (stream, usage, last heartbeat), as every store keeps it."""
    if (
        record.connected
        or record.usage is not None
        or record.last_heartbeat_at is not None
        or record.connected_via
        or record.running_jobs
    ):
        return replace(
            record, connected=False, usage=None, last_heartbeat_at=None, connected_via="", running_jobs=()
        )
    return record


# What a record's encoding takes besides its texts: numbers, timestamps, tags and lengths, generously.
_RECORD_FRAMING = 160
_LABEL_FRAMING = 8
_ASSIGNMENT_FRAMING = 120


def _sum_labels(labels: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) + _LABEL_FRAMING for k, v in labels.items())


# The records of one shape share their labels: a group of them is sized with one pass over those.
_labels_size = SameAsLast(_sum_labels)


def wire_size(record: WorkerRecord) -> int:
    """An upper estimate of the bytes ``record`` takes encoded (its texts in UTF-8, and the framing): what bounds a
    page of a listing and a group commit's transaction."""
    # UTF-8 is written text by text: the texts' bytes together are the bytes of their concatenation.
    texts = record.worker_id + record.pool + record.hostname + record.agent_version + record.worker_type.value
    size = _RECORD_FRAMING + len(texts.encode()) + _labels_size(record.labels)
    assignment = record.assignment
    if assignment is not None:
        ids = assignment.assignment_id + assignment.job_id + assignment.worker_id
        size += _ASSIGNMENT_FRAMING + len(ids.encode()) + _sum_labels(assignment.trace_context)
        if assignment.job is not None:
            size += assignment.job.encoded_size()
    return size


def merge_registrations(
    current: MutableMapping[str, WorkerRecord], records: Sequence[WorkerRecord]
) -> tuple[list[tuple[UpsertOutcome, WorkerRecord]], dict[str, WorkerRecord]]:
    """A batch of registrations merged in order against ``current`` (updated in place), as every store does it.

    Returns each record's outcome and the record now stored, and what the store must write: the last state of
    every worker that was created or updated (a worker may appear twice in one batch).
    """
    outcomes: list[tuple[UpsertOutcome, WorkerRecord]] = []
    written: dict[str, WorkerRecord] = {}
    for record in records:
        outcome, stored = merge_registration(current.get(record.worker_id), record)
        stored = stored_form(stored)
        if outcome in (UpsertOutcome.CREATED, UpsertOutcome.UPDATED):
            current[record.worker_id] = written[record.worker_id] = stored
        outcomes.append((outcome, stored))
    return outcomes, written
