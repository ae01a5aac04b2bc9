"""Fuzzed input against a real scheduler on loopback: whatever a client sends, the scheduler answers as its domain
judges it, names the fields it refuses, leaves its registry untouched by what it refuses, and stays healthy.

One :class:`EmbeddedScheduler` serves the whole module, on an event loop the module owns; each example is one
``run_until_complete``. Its registry carries over from example to example, so that registrations meet earlier
ones of the same worker (refreshes, stale incarnations, agent-managed records kept); a model of it, built from
the registry before each call, says what each call must answer.

Examples per property (derandomized: the same examples on every run): :data:`EXAMPLES`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from hodei._violations import cap_violations
from hodei.domain import WorkerCapabilities, WorkerRecord, WorkerType, validate_worker_fields
from hodei.scheduler._paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from hodei.testing import EmbeddedScheduler
from hodei.transport import _codec as codec
from hodei.transport._codec import SERVICE_NAME, pb, pb_grpc
from tests.fuzz import strategies as fuzz

EXAMPLES = {
    "register_worker": 800,
    "register_workers": 300,
    "undecodable_bytes": 800,
    "list_workers": 200,
}

T = TypeVar("T")
CALL_TIMEOUT = 10.0


def fuzzing(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Served:
    """The scheduler, the event loop it runs on, and the stubs that talk to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, scheduler: EmbeddedScheduler) -> None:
        self.loop = loop
        self.scheduler = scheduler
        channel = scheduler.channel()
        self.stub = pb_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
        self.health = health_pb2_grpc.HealthStub(channel)
        self.raw = {method: self.raw_call(method) for method in ("RegisterWorker", "RegisterWorkers")}

    def raw_call(self, method: str) -> Callable[..., Awaitable[bytes]]:
        """A unary call of ``method`` that sends and returns bytes as they are."""
        call = self.scheduler.channel().unary_unary(
            f"/{SERVICE_NAME}/{method}", request_serializer=None, response_deserializer=None
        )
        return cast(Callable[..., Awaitable[bytes]], call)

    def run(self, check: Callable[[Served], Awaitable[T]]) -> T:
        return self.loop.run_until_complete(check(self))

    async def records(self) -> dict[str, WorkerRecord]:
        return {record.worker_id: record for record in await self.scheduler.workers()}

    async def assert_healthy(self) -> None:
        for service in ("", SERVICE_NAME):
            answer = await self.health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    loop = asyncio.new_event_loop()

    async def start() -> Served:
        return Served(loop, await EmbeddedScheduler.new())

    server = loop.run_until_complete(start())
    try:
        yield server
    finally:
        loop.run_until_complete(server.scheduler.stop())
        loop.close()


# -- the model ---------------------------------------------------------------------------------------------------


M = TypeVar("M", bound=Message)


def as_received(message: M) -> M:
    """The message as the server reads it from the wire. Labels are a map: the domain names bad labels in the
    order the parser gives, which for a message built in Python may differ from the builder's order."""
    return type(message).FromString(message.SerializeToString())


def expected_violations(request: pb.RegisterWorkerRequest) -> list[str]:
    """The fields the domain's validation names for this request (as parsed from the wire), in its order, as
    an error lists them."""
    metadata = request.metadata
    caps = request.capabilities
    found = validate_worker_fields(
        worker_id=request.worker_id,
        worker_type=metadata.worker_type,
        capabilities=WorkerCapabilities(caps.cpu_cores, caps.memory_mb, caps.disk_mb, caps.gpu_count)
        if request.HasField("capabilities")
        else None,
        labels=dict(metadata.labels),
        pool=metadata.pool,
        hostname=metadata.hostname,
        agent_version=metadata.agent_version,
        incarnation=request.incarnation,
    )
    return [violation.field for violation in cap_violations(found)]  # the first 20, and a count of the rest


