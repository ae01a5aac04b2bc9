"""A batch's answer (``codec.registration_results``): the bytes and the message of the reference encoding
(one ``registration_result_to_proto`` per result), whatever the results, with the reference asked once per
kind of result."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hodei.domain import (
    Assignment,
    FieldViolation,
    ResourceUsage,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
)
from hodei.errors import InvalidWorkerData, SchedulerError, SchedulerOverloaded, StaleIncarnation
from hodei.ports import RegistrationReceipt
from hodei.transport._codec import _answers, pb, registration_result_to_proto, registration_results

Outcome = RegistrationReceipt | SchedulerError

MOMENTS = [
    datetime(2026, 12, 6, 22, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 12, 6, 22, 0, 0, 123456, tzinfo=UTC),
    datetime(1999, 1, 1, tzinfo=UTC),
]


class Ambiguous(tzinfo):
    """A zone whose clocks go back an hour: the first pass of an hour (fold 0) is an hour before the second."""

    def utcoffset(self, moment: datetime | None) -> timedelta:
        return timedelta(hours=-4 if moment is None or moment.fold == 0 else -5)

    def dst(self, moment: datetime | None) -> timedelta:
        return timedelta(0)


# Equal as values, an hour apart as moments, so apart on the wire.
FIRST_PASS = datetime(2026, 11, 1, 1, 30, tzinfo=Ambiguous())
SECOND_PASS = FIRST_PASS.replace(fold=1)


def reference(entries: list[pb.RegisterWorkerRequest], outcomes: list[Outcome]) -> pb.RegisterWorkersResponse:
    return pb.RegisterWorkersResponse(
        results=[
            registration_result_to_proto(e.worker_id, o, e) for e, o in zip(entries, outcomes, strict=True)
        ]
    )


def assert_answered_as_the_reference(
    entries: list[pb.RegisterWorkerRequest], outcomes: list[Outcome]
) -> None:
    """The batch's answer is the reference's message, and its deterministic bytes too."""
    expected = reference(entries, outcomes)

    answer = registration_results(entries, outcomes)

    assert answer == expected
    assert answer.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def record(worker_id: str, incarnation: int = 0, **overrides: Any) -> WorkerRecord:
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "worker_type": WorkerType.DOCKER,
        "capabilities": WorkerCapabilities(cpu_cores=2, memory_mb=1024),
        "labels": {"bench": "true"},
        "incarnation": incarnation,
        "registered_at": MOMENTS[0],
        "updated_at": MOMENTS[0],
    }
    return WorkerRecord(**(values | overrides))


# -- the contract ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "message", "name", "kind"),
    [
        (_answers._RESULTS, pb.RegisterWorkersResponse, "results", FieldDescriptor.TYPE_MESSAGE),
        (_answers._ID, pb.WorkerRegistrationResult, "worker_id", FieldDescriptor.TYPE_STRING),
        (_answers._RESULT_WORKER, pb.WorkerRegistrationResult, "worker", FieldDescriptor.TYPE_MESSAGE),
        (_answers._ID, pb.Worker, "worker_id", FieldDescriptor.TYPE_STRING),
        (_answers._WORKER_INCARNATION, pb.Worker, "incarnation", FieldDescriptor.TYPE_UINT64),
    ],
)
def test_each_framed_tag_is_its_field_in_the_contract(tag: bytes, message: Any, name: str, kind: int) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    wire_type = 0 if kind == FieldDescriptor.TYPE_UINT64 else 2  # varint; length-delimited

    assert field.type == kind
    assert tag == bytes([field.number << 3 | wire_type])


# -- the same answer as the reference --------------------------------------------------------------------------

_IDS = st.one_of(
    st.sampled_from(
        ["w-1", "w-2", "worker-0000001", "é" * 70, "x" * 200]
    ),  # 70 two-byte characters: 140 bytes
    st.text(max_size=300),
)
_INCARNATIONS = st.one_of(
    st.sampled_from([0, 1, 127, 128, 2**32, 2**63 - 1, 2**63, 2**64 - 1]), st.integers(0, 300)
)
_ASSIGNMENT = Assignment(
    assignment_id="a-1", job_id="job-1", worker_id="w-1", incarnation=3, lease_ttl=12.5, bound_at=MOMENTS[1]
)


@st.composite
def _results(draw: st.DrawFn) -> tuple[pb.RegisterWorkerRequest, Outcome]:
    worker_id = draw(_IDS)
    incarnation = draw(_INCARNATIONS)
    entry = pb.RegisterWorkerRequest(worker_id=worker_id, incarnation=incarnation)
    refusal = draw(
        st.sampled_from(
            [
                None,
                None,
                None,
                InvalidWorkerData(
                    "bad", worker_id=worker_id, violations=[FieldViolation("worker_id", "bad")]
                ),
                StaleIncarnation("older", worker_id=worker_id),
                SchedulerOverloaded("busy", retry_after=0.25),
            ]
        )
    )
    if refusal is not None:
        return entry, refusal
    stored = record(
        draw(st.one_of(st.just(worker_id), _IDS)),  # almost always the entry's own
        draw(st.one_of(st.just(incarnation), _INCARNATIONS)),  # else kept from another registration
        status=draw(st.sampled_from(list(WorkerStatus))),
        registered_at=draw(st.sampled_from([*MOMENTS, FIRST_PASS, SECOND_PASS])),
        updated_at=draw(st.sampled_from([*MOMENTS, FIRST_PASS, SECOND_PASS, None])),
        lease_ttl=draw(st.sampled_from([None, 0.5, 30.0, 12.3456])),
        drained=draw(st.booleans()),
        use_count=draw(st.sampled_from([0, 1, 2**32 - 1])),
        connected=draw(st.booleans()),
        connected_via=draw(st.sampled_from(["", "10.0.0.2:50051"])),
        last_heartbeat_at=draw(st.sampled_from([None, MOMENTS[2]])),
        assignment=draw(st.sampled_from([None, None, _ASSIGNMENT])),
        usage=draw(
            st.sampled_from(
                [None, None, ResourceUsage(12.5, 512, 1), ResourceUsage(0.0), ResourceUsage(-0.0)]
            )
        ),
    )
    return entry, RegistrationReceipt(stored, created=draw(st.booleans()))


# Health: the first draw builds hypothesis's tables of text, which takes longer than its budget on a busy machine.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_results(), max_size=12))
def test_a_batch_is_answered_as_the_reference_answers_it(
    results: list[tuple[pb.RegisterWorkerRequest, Outcome]],
) -> None:
    assert_answered_as_the_reference([entry for entry, _ in results], [outcome for _, outcome in results])


def test_an_incarnation_the_wire_cannot_hold_is_refused_as_the_reference_refuses_it() -> None:
    entries = [pb.RegisterWorkerRequest(worker_id="w-1")]
    outcomes: list[Outcome] = [RegistrationReceipt(record("w-1", 2**64), created=True)]

    with pytest.raises(ValueError) as refused:
        reference(entries, outcomes)
    with pytest.raises(ValueError) as answered:
        registration_results(entries, outcomes)

    assert str(answered.value) == str(refused.value)


def test_an_empty_batch_has_no_results() -> None:
    assert registration_results([], []) == pb.RegisterWorkersResponse()


# -- once per kind ---------------------------------------------------------------------------------------------


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The worker ids the reference encoder is asked for, in order."""
    asked: list[str] = []

    def counted(worker_id: str, outcome: Outcome, request: pb.RegisterWorkerRequest | None = None) -> Any:
        asked.append(worker_id)
        return registration_result_to_proto(worker_id, outcome, request)

    monkeypatch.setattr(_answers, "registration_result_to_proto", counted)
    return asked


