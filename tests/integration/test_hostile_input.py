"""A black-box client's hostile input against a real scheduler: every refusal is INVALID_ARGUMENT (or NOT_FOUND)
with a short message and a status under 8 KiB, a batch answers per worker on every store, and the largest
workers page through a client with its default options."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from hodei import ErrorCode, InvalidWorkerData, SchedulerPortClient
from hodei.domain import (
    MAX_INCARNATION,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    utcnow,
    wire_size,
)
from hodei.ports import RegistryStore
from hodei.scheduler._paging import MAX_PAGE_BYTES
from hodei.server._servicer import MAX_WATCHED_KINDS
from hodei.stores import PostgresRegistryStore
from hodei.stores._sqlite import SqliteRegistryStore
from hodei.testing import EmbeddedScheduler, FailingScheduler
from hodei.transport import _codec as codec
from hodei.transport._codec import pb, pb_grpc
from hodei.transport._status import MAX_MESSAGE_BYTES, MAX_STATUS_BYTES, STATUS_DETAILS_KEY
from tests.helpers import make_worker, wait_until

SHORT_MESSAGE = 300  # characters: a message quotes client text by a short prefix and its length


def stub_of(scheduler: EmbeddedScheduler) -> pb_grpc.SchedulerServiceStub:
    return pb_grpc.SchedulerServiceStub(scheduler.channel())  # type: ignore[no-untyped-call]


def request_for(
    worker_id: str, *, labels: dict[str, str] | None = None, incarnation: int = 0
) -> pb.RegisterWorkerRequest:
    return pb.RegisterWorkerRequest(
        worker_id=worker_id,
        capabilities=pb.WorkerCapabilities(cpu_cores=2, memory_mb=4096),
        metadata=pb.WorkerMetadata(worker_type="docker", labels=labels or {}),
        incarnation=incarnation,
    )


def status_of(error: grpc.aio.AioRpcError) -> tuple[bytes, status_pb2.Status]:
    [details] = [v for k, v in error.trailing_metadata() or () if k == STATUS_DETAILS_KEY]
    assert isinstance(details, bytes)
    return details, status_pb2.Status.FromString(details)


def violations_of(status: status_pb2.Status) -> list[tuple[str, str]]:
    [detail] = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    bad_request = error_details_pb2.BadRequest()
    detail.Unpack(bad_request)
    return [(v.field, v.description) for v in bad_request.field_violations]


# --- client text echoed short -------------------------------------------------------------------------------


async def test_a_ten_thousand_character_worker_id_is_invalid_argument_with_a_short_message(
    scheduler: EmbeddedScheduler,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub_of(scheduler).RegisterWorker(request_for("w" * 10_000), timeout=10)

    error = raised.value
    details, status = status_of(error)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"worker '{'w' * 64}'… (10000 chars) is invalid"
    assert violations_of(status) == [("worker_id", "must be at most 128 characters")]
    assert len(details) < MAX_STATUS_BYTES


async def test_three_hundred_bad_label_keys_list_twenty_violations_and_count_the_rest(
    scheduler: EmbeddedScheduler,
) -> None:
    labels = {f"bad key {n:03d} " + "x" * 100: "v" for n in range(300)}

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub_of(scheduler).RegisterWorker(request_for("w-1", labels=labels), timeout=10)

    details, status = status_of(raised.value)
    found = violations_of(status)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(found) == 21
    assert found[0] == ("metadata.labels", "at most 64 labels, got 300")
    assert found[-1] == ("…", "and 281 more violations not listed")
    assert len(details) < MAX_STATUS_BYTES


@pytest.mark.parametrize("character", ["😀", "a"])
async def test_an_error_with_the_longest_message_in_any_characters_keeps_its_code(character: str) -> None:
    refusing = FailingScheduler(1, code=ErrorCode.INVALID_ARGUMENT, message=character * 5000, retry_after=1.0)
    async with refusing as scheduler:
        with pytest.raises(InvalidWorkerData) as raised:
            await scheduler.client().register_worker(make_worker("w-1"))

    assert raised.value.code is ErrorCode.INVALID_ARGUMENT
    assert raised.value.retry_after == 1.0
    assert raised.value.message.startswith(character * 200)
    assert len(raised.value.message.encode()) <= MAX_MESSAGE_BYTES


@pytest.mark.parametrize("count", [MAX_WATCHED_KINDS + 1, 3_000_000])
async def test_a_watch_naming_too_many_event_kinds_is_invalid_argument_naming_kinds(
    scheduler: EmbeddedScheduler, count: int
) -> None:
    """Counted before any is read: three million kinds (a few MB) would hold the loop a fifth of a second."""
    request = pb.WatchWorkersRequest(kinds=[pb.WORKER_EVENT_KIND_DEMAND] * count)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub_of(scheduler).WatchWorkers(request, timeout=10):
            pass

    error = raised.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(status_of(error)[1]) == [("kinds", f"at most {MAX_WATCHED_KINDS} kinds")]
    assert scheduler.scheduler.events.watchers == 0  # no watch was left behind


async def test_a_watch_naming_the_most_kinds_allowed_hears_those_it_knows(
    scheduler: EmbeddedScheduler,
) -> None:
    kinds = [pb.WORKER_EVENT_KIND_REGISTERED] * (MAX_WATCHED_KINDS - 1) + [999]  # 999: a kind from the future
    call = stub_of(scheduler).WatchWorkers(pb.WatchWorkersRequest(kinds=kinds), timeout=10)
    try:
        await wait_until(lambda: scheduler.scheduler.events.watchers == 1, timeout=10)
        await stub_of(scheduler).RegisterWorker(request_for("watched"), timeout=10)
        response = await call.read()
    finally:
        call.cancel()

    assert (response.event.kind, response.event.worker_id) == (pb.WORKER_EVENT_KIND_REGISTERED, "watched")


@pytest.mark.parametrize("method", ["GetWorker", "DrainWorker", "ShutdownWorker"])
async def test_an_unknown_hostile_worker_id_is_not_found_with_a_short_message(
    scheduler: EmbeddedScheduler, method: str
) -> None:
    request = getattr(pb, f"{method}Request")(worker_id="a." * 5000 + "=")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(stub_of(scheduler), method)(request, timeout=10)

    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == f"worker '{'a.' * 32}'… (10001 chars) is not registered"


async def test_unregistering_a_hostile_worker_id_is_not_registered(scheduler: EmbeddedScheduler) -> None:
    response = await stub_of(scheduler).UnregisterWorker(
        pb.UnregisterWorkerRequest(worker_id="a." * 5000 + "="), timeout=10
    )

    assert response.status == pb.UNREGISTRATION_STATUS_NOT_REGISTERED


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("UnregisterWorker", "reason"),
        ("DrainWorker", "reason"),
        ("ShutdownWorker", "reason"),
        ("ReportOrphanRemoved", "reason"),
    ],
)
@pytest.mark.parametrize("reason", ["done\x1b[2J", "\x00", "line\nbreak", "\x9b31m", "r" * 1025])
async def test_a_reason_with_control_characters_or_too_long_is_refused_naming_it(
    scheduler: EmbeddedScheduler, method: str, field: str, reason: str
) -> None:
    await scheduler.client().register_worker(make_worker("w-1"))
    request = getattr(pb, f"{method}Request")(worker_id="w-1", reason=reason)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(stub_of(scheduler), method)(request, timeout=10)

    _, status = status_of(raised.value)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations_of(status)] == [field]
    assert [w.worker_id for w in await scheduler.workers()] == ["w-1"]


@pytest.mark.parametrize("value", ["\x00", "a\x1b]8;;http://x\x07b", "\x7f", "\x85", "tab\there"])
async def test_a_label_value_with_a_control_character_is_refused_naming_the_label(
    scheduler: EmbeddedScheduler, value: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub_of(scheduler).RegisterWorker(request_for("w-1", labels={"team": value}), timeout=10)

    _, status = status_of(raised.value)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(status) == [("metadata.labels['team']", "value must not contain control characters")]


# --- one bad entry, on every store, fails only itself -----------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RegistryStore]:
    store: RegistryStore
    if request.param == "sqlite":
        store = await SqliteRegistryStore.open(tmp_path / "registry.db")
    else:
        store = await PostgresRegistryStore.open(request.getfixturevalue("postgres_dsn"), min_size=1)
    try:
        yield store
    finally:
        await store.close()


async def test_a_batch_with_a_huge_incarnation_and_a_nul_label_registers_the_others_on_a_durable_store(
    durable_store: RegistryStore,
) -> None:
    entries = [
        codec.worker_to_request(make_worker("w-1")),
        request_for("w-huge", incarnation=2**63),
        request_for("w-nul", labels={"team": "a\x00b"}),
        codec.worker_to_request(make_worker("w-2")),
        request_for("w-largest", incarnation=MAX_INCARNATION),
    ]
    async with EmbeddedScheduler(store=durable_store) as scheduler:
        response = await stub_of(scheduler).RegisterWorkers(
            pb.RegisterWorkersRequest(workers=entries), timeout=10
        )
        registered = [(w.worker_id, w.incarnation) for w in await scheduler.workers()]

    answers = [
        (r.worker_id, r.status, r.error.code, [v.field for v in r.error.field_violations])
        for r in response.results
    ]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers == [
        ("w-1", pb.REGISTRATION_STATUS_SUCCESS, 0, []),
        ("w-huge", pb.REGISTRATION_STATUS_FAILED, invalid, ["incarnation"]),
        ("w-nul", pb.REGISTRATION_STATUS_FAILED, invalid, ["metadata.labels['team']"]),
        ("w-2", pb.REGISTRATION_STATUS_SUCCESS, 0, []),
        ("w-largest", pb.REGISTRATION_STATUS_SUCCESS, 0, []),
    ]
    assert registered == [("w-1", 0), ("w-2", 0), ("w-largest", MAX_INCARNATION)]


async def test_a_single_registration_with_a_huge_incarnation_is_invalid_argument_on_a_durable_store(
    durable_store: RegistryStore,
) -> None:
    request = request_for("w-huge", incarnation=2**64 - 1)
    async with EmbeddedScheduler(store=durable_store) as scheduler:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_of(scheduler).RegisterWorker(request, timeout=10)
        assert await scheduler.workers() == []

    _, status = status_of(raised.value)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations_of(status) == [
        ("incarnation", f"must be between 0 and {MAX_INCARNATION}, got {2**64 - 1}")
    ]


# --- pages a client accepts ----------------------------------------------------------------------------------

WORKERS = 500


def largest_worker(index: int) -> pb.RegisterWorkerRequest:
    """A worker with the most labels allowed, keys and values at their longest, in 4-byte characters: ~70 KB."""
    labels = {
        f"{j:02d}" + "k" * (MAX_LABEL_KEY_LENGTH - 2): "😀" * MAX_LABEL_VALUE_LENGTH
        for j in range(MAX_LABELS)
    }
    return request_for(f"w-{index:04d}", labels=labels)


async def test_five_hundred_of_the_largest_workers_page_through_a_client_with_its_default_options() -> None:
    async with EmbeddedScheduler() as scheduler:
        stub = stub_of(scheduler)
        for first in range(0, WORKERS, 100):
            batch = pb.RegisterWorkersRequest(workers=[largest_worker(i) for i in range(first, first + 100)])
            response = await stub.RegisterWorkers(batch, timeout=60)
            assert {r.status for r in response.results} == {pb.REGISTRATION_STATUS_SUCCESS}

        listed: list[str] = []
        pages = 0
        async with SchedulerPortClient(scheduler.target) as client:
            token = ""
            while True:
                page = await client.list_workers(page_size=1000, page_token=token, timeout=30)
                listed += [w.worker_id for w in page.workers]
                assert all(len(w.labels) == MAX_LABELS for w in page.workers)
                pages += 1
                token = page.next_page_token
                if not token:
                    break

    record = codec.record_from_request(largest_worker(0), registered_at=utcnow())
    on_the_wire = codec.record_to_proto(record).ByteSize()
    per_page = MAX_PAGE_BYTES // wire_size(record)  # a page stops before the record that takes it past 1 MiB
    assert on_the_wire > 64 * 1024
    assert on_the_wire <= wire_size(record) < on_the_wire + 1024  # the estimate is an upper one, and close
    assert listed == [f"w-{i:04d}" for i in range(WORKERS)]
    assert pages == -(-WORKERS // per_page)


@pytest.mark.parametrize("reason", ["drained\x1b[2J", "r" * 1025])
async def test_an_agent_status_change_with_a_hostile_reason_ends_its_stream_naming_the_field(
    scheduler: EmbeddedScheduler, reason: str
) -> None:
    hello = pb.WorkerHello(
        worker_id="w-1",
        incarnation=1,
        capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=1),
        metadata=pb.WorkerMetadata(worker_type="process"),
    )
    watcher = scheduler.scheduler.events.watch()
    call = stub_of(scheduler).Connect()
    await call.write(pb.ConnectRequest(hello=hello))
    await call.read()
    change = pb.StatusChange(status=pb.WORKER_STATUS_DRAINING, drained=True, reason=reason)
    await call.write(pb.ConnectRequest(status_change=change))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()

    watcher.close()
    _, status = status_of(raised.value)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations_of(status)] == ["status_change.reason"]
    assert [w.status.value for w in await scheduler.workers()] == ["available"]
    reasons = [event.reason async for event in watcher]  # what it received before it was closed
    assert reasons  # the worker's registration and connection at least
    assert reason not in reasons


async def test_a_list_filter_with_a_nul_label_value_matches_nothing_on_a_durable_store(
    durable_store: RegistryStore,
) -> None:
    async with EmbeddedScheduler(store=durable_store) as scheduler:
        await scheduler.client().register_worker(make_worker("w-1", labels={"team": "red"}))
        stub = stub_of(scheduler)
        hostile = await stub.ListWorkers(pb.ListWorkersRequest(labels={"team": "r\x00ed"}), timeout=10)
        plain = await stub.ListWorkers(pb.ListWorkersRequest(labels={"team": "red"}), timeout=10)

    assert [w.worker_id for w in hostile.workers] == []
    assert [w.worker_id for w in plain.workers] == ["w-1"]