class RegistryModel:
    """What the registry must hold after a sequence of registrations, starting from ``records``: the rule of
    ``hodei.domain.merge_registration`` restated (incarnation 0 is unfenced and never overrides an agent's
    record; a lower incarnation is stale; anything else is written)."""

    def __init__(self, records: dict[str, WorkerRecord]) -> None:
        self.before = records
        self.incarnations = {worker_id: record.incarnation for worker_id, record in records.items()}
        self.written: dict[str, pb.RegisterWorkerRequest] = {}

    def register(self, request: pb.RegisterWorkerRequest) -> tuple[grpc.StatusCode, list[str], bool]:
        """The code this registration must get, the fields it must name, and whether it creates the record."""
        if fields := expected_violations(request):
            return grpc.StatusCode.INVALID_ARGUMENT, fields, False
        stored = self.incarnations.get(request.worker_id)
        if stored is not None and request.incarnation == 0 and stored > 0:
            return grpc.StatusCode.OK, [], False  # kept: the agent's registration wins
        if stored is not None and request.incarnation < stored:
            return grpc.StatusCode.FAILED_PRECONDITION, [], False
        self.incarnations[request.worker_id] = request.incarnation
        self.written[request.worker_id] = request
        return grpc.StatusCode.OK, [], stored is None

    def assert_holds(self, after: dict[str, WorkerRecord]) -> None:
        """Every record not written is exactly as before; every record written says what its request said."""
        assert after.keys() == self.before.keys() | self.written.keys()
        for worker_id, record in after.items():
            request = self.written.get(worker_id)
            if request is None:
                assert record == self.before[worker_id], f"{worker_id!r} changed though nothing was written"
                continue
            metadata, caps = request.metadata, request.capabilities
            assert record.incarnation == request.incarnation
            assert record.worker_type.value == metadata.worker_type
            assert record.capabilities == WorkerCapabilities(
                caps.cpu_cores, caps.memory_mb, caps.disk_mb, caps.gpu_count
            )
            assert dict(record.labels) == dict(metadata.labels)
            assert (record.pool, record.hostname, record.agent_version) == (
                metadata.pool or "default",
                metadata.hostname,
                metadata.agent_version,
            )


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    if status is None:
        return []
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [v.field for v in bad_request.field_violations]
    return fields


async def outcome_of(call: Awaitable[T]) -> tuple[grpc.StatusCode, T | None, list[str]]:
    try:
        return grpc.StatusCode.OK, await call, []
    except grpc.aio.AioRpcError as error:
        return error.code(), None, bad_request_fields(error)


# -- the checks, shared by the typed and the raw calls ------------------------------------------------------------


async def check_register_worker(
    served: Served, request: pb.RegisterWorkerRequest, send: Callable[[], Awaitable[Any]]
) -> None:
    model = RegistryModel(await served.records())
    code, fields, created = model.register(request)
    event(f"answer: {code.name}")

    actual, response, named = await outcome_of(send())

    assert (actual, named) == (code, fields)
    if response is not None:
        if isinstance(response, bytes):
            response = pb.RegisterWorkerResponse.FromString(response)
        assert response.status == pb.REGISTRATION_STATUS_SUCCESS
        assert (response.worker.worker_id, response.created) == (request.worker_id, created)
    model.assert_holds(await served.records())
    await served.assert_healthy()


async def check_register_workers(
    served: Served, request: pb.RegisterWorkersRequest, send: Callable[[], Awaitable[Any]]
) -> None:
    model = RegistryModel(await served.records())
    expected = [model.register(entry) for entry in request.workers]
    refused = sum(code is not grpc.StatusCode.OK for code, _, _ in expected)
    mix = "none refused" if not refused else "all refused" if refused == len(expected) else "mixed"
    event(f"batch: {mix}" if expected else "batch: empty")

    actual, response, named = await outcome_of(send())

    assert (actual, named) == (grpc.StatusCode.OK, [])
    if isinstance(response, bytes):
        response = pb.RegisterWorkersResponse.FromString(response)
    assert response is not None
    assert [r.worker_id for r in response.results] == [entry.worker_id for entry in request.workers]
    for result, (code, fields, created) in zip(response.results, expected, strict=True):
        if code is grpc.StatusCode.OK:
            assert (result.status, result.created) == (pb.REGISTRATION_STATUS_SUCCESS, created), result
        else:
            assert result.status == pb.REGISTRATION_STATUS_FAILED
            assert (result.error.code, [v.field for v in result.error.field_violations]) == (
                code.value[0],
                fields,
            )
    model.assert_holds(await served.records())
    await served.assert_healthy()


# -- the properties ----------------------------------------------------------------------------------------------


@fuzzing("register_worker")
@given(request=fuzz.register_worker_requests)
def test_a_registration_is_answered_as_the_domain_judges_it_and_only_a_valid_one_is_written(
    served: Served, request: pb.RegisterWorkerRequest
) -> None:
    served.run(
        lambda s: check_register_worker(
            s, as_received(request), lambda: s.stub.RegisterWorker(request, timeout=CALL_TIMEOUT)
        )
    )


@fuzzing("register_workers")
@given(request=fuzz.register_workers_requests)
def test_a_batch_registers_exactly_its_valid_entries_and_names_the_fields_of_the_others(
    served: Served, request: pb.RegisterWorkersRequest
) -> None:
    served.run(
        lambda s: check_register_workers(
            s, as_received(request), lambda: s.stub.RegisterWorkers(request, timeout=CALL_TIMEOUT)
        )
    )


