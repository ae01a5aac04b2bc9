"""WorkerRegistry over the in-memory store: upsert semantics, incarnation fencing, the veto, batches, paging."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from hodei.domain import (
    DynamicWorker,
    DynamicWorkerConfig,
    FieldViolation,
    WorkerCapabilities,
    WorkerRecord,
    WorkerStatus,
    WorkerType,
    validate_worker,
)
from hodei.errors import InvalidWorkerData, SchedulerError, SchedulerOverloaded, StaleIncarnation
from hodei.ports import RegistrationReceipt, UnregistrationStatus, UpsertOutcome, WorkerFilter
from hodei.scheduler._registry import WorkerRegistry
from hodei.stores._memory import MemoryRegistryStore
from tests.helpers import make_worker

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


class StepClock:
    """Each reading is one second after the previous one, starting at EPOCH."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> datetime:
        moment = EPOCH + timedelta(seconds=self.readings)
        self.readings += 1
        return moment


def at(second: int) -> datetime:
    return EPOCH + timedelta(seconds=second)


class CountingStore(MemoryRegistryStore):
    """The memory store, counting its write calls."""

    def __init__(self) -> None:
        super().__init__()
        self.upsert_calls = 0

    async def upsert(self, records: Sequence[WorkerRecord]) -> list[tuple[UpsertOutcome, WorkerRecord]]:
        self.upsert_calls += 1
        return await super().upsert(records)


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def registry(store: CountingStore) -> WorkerRegistry:
    return WorkerRegistry(store, clock=StepClock())


def fenced(worker_id: str, incarnation: int, **config: object) -> DynamicWorker:
    return dataclasses.replace(make_worker(worker_id, **config), incarnation=incarnation)


def ids(records: Sequence[WorkerRecord]) -> list[str]:
    return [record.worker_id for record in records]


# --- register -------------------------------------------------------------------------------------------


async def test_registering_a_new_worker_creates_it_available(registry: WorkerRegistry) -> None:
    worker = DynamicWorker(
        "worker-1",
        WorkerType.PROCESS,
        DynamicWorkerConfig(
            worker_type=WorkerType.PROCESS, cpu_cores=4, memory_mb=8192, labels={"arch": "amd64"}, pool="ci"
        ),
        incarnation=3,
        hostname="host-1",
    )

    receipt = await registry.register(worker)

    expected = WorkerRecord(
        worker_id="worker-1",
        worker_type=WorkerType.PROCESS,
        capabilities=WorkerCapabilities(cpu_cores=4, memory_mb=8192),
        status=WorkerStatus.AVAILABLE,
        labels={"arch": "amd64"},
        pool="ci",
        hostname="host-1",
        incarnation=3,
        registered_at=at(0),
        updated_at=at(0),
    )
    assert receipt == RegistrationReceipt(expected, created=True)
    assert await registry.get("worker-1") == expected
    assert await registry.count() == 1


async def test_registering_the_same_worker_twice_refreshes_the_one_record(registry: WorkerRegistry) -> None:
    await registry.register(make_worker("worker-1", cpu_cores=2, labels={"v": "1"}))

    receipt = await registry.register(make_worker("worker-1", cpu_cores=8, labels={"v": "2"}))

    assert receipt.created is False
    assert receipt.record.registered_at == at(0)
    assert receipt.record.updated_at == at(1)
    assert receipt.record.capabilities.cpu_cores == 8
    assert dict(receipt.record.labels) == {"v": "2"}
    assert await registry.get("worker-1") == receipt.record
    assert await registry.count() == 1


async def test_lower_incarnation_is_refused_and_leaves_the_record_unchanged(registry: WorkerRegistry) -> None:
    current = (await registry.register(fenced("worker-1", 5, cpu_cores=4))).record

    with pytest.raises(StaleIncarnation) as refused:
        await registry.register(fenced("worker-1", 4, cpu_cores=16))

    assert refused.value.worker_id == "worker-1"
    assert refused.value.message == (
        "worker 'worker-1': incarnation 4 is older than the registered incarnation 5"
    )
    assert await registry.get("worker-1") == current