def test_the_fresh_registrations_of_a_batch_are_encoded_once(encoded: list[str]) -> None:
    entries = [pb.RegisterWorkerRequest(worker_id=f"w-{i}", incarnation=i % 3) for i in range(250)]
    outcomes: list[Outcome] = [RegistrationReceipt(record(f"w-{i}", i % 3), created=True) for i in range(250)]

    answer = registration_results(entries, outcomes)

    assert encoded == ["w-0"]
    assert answer == reference(entries, outcomes)


def test_each_kind_of_result_is_encoded_once_and_every_other_result_alone(encoded: list[str]) -> None:
    later = record("w-3", registered_at=MOMENTS[1], updated_at=MOMENTS[1])
    entries = [pb.RegisterWorkerRequest(worker_id=f"w-{i}", incarnation=1 if i == 5 else 0) for i in range(8)]
    outcomes: list[Outcome] = [
        RegistrationReceipt(record("w-0"), created=True),
        RegistrationReceipt(record("w-1"), created=False),  # updated: another kind
        RegistrationReceipt(record("w-2"), created=True),
        RegistrationReceipt(later, created=True),  # another moment: another kind
        StaleIncarnation("older", worker_id="w-4"),  # a refusal: alone
        RegistrationReceipt(record("w-5", 2), created=False),  # kept from a newer incarnation: alone
        RegistrationReceipt(record("w-6", assignment=_ASSIGNMENT), created=False),  # bound to a job: alone
        RegistrationReceipt(record("w-7"), created=False),
    ]

    answer = registration_results(entries, outcomes)

    assert encoded == ["w-0", "w-1", "w-3", "w-4", "w-5", "w-6"]
    assert answer == reference(entries, outcomes)


