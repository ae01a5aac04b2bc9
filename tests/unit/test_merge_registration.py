"""merge_registration: registration as an idempotent upsert, fenced by incarnation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hodei.domain import (
    UpsertOutcome,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
    merge_registration,
)

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
REGISTERED_AT = EPOCH
NEW_REGISTERED_AT = EPOCH + timedelta(hours=1)
NEW_UPDATED_AT = EPOCH + timedelta(hours=1, seconds=5)


def stored_record(**fields: object) -> WorkerRecord:
    """What the registry holds: a 2-core docker worker registered at EPOCH."""
    values: dict[str, object] = {
        "worker_id": "worker-1",
        "worker_type": WorkerType.DOCKER,
        "capabilities": WorkerCapabilities(cpu_cores=2, memory_mb=4096),
        "status": WorkerStatus.AVAILABLE,
        "labels": {"zone": "a"},
        "pool": "default",
        "hostname": "old-host",
        "agent_version": "1.0.0",
        "incarnation": 1,
        "registered_at": REGISTERED_AT,
        "updated_at": REGISTERED_AT,
        "lease_ttl": 15.0,
        "drained": False,
    }
    values.update(fields)
    return WorkerRecord(**values)  # type: ignore[arg-type]


def new_record(**fields: object) -> WorkerRecord:
    """An incoming registration of the same worker, with every field different from the stored one."""
    values: dict[str, object] = {
        "worker_id": "worker-1",
        "worker_type": WorkerType.PROCESS,
        "capabilities": WorkerCapabilities(cpu_cores=8, memory_mb=16384, disk_mb=100, gpu_count=1),
        "status": WorkerStatus.AVAILABLE,
        "labels": {"zone": "b", "gpu": "yes"},
        "pool": "gpu-pool",
        "hostname": "new-host",
        "agent_version": "2.0.0",
        "incarnation": 1,
        "registered_at": NEW_REGISTERED_AT,
        "updated_at": NEW_UPDATED_AT,
        "lease_ttl": 30.0,
        "drained": False,
    }
    values.update(fields)
    return WorkerRecord(**values)  # type: ignore[arg-type]


def assert_fields_from_new(merged: WorkerRecord, new: WorkerRecord) -> None:
    assert merged.worker_type is new.worker_type
    assert merged.capabilities == new.capabilities
    assert dict(merged.labels) == dict(new.labels)
    assert merged.pool == new.pool
    assert merged.hostname == new.hostname
    assert merged.agent_version == new.agent_version
    assert merged.incarnation == new.incarnation
    assert merged.updated_at == new.updated_at


# --- no stored record -----------------------------------------------------------------------------------


def test_a_worker_not_stored_is_created_as_given() -> None:
    new = new_record(status=WorkerStatus.BUSY, lease_ttl=None)

    outcome, merged = merge_registration(None, new)

    assert outcome is UpsertOutcome.CREATED
    assert merged == new
    assert merged.registered_at == NEW_REGISTERED_AT
    assert merged.status is WorkerStatus.BUSY
    assert merged.lease_ttl is None


# --- a higher incarnation: a restarted worker -----------------------------------------------------------


def test_a_higher_incarnation_replaces_the_fields_and_keeps_the_first_registration_time() -> None:
    stored = stored_record(incarnation=1)
    new = new_record(incarnation=2)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert_fields_from_new(merged, new)
    assert merged.incarnation == 2
    assert merged.registered_at == REGISTERED_AT
    assert merged.lease_ttl == 30.0


@pytest.mark.parametrize(
    "stored_status", [WorkerStatus.DRAINING, WorkerStatus.LOST, WorkerStatus.BUSY, WorkerStatus.AVAILABLE]
)
def test_a_higher_incarnation_takes_the_status_of_the_new_record(stored_status: WorkerStatus) -> None:
    stored = stored_record(incarnation=3, status=stored_status)
    new = new_record(incarnation=4, status=WorkerStatus.AVAILABLE)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert merged.status is WorkerStatus.AVAILABLE


def test_a_higher_incarnation_of_a_busy_agent_starts_busy_over_a_stored_available_worker() -> None:
    stored = stored_record(incarnation=1, status=WorkerStatus.AVAILABLE)
    new = new_record(incarnation=2, status=WorkerStatus.BUSY)

    _, merged = merge_registration(stored, new)

    assert merged.status is WorkerStatus.BUSY


def test_a_higher_incarnation_resets_drained() -> None:
    stored = stored_record(incarnation=1, status=WorkerStatus.DRAINING, drained=True)
    new = new_record(incarnation=2, status=WorkerStatus.AVAILABLE, drained=False)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert merged.status is WorkerStatus.AVAILABLE
    assert merged.drained is False


def test_a_higher_incarnation_over_an_unfenced_control_plane_registration_replaces_it() -> None:
    stored = stored_record(incarnation=0, lease_ttl=None, status=WorkerStatus.AVAILABLE)
    new = new_record(incarnation=7, status=WorkerStatus.BUSY, lease_ttl=15.0)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert_fields_from_new(merged, new)
    assert merged.incarnation == 7
    assert merged.status is WorkerStatus.BUSY
    assert merged.lease_ttl == 15.0
    assert merged.registered_at == REGISTERED_AT


# --- the same incarnation: a retry or a refresh ---------------------------------------------------------


def test_the_same_incarnation_replaces_the_fields_and_keeps_the_first_registration_time() -> None:
    stored = stored_record(incarnation=5)
    new = new_record(incarnation=5)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert_fields_from_new(merged, new)
    assert merged.registered_at == REGISTERED_AT


@pytest.mark.parametrize("stored_status", [WorkerStatus.BUSY, WorkerStatus.DRAINING, WorkerStatus.AVAILABLE])
def test_the_same_incarnation_keeps_the_stored_status(stored_status: WorkerStatus) -> None:
    stored = stored_record(incarnation=5, status=stored_status)
    new = new_record(
        incarnation=5,
        status=WorkerStatus.BUSY if stored_status is WorkerStatus.AVAILABLE else WorkerStatus.AVAILABLE,
    )

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert merged.status is stored_status


def test_the_same_incarnation_keeps_a_drained_worker_drained() -> None:
    stored = stored_record(incarnation=5, status=WorkerStatus.DRAINING, drained=True)
    new = new_record(incarnation=5, status=WorkerStatus.AVAILABLE, drained=False)

    _, merged = merge_registration(stored, new)

    assert merged.status is WorkerStatus.DRAINING
    assert merged.drained is True


def test_the_same_incarnation_keeps_an_undrained_worker_undrained() -> None:
    stored = stored_record(incarnation=5, status=WorkerStatus.DRAINING, drained=False)
    new = new_record(incarnation=5, status=WorkerStatus.AVAILABLE, drained=True)

    _, merged = merge_registration(stored, new)

    assert merged.drained is False


@pytest.mark.parametrize("new_status", [WorkerStatus.AVAILABLE, WorkerStatus.BUSY])
def test_the_same_incarnation_turns_a_lost_worker_into_the_new_status(new_status: WorkerStatus) -> None:
    stored = stored_record(incarnation=5, status=WorkerStatus.LOST)
    new = new_record(incarnation=5, status=new_status)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert merged.status is new_status
    assert_fields_from_new(merged, new)
    assert merged.registered_at == REGISTERED_AT


def test_the_same_incarnation_over_a_lost_worker_takes_drained_from_the_new_record() -> None:
    stored = stored_record(incarnation=5, status=WorkerStatus.LOST, drained=True)
    new = new_record(incarnation=5, status=WorkerStatus.AVAILABLE, drained=False)

    _, merged = merge_registration(stored, new)

    assert merged.drained is False


# --- a lower incarnation: refused -----------------------------------------------------------------------


def test_a_lower_incarnation_is_stale_and_returns_the_stored_record_unchanged() -> None:
    stored = stored_record(incarnation=5, status=WorkerStatus.BUSY)
    new = new_record(incarnation=4)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.STALE
    assert merged is stored


# --- incarnation 0: unfenced ----------------------------------------------------------------------------


@pytest.mark.parametrize("stored_incarnation", [1, 9])
def test_an_unfenced_registration_over_an_agent_registered_worker_is_kept_as_stored(
    stored_incarnation: int,
) -> None:
    stored = stored_record(incarnation=stored_incarnation, status=WorkerStatus.BUSY)
    new = new_record(incarnation=0)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.KEPT
    assert merged is stored


def test_an_unfenced_registration_over_an_unfenced_worker_is_an_update_that_keeps_the_status() -> None:
    stored = stored_record(incarnation=0, status=WorkerStatus.BUSY, lease_ttl=None)
    new = new_record(incarnation=0, status=WorkerStatus.AVAILABLE, lease_ttl=None)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert_fields_from_new(merged, new)
    assert merged.incarnation == 0
    assert merged.status is WorkerStatus.BUSY
    assert merged.registered_at == REGISTERED_AT


# --- lease_ttl ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stored_incarnation", "new_incarnation"), [(1, 1), (1, 2), (0, 0)])
def test_the_stored_lease_ttl_is_kept_when_the_new_record_has_none(
    stored_incarnation: int, new_incarnation: int
) -> None:
    stored = stored_record(incarnation=stored_incarnation, lease_ttl=15.0)
    new = new_record(incarnation=new_incarnation, lease_ttl=None)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert merged.lease_ttl == 15.0


@pytest.mark.parametrize("stored_ttl", [None, 15.0])
@pytest.mark.parametrize(("stored_incarnation", "new_incarnation"), [(1, 1), (1, 2), (0, 0)])
def test_the_lease_ttl_is_replaced_when_the_new_record_has_one(
    stored_ttl: float | None, stored_incarnation: int, new_incarnation: int
) -> None:
    stored = stored_record(incarnation=stored_incarnation, lease_ttl=stored_ttl)
    new = new_record(incarnation=new_incarnation, lease_ttl=45.0)

    outcome, merged = merge_registration(stored, new)

    assert outcome is UpsertOutcome.UPDATED
    assert merged.lease_ttl == 45.0


def test_the_lease_ttl_stays_none_when_neither_record_has_one() -> None:
    stored = stored_record(incarnation=0, lease_ttl=None)
    new = new_record(incarnation=0, lease_ttl=None)

    _, merged = merge_registration(stored, new)

    assert merged.lease_ttl is None