@pytest.mark.parametrize("incarnation", [5, 6])
async def test_equal_or_higher_incarnation_replaces_the_record(
    registry: WorkerRegistry, incarnation: int
) -> None:
    await registry.register(fenced("worker-1", 5, cpu_cores=4))

    receipt = await registry.register(fenced("worker-1", incarnation, cpu_cores=16))

    assert receipt.created is False
    assert receipt.record.incarnation == incarnation
    assert receipt.record.capabilities.cpu_cores == 16
    assert receipt.record.registered_at == at(0)
    assert await registry.get("worker-1") == receipt.record


async def test_an_invalid_worker_is_refused_with_every_violation_and_nothing_is_written(
    registry: WorkerRegistry, store: CountingStore
) -> None:
    worker = make_worker("bad id", cpu_cores=0, labels={"bad key": "v"})

    with pytest.raises(InvalidWorkerData) as refused:
        await registry.register(worker)

    assert refused.value.worker_id == "bad id"
    assert refused.value.violations == tuple(validate_worker(worker))
    assert [v.field for v in refused.value.violations] == [
        "worker_id",
        "capabilities.cpu_cores",
        "metadata.labels['bad key']",
    ]
    assert store.upsert_calls == 0
    assert await registry.count() == 0


async def test_an_invalid_re_registration_leaves_the_existing_record_unchanged(
    registry: WorkerRegistry,
) -> None:
    current = (await registry.register(make_worker("worker-1"))).record

    with pytest.raises(InvalidWorkerData):
        await registry.register(make_worker("worker-1", memory_mb=0))

    assert await registry.get("worker-1") == current


async def test_the_veto_refuses_only_the_worker_it_names(store: CountingStore) -> None:
    refusal = SchedulerOverloaded("pool 'gpu' is full", worker_id="worker-2", retry_after=2.0)

    def veto(worker: DynamicWorker) -> SchedulerError | None:
        return refusal if worker.worker_id == "worker-2" else None

    registry = WorkerRegistry(store, clock=StepClock(), veto=veto)

    with pytest.raises(SchedulerOverloaded) as refused:
        await registry.register(make_worker("worker-2"))
    receipt = await registry.register(make_worker("worker-1"))

    assert refused.value is refusal
    assert receipt.created is True
    assert ids(await registry.store.list(WorkerFilter())) == ["worker-1"]


async def test_the_veto_is_not_asked_about_an_invalid_worker(store: CountingStore) -> None:
    asked: list[str] = []

    def veto(worker: DynamicWorker) -> SchedulerError | None:
        asked.append(worker.worker_id)
        return None

    registry = WorkerRegistry(store, veto=veto)

    with pytest.raises(InvalidWorkerData):
        await registry.register(make_worker("worker-1", cpu_cores=0))

    assert asked == []


# --- register_many --------------------------------------------------------------------------------------


async def test_a_mixed_batch_answers_each_worker_in_input_order_with_one_store_write(
    registry: WorkerRegistry, store: CountingStore
) -> None:
    await registry.register(fenced("stale", 9))
    writes_before = store.upsert_calls
    batch = [
        make_worker("alpha", cpu_cores=2),
        make_worker("invalid", cpu_cores=0),
        fenced("stale", 3),
        make_worker("alpha", cpu_cores=6),
        make_worker("omega"),
    ]

    results = await registry.register_many(batch)

    assert len(results) == 5
    first, invalid, stale, duplicate, last = results
    assert isinstance(first, RegistrationReceipt)
    assert (first.record.worker_id, first.created, first.record.capabilities.cpu_cores) == ("alpha", True, 2)
    assert isinstance(invalid, InvalidWorkerData)
    assert invalid.worker_id == "invalid"
    assert invalid.violations == (
        FieldViolation("capabilities.cpu_cores", "must be between 1 and 4096, got 0"),
    )
    assert isinstance(stale, StaleIncarnation)
    assert stale.worker_id == "stale"
    assert isinstance(duplicate, RegistrationReceipt)
    assert (duplicate.record.worker_id, duplicate.created) == ("alpha", False)
    assert duplicate.record.capabilities.cpu_cores == 6
    assert isinstance(last, RegistrationReceipt)
    assert (last.record.worker_id, last.created) == ("omega", True)
    assert store.upsert_calls == writes_before + 1
    assert ids(await store.list(WorkerFilter())) == ["alpha", "omega", "stale"]
    assert await registry.get("alpha") == duplicate.record
    stored_stale = await registry.get("stale")
    assert stored_stale is not None
    assert stored_stale.incarnation == 9