# Another value of each field of a result's kind than :func:`record` gives.
OTHER_VALUES: dict[str, Any] = {
    "status": WorkerStatus.DRAINING,
    "registered_at": MOMENTS[1],
    "updated_at": MOMENTS[1],
    "lease_ttl": 30.0,
    "drained": True,
    "assignment": _ASSIGNMENT,
    "use_count": 2,
    "connected": True,
    "usage": ResourceUsage(12.5, 512, 1),
    "last_heartbeat_at": MOMENTS[2],
    "connected_via": "10.0.0.2:50051",
}


def test_every_field_of_a_kind_has_another_value_here() -> None:
    assert set(_answers._KIND) == set(OTHER_VALUES)


@pytest.mark.parametrize("name", sorted(OTHER_VALUES))
def test_results_that_differ_in_one_field_of_their_kind_are_answered_apart(name: str) -> None:
    entries = [pb.RegisterWorkerRequest(worker_id=f"w-{i}") for i in range(3)]
    outcomes: list[Outcome] = [
        RegistrationReceipt(record("w-0"), created=True),
        RegistrationReceipt(record("w-1", **{name: OTHER_VALUES[name]}), created=True),
        RegistrationReceipt(record("w-2"), created=True),
    ]

    assert registration_results(entries, outcomes) == reference(entries, outcomes)


def test_jobs_that_differ_only_in_their_trace_are_answered_apart() -> None:
    traced = replace(_ASSIGNMENT, trace_context={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    entries = [pb.RegisterWorkerRequest(worker_id=f"w-{i}") for i in range(2)]
    outcomes: list[Outcome] = [
        RegistrationReceipt(record("w-0", assignment=_ASSIGNMENT), created=False),
        RegistrationReceipt(record("w-1", assignment=traced), created=False),
    ]

    answer = registration_results(entries, outcomes)

    assert answer == reference(entries, outcomes)
    assert answer.results[1].worker.assignment.trace_context["traceparent"].startswith("00-111")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"registered_at": FIRST_PASS}, {"registered_at": SECOND_PASS}),
        ({"updated_at": FIRST_PASS}, {"updated_at": SECOND_PASS}),
        ({"last_heartbeat_at": FIRST_PASS}, {"last_heartbeat_at": SECOND_PASS}),
        ({"usage": ResourceUsage(0.0)}, {"usage": ResourceUsage(-0.0)}),
    ],
    ids=["registered_at", "updated_at", "last_heartbeat_at", "usage"],
)
def test_values_equal_but_apart_on_the_wire_are_answered_apart(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    entries = [pb.RegisterWorkerRequest(worker_id=f"w-{i}") for i in range(2)]
    outcomes: list[Outcome] = [
        RegistrationReceipt(record("w-0", **first), created=True),
        RegistrationReceipt(record("w-1", **second), created=True),
    ]
    assert outcomes[0].record == replace(outcomes[1].record, worker_id="w-0")  # the same kind, by value

    assert_answered_as_the_reference(entries, outcomes)