@fuzzing("undecodable_bytes")
@given(method=st.sampled_from(["RegisterWorker", "RegisterWorkers"]), body=fuzz.corrupt_bytes)
@example(method="RegisterWorker", body=b"\n\x01\xff")  # worker_id not UTF-8: UNKNOWN before the fix
@example(method="RegisterWorkers", body=b"\xff\xff\xff")  # no wire format at all
def test_bytes_that_are_no_request_are_invalid_argument_never_unknown_and_change_nothing(
    served: Served, method: str, body: bytes
) -> None:
    message_type: type[Message] = (
        pb.RegisterWorkerRequest if method == "RegisterWorker" else pb.RegisterWorkersRequest
    )
    try:
        decoded = message_type.FromString(body)
    except DecodeError:
        decoded = None

    def send(s: Served) -> Callable[[], Awaitable[bytes]]:
        return lambda: s.raw[method](body, timeout=CALL_TIMEOUT)

    async def check(s: Served) -> None:
        if isinstance(decoded, pb.RegisterWorkerRequest):
            await check_register_worker(s, decoded, send(s))
        elif isinstance(decoded, pb.RegisterWorkersRequest) and len(decoded.workers) <= 1000:
            await check_register_workers(s, decoded, send(s))
        else:
            event("undecodable")
            before = await s.records()
            code, _, _ = await outcome_of(send(s)())
            assert (
                code is grpc.StatusCode.INVALID_ARGUMENT
            )  # the spec allows INTERNAL; this server names the fault
            assert await s.records() == before
            await s.assert_healthy()

    served.run(check)


@fuzzing("list_workers")
@given(request=fuzz.list_workers_requests)
def test_a_listing_with_unknown_enum_values_or_types_names_the_field_otherwise_lists_what_matches(
    served: Served, request: pb.ListWorkersRequest
) -> None:
    known_statuses = set(pb.WorkerStatus.values()) - {pb.WORKER_STATUS_UNSPECIFIED}
    known_types = {t.value for t in WorkerType}
    if request.worker_type and request.worker_type not in known_types:
        expected = ["worker_type"]
    elif any(status not in known_statuses for status in request.statuses):
        expected = ["statuses"]
    elif request.page_size < 0:
        expected = ["page_size"]
    else:
        expected = []

    async def check(s: Served) -> None:
        before = await s.records()
        code, response, named = await outcome_of(s.stub.ListWorkers(request, timeout=CALL_TIMEOUT))
        if expected:
            assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, expected)
        else:
            assert code is grpc.StatusCode.OK
            assert response is not None
            worker_filter = codec.filter_from_proto(request)
            matching = [r for r in before.values() if worker_filter.matches(r)]
            limit = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            assert [w.worker_id for w in response.workers] == [r.worker_id for r in matching][:limit]
        assert await s.records() == before
        await s.assert_healthy()

    served.run(check)


# -- every other call with a request that does not parse ---------------------------------------------------------

UNDECODABLE = b"\x08\xff"  # field 1, a varint cut short: no message of any type parses it


@pytest.mark.parametrize(
    "method", ["GetWorker", "UnregisterWorker", "ListWorkers", "DrainWorker", "ShutdownWorker"]
)
def test_an_undecodable_request_to_any_unary_call_is_invalid_argument_naming_its_type(
    served: Served, method: str
) -> None:
    async def check(s: Served) -> None:
        call = s.raw_call(method)
        code, _, _ = await outcome_of(call(UNDECODABLE, timeout=CALL_TIMEOUT))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        await s.assert_healthy()

    served.run(check)


def test_an_undecodable_watch_request_is_invalid_argument(served: Served) -> None:
    async def check(s: Served) -> None:
        channel = s.scheduler.channel()
        watch = channel.unary_stream(
            f"/{SERVICE_NAME}/WatchWorkers", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in watch(UNDECODABLE, timeout=CALL_TIMEOUT):
                pass
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details() == "request is not a valid hodei.scheduler.v1.WatchWorkersRequest"

    served.run(check)


def hello(worker_id: str) -> bytes:
    return pb.ConnectRequest(
        hello=pb.WorkerHello(
            worker_id=worker_id,
            incarnation=1,
            capabilities=pb.WorkerCapabilities(cpu_cores=1, memory_mb=512),
            metadata=pb.WorkerMetadata(worker_type="process"),
        )
    ).SerializeToString()


@pytest.mark.parametrize(
    ("messages", "field"),
    [([b"\x0a\x03\x0a\x01\xff"], "hello"), ([hello("fuzz-agent"), b"\x12\x02\x0a\xff"], "message")],
    ids=["as-the-hello", "after-the-hello"],
)
def test_an_undecodable_stream_message_ends_the_stream_with_invalid_argument_naming_it(
    served: Served, messages: list[bytes], field: str
) -> None:
    async def check(s: Served) -> None:
        connect = s.scheduler.channel().stream_stream(
            f"/{SERVICE_NAME}/Connect", request_serializer=None, response_deserializer=None
        )

        async def send() -> AsyncIterator[bytes]:
            for message in messages:  # the server reads them in order: the bad one ends the stream first
                yield message

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in connect(send(), timeout=CALL_TIMEOUT):
                pass
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(raised.value) == [field]
        await s.assert_healthy()

    served.run(check)