async def test_a_batch_a_veto_refuses_in_part_registers_the_rest(store: CountingStore) -> None:
    refusal = SchedulerOverloaded("full")
    registry = WorkerRegistry(store, veto=lambda worker: refusal if worker.worker_id == "worker-2" else None)

    results = await registry.register_many([make_worker(f"worker-{n}") for n in range(1, 4)])

    assert [isinstance(r, RegistrationReceipt) for r in results] == [True, False, True]
    assert results[1] is refusal
    assert ids(await store.list(WorkerFilter())) == ["worker-1", "worker-3"]


async def test_a_batch_of_only_invalid_workers_writes_nothing(
    registry: WorkerRegistry, store: CountingStore
) -> None:
    results = await registry.register_many([make_worker(""), make_worker("w", memory_mb=-1)])

    assert [type(r) for r in results] == [InvalidWorkerData, InvalidWorkerData]
    assert store.upsert_calls == 0


async def test_an_empty_batch_answers_nothing_and_writes_nothing(
    registry: WorkerRegistry, store: CountingStore
) -> None:
    assert await registry.register_many([]) == []
    assert store.upsert_calls == 0


# --- unregister and get ---------------------------------------------------------------------------------


async def test_unregister_answers_success_then_not_registered(registry: WorkerRegistry) -> None:
    await registry.register(make_worker("worker-1"))

    assert await registry.unregister("worker-1") is UnregistrationStatus.SUCCESS
    assert await registry.unregister("worker-1") is UnregistrationStatus.NOT_REGISTERED
    assert await registry.get("worker-1") is None
    assert await registry.count() == 0


async def test_getting_an_unknown_worker_answers_none(registry: WorkerRegistry) -> None:
    assert await registry.get("nobody") is None


# --- list -----------------------------------------------------------------------------------------------


async def register_ids(registry: WorkerRegistry, worker_ids: Sequence[str]) -> None:
    results = await registry.register_many([make_worker(worker_id) for worker_id in worker_ids])
    assert all(isinstance(result, RegistrationReceipt) for result in results)


async def test_pages_follow_worker_id_order_and_the_last_page_has_no_token(registry: WorkerRegistry) -> None:
    everyone = [f"worker-{n:02d}" for n in range(25)]
    await register_ids(registry, list(reversed(everyone[::2])) + everyone[1::2])

    first = await registry.list(page_size=10)
    second = await registry.list(page_size=10, page_token=first.next_page_token)
    third = await registry.list(page_size=10, page_token=second.next_page_token)

    assert ids(first.workers) == everyone[:10]
    assert ids(second.workers) == everyone[10:20]
    assert ids(third.workers) == everyone[20:]
    assert first.next_page_token != ""
    assert second.next_page_token != ""
    assert third.next_page_token == ""


async def test_a_page_that_ends_exactly_at_the_last_worker_has_no_token(registry: WorkerRegistry) -> None:
    await register_ids(registry, [f"worker-{n:02d}" for n in range(20)])

    first = await registry.list(page_size=10)
    second = await registry.list(page_size=10, page_token=first.next_page_token)

    assert ids(second.workers) == [f"worker-{n:02d}" for n in range(10, 20)]
    assert second.next_page_token == ""


async def test_a_page_holds_the_exact_records(registry: WorkerRegistry) -> None:
    await register_ids(registry, ["b", "a"])

    page = await registry.list()

    assert list(page.workers) == [await registry.get("a"), await registry.get("b")]
    assert page.next_page_token == ""


async def test_an_empty_registry_lists_an_empty_last_page(registry: WorkerRegistry) -> None:
    page = await registry.list()

    assert list(page.workers) == []
    assert page.next_page_token == ""


async def test_a_page_size_of_zero_means_100(registry: WorkerRegistry) -> None:
    await register_ids(registry, [f"worker-{n:03d}" for n in range(150)])

    page = await registry.list(page_size=0)

    assert ids(page.workers) == [f"worker-{n:03d}" for n in range(100)]
    assert page.next_page_token != ""


