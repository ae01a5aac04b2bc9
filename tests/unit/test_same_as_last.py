"""SameAsLast: a value's encoding is kept for the very same object only, and rows made through it are the rows
made without it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from hodei._kept import SameAsLast
from hodei.domain import WorkerCapabilities, WorkerRecord, WorkerType, wire_size
from hodei.stores._rows import _encode_labels
from hodei.stores._sqlite_schema import _iso_text, as_row


def counting() -> tuple[SameAsLast[object, str], list[object]]:
    seen: list[object] = []

    def encode(value: object) -> str:
        seen.append(value)
        return repr(value)

    return SameAsLast(encode), seen


def test_the_same_object_is_encoded_once_while_it_comes_again() -> None:
    encode, seen = counting()
    labels = MappingProxyType({"zone": "a"})

    assert [encode(labels) for _ in range(3)] == ["mappingproxy({'zone': 'a'})"] * 3
    assert seen == [labels]


def test_an_equal_but_other_object_is_encoded_again() -> None:
    encode, seen = counting()
    first, twin = {"zone": "a"}, {"zone": "a"}

    encode(first)
    encode(twin)
    encode(first)

    assert [id(value) for value in seen] == [id(first), id(twin), id(first)]


def test_only_the_last_value_is_kept() -> None:
    encode, seen = counting()

    assert [encode(v) for v in ("a", 1, "a", 1)] == ["'a'", "1", "'a'", "1"]
    assert seen == ["a", 1, "a", 1]


def test_nothing_given_before_is_mistaken_for_the_first_value() -> None:
    encode, seen = counting()

    assert encode(None) == "None"
    assert seen == [None]


MOMENT = datetime(2026, 12, 6, 17, 0, tzinfo=UTC)


def record(worker_id: str, labels: object, moment: datetime = MOMENT) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        worker_type=WorkerType.DOCKER,
        capabilities=WorkerCapabilities(cpu_cores=2, memory_mb=4096),
        labels=labels,  # type: ignore[arg-type]
        registered_at=moment,
        updated_at=moment,
    )


def test_rows_and_sizes_through_the_kept_encodings_are_those_made_afresh() -> None:
    shared = MappingProxyType({"pool": "ci", "zone": "b"})
    records = [
        record("w-1", shared),
        record("w-2", shared),
        record("w-3", {"zone": "c"}),
        record("w-4", shared, MOMENT + timedelta(seconds=1)),
        record("w-5", {}),
        dataclasses.replace(record("w-6", shared), updated_at=MOMENT + timedelta(seconds=2)),
        record("w-7", shared),
    ]

    rows = [as_row(r) for r in records]
    sizes = [wire_size(r) for r in records]

    assert [row[11] for row in rows] == [_encode_labels(r.labels) for r in records]
    assert [row[11] for row in rows] == [
        '{"pool":"ci","zone":"b"}',
        '{"pool":"ci","zone":"b"}',
        '{"zone":"c"}',
        '{"pool":"ci","zone":"b"}',
        "{}",
        '{"pool":"ci","zone":"b"}',
        '{"pool":"ci","zone":"b"}',
    ]
    assert [(row[12], row[13]) for row in rows] == [
        (_iso_text(r.registered_at), _iso_text(r.updated_at)) for r in records
    ]
    assert [(row[12], row[13]) for row in rows][2:6] == [
        ("2026-12-06T17:00:00+00:00", "2026-12-06T17:00:00+00:00"),
        ("2026-12-06T17:00:01+00:00", "2026-12-06T17:00:01+00:00"),
        ("2026-12-06T17:00:00+00:00", "2026-12-06T17:00:00+00:00"),
        ("2026-12-06T17:00:00+00:00", "2026-12-06T17:00:02+00:00"),
    ]
    # 160 of framing, the id, "default" and "docker"; each label its key, its value and 8.
    assert sizes == [203, 203, 189, 203, 176, 203, 203]
