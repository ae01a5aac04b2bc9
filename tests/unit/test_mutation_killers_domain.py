"""Validation pinned down to the words: the tests that kill what `make mutation` found surviving in domain.py.

The client and the scheduler name the same field with the same words (the description travels in the
``BadRequest`` detail), so a description is part of the contract and is checked exactly here.
"""

from __future__ import annotations

from hodei.domain import (
    FieldViolation,
    WorkerCapabilities,
    WorkerRecord,
    WorkerType,
    validate_record,
    validate_worker_id,
)

NAME_RULE = "must be at most 253 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"


def valid_record(**overrides: object) -> WorkerRecord:
    values: dict[str, object] = {
        "worker_id": "worker-1",
        "worker_type": WorkerType.DOCKER,
        "capabilities": WorkerCapabilities(cpu_cores=2, memory_mb=4096),
        "pool": "default",
        "hostname": "host-1",
        "agent_version": "1.2.3",
    }
    values.update(overrides)
    return WorkerRecord(**values)  # type: ignore[arg-type]


def test_a_worker_id_with_a_forbidden_character_is_described_in_the_contracts_words() -> None:
    assert validate_worker_id("-starts-with-a-dash") == [
        FieldViolation(
            "worker_id",
            "must start with a letter or digit and contain only letters, digits, '.', '_' and '-'",
        )
    ]


def test_a_name_that_ends_with_a_dot_is_described_in_the_contracts_words() -> None:
    assert validate_record(valid_record(pool="pool.")) == [FieldViolation("metadata.pool", NAME_RULE)]


def test_a_valid_record_has_no_violations() -> None:
    assert validate_record(valid_record()) == []


def test_a_record_is_checked_for_its_worker_id() -> None:
    assert validate_record(valid_record(worker_id="")) == [FieldViolation("worker_id", "must not be empty")]


def test_a_record_is_checked_for_its_pool_hostname_and_agent_version_each_by_name() -> None:
    record = valid_record(pool="-pool", hostname="host_", agent_version="1.2.3!")
    assert validate_record(record) == [
        FieldViolation("metadata.pool", NAME_RULE),
        FieldViolation("metadata.hostname", NAME_RULE),
        FieldViolation("metadata.agent_version", NAME_RULE),
    ]


def test_a_label_key_that_ends_with_a_slash_is_described_in_the_contracts_words() -> None:
    assert validate_record(valid_record(labels={"team/": "ci"})) == [
        FieldViolation(
            "metadata.labels['team/']",
            "key must be 1 to 63 letters, digits, '.', '_', '/' or '-', starting and ending with a letter or digit",
        )
    ]