async def test_a_page_size_above_1000_is_capped_at_1000(registry: WorkerRegistry) -> None:
    await register_ids(registry, [f"worker-{n:04d}" for n in range(1005)])

    first = await registry.list(page_size=5000)
    rest = await registry.list(page_size=5000, page_token=first.next_page_token)

    assert ids(first.workers) == [f"worker-{n:04d}" for n in range(1000)]
    assert ids(rest.workers) == [f"worker-{n:04d}" for n in range(1000, 1005)]
    assert rest.next_page_token == ""


async def test_a_negative_page_size_is_refused_naming_page_size(registry: WorkerRegistry) -> None:
    with pytest.raises(InvalidWorkerData) as refused:
        await registry.list(page_size=-1)

    assert refused.value.violations == (FieldViolation("page_size", "must not be negative, got -1"),)


@pytest.mark.parametrize("page_token", ["garbage", "not a token", "zzzz", "é", "!!!!", "===="])
async def test_a_page_token_the_scheduler_never_issued_is_refused_naming_page_token(
    registry: WorkerRegistry, page_token: str
) -> None:
    await register_ids(registry, ["worker-1", "worker-2"])

    with pytest.raises(InvalidWorkerData) as refused:
        await registry.list(page_token=page_token)

    assert [v.field for v in refused.value.violations] == ["page_token"]


async def put_records(registry: WorkerRegistry, *records: WorkerRecord) -> None:
    await registry.store.upsert(records)


def record(
    worker_id: str,
    status: WorkerStatus = WorkerStatus.AVAILABLE,
    worker_type: WorkerType = WorkerType.DOCKER,
    **labels: str,
) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        worker_type=worker_type,
        capabilities=WorkerCapabilities(cpu_cores=2, memory_mb=4096),
        status=status,
        labels=labels,
    )


async def test_listing_filters_by_status(registry: WorkerRegistry) -> None:
    await put_records(
        registry,
        record("a", WorkerStatus.AVAILABLE),
        record("b", WorkerStatus.BUSY),
        record("c", WorkerStatus.DRAINING),
        record("d", WorkerStatus.BUSY),
    )

    busy = await registry.list(WorkerFilter(statuses=frozenset({WorkerStatus.BUSY})))
    busy_or_draining = await registry.list(
        WorkerFilter(statuses=frozenset({WorkerStatus.BUSY, WorkerStatus.DRAINING}))
    )

    assert ids(busy.workers) == ["b", "d"]
    assert ids(busy_or_draining.workers) == ["b", "c", "d"]


async def test_listing_filters_by_worker_type(registry: WorkerRegistry) -> None:
    await put_records(
        registry,
        record("a", worker_type=WorkerType.DOCKER),
        record("b", worker_type=WorkerType.STATIC),
        record("c", worker_type=WorkerType.STATIC),
    )

    page = await registry.list(WorkerFilter(worker_type=WorkerType.STATIC))

    assert ids(page.workers) == ["b", "c"]


async def test_listing_by_labels_keeps_only_workers_carrying_every_label(registry: WorkerRegistry) -> None:
    await put_records(
        registry,
        record("a", arch="amd64", os="linux"),
        record("b", arch="amd64"),
        record("c", arch="arm64", os="linux"),
        record("d", arch="amd64", os="linux", gpu="yes"),
    )

    page = await registry.list(WorkerFilter(labels={"arch": "amd64", "os": "linux"}))

    assert ids(page.workers) == ["a", "d"]


async def test_filters_combine_and_page_over_the_matching_workers_only(registry: WorkerRegistry) -> None:
    await put_records(
        registry,
        *[
            record(
                f"w{n}",
                WorkerStatus.BUSY if n % 2 else WorkerStatus.AVAILABLE,
                WorkerType.PROCESS if n % 3 else WorkerType.DOCKER,
                pool="a",
            )
            for n in range(12)
        ],
    )
    wanted = WorkerFilter(
        statuses=frozenset({WorkerStatus.BUSY}), worker_type=WorkerType.PROCESS, labels={"pool": "a"}
    )

    first = await registry.list(wanted, page_size=2)
    second = await registry.list(wanted, page_size=2, page_token=first.next_page_token)

    # busy: odd n; process: n not divisible by 3 → 1, 5, 7, 11, in worker-id order w1, w11, w5, w7
    assert ids(first.workers) == ["w1", "w11"]
    assert ids(second.workers) == ["w5", "w7"]
    assert second.next_page_token == ""
