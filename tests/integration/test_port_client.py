"""SchedulerPortClient over real gRPC: every method, every status code, and servers that misbehave."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from hodei import (
    ErrorCode,
    InvalidWorkerData,
    RegistrationCancelled,
    SchedulerError,
    SchedulerInternalError,
    SchedulerPortClient,
    SchedulerUnavailable,
    UnregistrationStatus,
    WorkerFilter,
    WorkerNotFound,
    WorkerStatus,
    WorkerType,
)
from hodei.errors import SchedulerOverloaded as Overloaded
from hodei.pools import Requirements
from hodei.server._interception import MethodInterceptor, with_behaviour
from hodei.testing import EmbeddedScheduler, FailingScheduler
from hodei.transport._codec import pb, pb_grpc
from hodei.transport._status import STATUS_DETAILS_KEY, status_trailer
from tests.helpers import KIND_BY_CODE, free_port, make_worker

# What the port client must raise for each code a scheduler can answer (OK is not an error).
EXPECTED_KIND = {code: kind for code, kind in KIND_BY_CODE.items() if code is not ErrorCode.OK}


@pytest.mark.parametrize("code", sorted(EXPECTED_KIND))
async def test_each_status_code_maps_to_its_error_kind_keeping_code_and_message(code: ErrorCode) -> None:
    failing = FailingScheduler(1, code=code, message=f"boom {code.name}")
    async with failing as scheduler, SchedulerPortClient(scheduler.target) as client:
        with pytest.raises(SchedulerError) as raised:
            await client.register_worker(make_worker("w-1"))

    assert type(raised.value) is EXPECTED_KIND[code]
    assert raised.value.code is code
    assert raised.value.message == f"boom {code.name}"
    assert raised.value.worker_id == "w-1"
    assert isinstance(raised.value.__cause__, grpc.aio.AioRpcError)


async def test_client_owns_a_channel_it_made_and_closes_it_once() -> None:
    async with EmbeddedScheduler() as scheduler:
        client = SchedulerPortClient(scheduler.target)
        assert client.target == scheduler.target
        await client.register_worker(make_worker())
        await client.close()
        await client.close()  # idempotent

        with pytest.raises(RegistrationCancelled, match="closed"):
            await client.get_worker("test-worker")


async def test_client_leaves_a_channel_it_was_given_open() -> None:
    async with EmbeddedScheduler() as scheduler:
        channel = scheduler.channel()
        async with SchedulerPortClient(channel) as client:
            await client.register_worker(make_worker())

        async with SchedulerPortClient(channel) as again:
            assert await again.get_worker("test-worker") is not None


async def test_every_method_round_trips_through_a_real_scheduler() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as client:
        receipt = await client.register_worker(make_worker("a", labels={"zone": "x"}, pool="gpu"))
        batch = await client.register_workers([make_worker("b"), make_worker("c", cpu_cores=0)])
        got = await client.get_worker("a")
        page = await client.list_workers(WorkerFilter(labels={"zone": "x"}), page_size=10)
        all_workers = await client.list_workers()
        removed = await client.unregister_worker("a")
        missing = await client.get_worker("a")

    assert receipt.created and receipt.record.status is WorkerStatus.AVAILABLE
    assert receipt.record.pool == "gpu" and receipt.record.labels == {"zone": "x"}
    assert not isinstance(batch[0], SchedulerError) and batch[0].record.worker_id == "b"
    assert isinstance(batch[1], InvalidWorkerData)
    assert batch[1].worker_id == "c"
    assert [v.field for v in batch[1].violations] == ["capabilities.cpu_cores"]
    assert got is not None and got.worker_type is WorkerType.DOCKER and got.registered_at is not None
    assert [w.worker_id for w in page.workers] == ["a"] and page.next_page_token == ""
    assert [w.worker_id for w in all_workers.workers] == ["a", "b"]
    assert removed is UnregistrationStatus.SUCCESS
    assert missing is None


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("RegisterWorkers", lambda c: c.register_workers([make_worker()])),
        ("UnregisterWorker", lambda c: c.unregister_worker("w")),
        ("GetWorker", lambda c: c.get_worker("w")),
        ("ListWorkers", lambda c: c.list_workers()),
    ],
)
async def test_failed_calls_of_every_method_raise_the_mapped_error(
    method: str, call: Callable[[SchedulerPortClient], Any]
) -> None:
    async with (
        FailingScheduler(1, methods={method}) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
    ):
        with pytest.raises(SchedulerUnavailable):
            await call(client)
        assert scheduler.failed_calls == 1


async def test_retry_info_is_read_from_the_status_details() -> None:
    async with (
        FailingScheduler(1, code=ErrorCode.RESOURCE_EXHAUSTED, retry_after=1.25) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
    ):
        with pytest.raises(Overloaded) as raised:
            await client.register_worker(make_worker())

    assert raised.value.retry_after == 1.25


class MisbehavingServicer(pb_grpc.SchedulerServiceServicer):
    """A scheduler that breaks the contract in the ways a buggy or foreign server might."""

    def __init__(self, trailer: tuple[tuple[str, Any], ...] = ()) -> None:
        self.trailer = trailer

    async def RegisterWorkers(self, request: Any, context: Any) -> Any:
        return pb.RegisterWorkersResponse(results=[])  # one result short per worker

    async def UnregisterWorker(self, request: Any, context: Any) -> Any:
        return pb.UnregisterWorkerResponse(status=pb.UNREGISTRATION_STATUS_UNSPECIFIED)

    async def RegisterWorker(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "", trailing_metadata=self.trailer)


@pytest_asyncio.fixture
async def misbehaving() -> AsyncIterator[Callable[..., Any]]:
    servers: list[grpc.aio.Server] = []

    async def start(servicer: pb_grpc.SchedulerServiceServicer) -> str:
        server = grpc.aio.server()
        pb_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(0)


async def test_batch_answer_with_the_wrong_number_of_results_is_an_internal_error(
    misbehaving: Callable[..., Any],
) -> None:
    async with SchedulerPortClient(await misbehaving(MisbehavingServicer())) as client:
        with pytest.raises(SchedulerInternalError, match="0 results for 2 workers"):
            await client.register_workers([make_worker("a"), make_worker("b")])


async def test_unknown_unregistration_status_is_an_internal_error(misbehaving: Callable[..., Any]) -> None:
    async with SchedulerPortClient(await misbehaving(MisbehavingServicer())) as client:
        with pytest.raises(SchedulerInternalError, match="unknown unregistration status 0"):
            await client.unregister_worker("a")


async def test_unreadable_status_details_keep_the_code_and_fall_back_to_the_code_name(
    misbehaving: Callable[..., Any],
) -> None:
    trailer = (("other-key-bin", b"\x00"), (STATUS_DETAILS_KEY, b"\xff\xff not a status"))
    async with SchedulerPortClient(await misbehaving(MisbehavingServicer(trailer))) as client:
        with pytest.raises(InvalidWorkerData) as raised:
            await client.register_worker(make_worker())

    assert raised.value.message == "INVALID_ARGUMENT"
    assert raised.value.violations == ()
    assert raised.value.retry_after is None


async def test_status_details_of_unknown_types_are_ignored(misbehaving: Callable[..., Any]) -> None:
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2

    unknown = any_pb2.Any()
    unknown.Pack(error_details_pb2.DebugInfo(detail="stack"))
    status = status_pb2.Status(code=3, message="x", details=[unknown])
    trailer = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    async with SchedulerPortClient(await misbehaving(MisbehavingServicer(trailer))) as client:
        with pytest.raises(InvalidWorkerData) as raised:
            await client.register_worker(make_worker())

    assert raised.value.violations == ()


def test_an_error_without_details_needs_no_trailer() -> None:
    assert status_trailer(SchedulerUnavailable("down")) == ()


async def test_drain_and_shutdown_of_a_worker_without_an_agent_are_not_delivered() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as client:
        await client.register_worker(make_worker("w-1"))

        drain = await client.drain_worker("w-1", deadline=1.5, reason="maintenance")
        delivered = await client.shutdown_worker("w-1", reason="bye")

        assert (drain.delivered, drain.record.status, drain.record.drained) == (
            False,
            WorkerStatus.DRAINING,
            False,
        )
        assert delivered is False


async def test_drain_and_shutdown_of_an_unknown_worker_are_not_found() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as client:
        with pytest.raises(WorkerNotFound):
            await client.drain_worker("nobody")
        with pytest.raises(WorkerNotFound):
            await client.shutdown_worker("nobody")


async def test_watch_sends_a_snapshot_then_live_events_until_the_scheduler_stops() -> None:
    from hodei.lifecycle import WorkerEventKind

    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as client:
        await client.register_worker(make_worker("w-1"))
        events = client.watch_workers(include_snapshot=True)
        first = await anext(events)
        await client.register_worker(make_worker("w-2"))
        second = await anext(events)
        await scheduler.stop()  # ends the stream: the iteration ends with it
        rest = [event async for event in events]

    assert (first.kind, first.worker_id, first.record is not None) == (WorkerEventKind.SNAPSHOT, "w-1", True)
    assert (second.kind, second.worker_id) == (WorkerEventKind.REGISTERED, "w-2")
    assert second.sequence == first.sequence + 1
    assert rest == []


async def test_watch_on_a_closed_client_is_cancelled() -> None:
    client = SchedulerPortClient("127.0.0.1:1")
    await client.close()

    with pytest.raises(RegistrationCancelled):
        await anext(client.watch_workers())


async def test_watch_of_an_unreachable_scheduler_raises_unavailable() -> None:
    # Nothing listens there, and no server started by another test can get it: a port below the kernel's
    # ephemeral range (one that a bind to port 0 hands out again could be a later test's scheduler, whose
    # client would then share this one's failed connection, in gRPC's pool of connections per address).
    async with SchedulerPortClient(f"127.0.0.1:{free_port()}") as client:
        with pytest.raises(SchedulerUnavailable):
            await anext(client.watch_workers())


class UnknownEventsServicer(pb_grpc.SchedulerServiceServicer):
    async def WatchWorkers(self, request: Any, context: Any) -> Any:
        yield pb.WatchWorkersResponse(event=pb.WorkerEvent(sequence=1, kind=99, worker_id="future"))
        yield pb.WatchWorkersResponse(
            event=pb.WorkerEvent(sequence=2, kind=pb.WORKER_EVENT_KIND_REGISTERED, worker_id="w")
        )


async def test_watch_skips_event_kinds_from_a_newer_scheduler(misbehaving: Callable[..., Any]) -> None:
    async with SchedulerPortClient(await misbehaving(UnknownEventsServicer())) as client:
        events = [event async for event in client.watch_workers()]

    assert [(e.sequence, e.worker_id) for e in events] == [(2, "w")]


async def test_batch_receipts_hold_the_full_record_whether_or_not_the_answer_was_slim() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as client:
        await scheduler.add_worker(dataclasses.replace(make_worker("kept"), incarnation=7))
        sent = [
            make_worker("fresh", labels={"zone": "b"}, pool=""),
            make_worker("kept", labels={"from": "push"}),
        ]

        fresh, kept = await client.register_workers(sent)

        assert not isinstance(fresh, SchedulerError) and not isinstance(kept, SchedulerError)
        assert fresh.record == await scheduler.get_worker("fresh")
        assert fresh.record.pool == "default" and fresh.record.labels == {"zone": "b"}
        assert kept.record == await scheduler.get_worker("kept")
        assert kept.record.incarnation == 7 and kept.record.labels == {}


class SlimAsked(MethodInterceptor):
    """Records, for each RegisterWorker call, whether it asked for a slim answer and whether it got one."""

    def __init__(self) -> None:
        super().__init__({"RegisterWorker"})
        self.calls: list[tuple[bool, bool]] = []

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        serve = handler.unary_unary

        async def recorded(request: pb.RegisterWorkerRequest, context: Any) -> pb.RegisterWorkerResponse:
            response: pb.RegisterWorkerResponse = await serve(request, context)
            self.calls.append((request.slim_answer, not response.worker.HasField("metadata")))
            return response

        return with_behaviour(handler, recorded)


async def test_single_receipts_hold_the_full_record_though_the_answer_leaves_out_what_was_sent() -> None:
    asked = SlimAsked()
    async with (
        EmbeddedScheduler(interceptors=[asked]) as scheduler,
        SchedulerPortClient(scheduler.target) as client,
    ):
        await scheduler.add_worker(dataclasses.replace(make_worker("kept"), incarnation=7))
        fresh = await client.register_worker(make_worker("fresh", labels={"zone": "b"}, pool=""))
        busy = make_worker("busy", labels={"zone": "c"})
        await client.register_worker(busy)
        acquired = await client.acquire_worker("job-1", Requirements(labels={"zone": "c"}))
        refreshed = await client.register_worker(busy)
        after_refresh = await scheduler.get_worker("busy")
        [in_batch] = await client.register_workers([busy])
        after_batch = await scheduler.get_worker("busy")
        kept = await client.register_worker(make_worker("kept", labels={"from": "push"}))

        assert fresh.record == await scheduler.get_worker("fresh")
        assert fresh.record.pool == "default" and fresh.record.labels == {"zone": "b"} and fresh.created
        # A refresh of a worker bound to a job keeps the job; the receipt says so, alone or in a batch.
        assert refreshed.record == after_refresh and not refreshed.created
        assert not isinstance(in_batch, SchedulerError) and in_batch.record == after_batch
        for receipt in (refreshed, in_batch):
            assert receipt.record.assignment == acquired.assignment and receipt.record.use_count == 1
            assert receipt.record.status is WorkerStatus.BUSY
        assert kept.record == await scheduler.get_worker("kept")
        assert kept.record.incarnation == 7 and kept.record.labels == {}
        # Every call asked; all were answered slim but the one kept from the agent's registration.
        assert asked.calls == [(True, True), (True, True), (True, True), (True, False)]


async def test_a_worker_the_wire_cannot_hold_is_refused_alone_and_the_rest_of_its_batch_registers() -> None:
    async with EmbeddedScheduler() as scheduler, SchedulerPortClient(scheduler.target) as client:
        huge = make_worker("huge", cpu_cores=2**40)

        outcomes = await client.register_workers([huge, make_worker("fine")])
        with pytest.raises(InvalidWorkerData) as single:
            await client.register_worker(huge)
        only_invalid = await client.register_workers([huge])

        assert isinstance(outcomes[0], InvalidWorkerData)
        assert [v.field for v in outcomes[0].violations] == ["capabilities.cpu_cores"]
        assert not isinstance(outcomes[1], SchedulerError) and outcomes[1].record.worker_id == "fine"
        assert [v.field for v in single.value.violations] == ["capabilities.cpu_cores"]
        assert len(only_invalid) == 1 and isinstance(only_invalid[0], InvalidWorkerData)
        assert [w.worker_id for w in await scheduler.workers()] == ["fine"]
