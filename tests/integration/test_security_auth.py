"""Tokens on a real scheduler (grpc.aio on loopback): who may call what, and that no refusal changes anything.

Each refusal is checked for its code, and for the registry left as it was.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei import ErrorCode, UnregistrationStatus, WorkerRegistrationAdapter, WorkerStatus
from hodei.domain import DynamicWorker, DynamicWorkerConfig, WorkerType, utcnow
from hodei.errors import AccessDenied, RegistrationFailed, SchedulerError
from hodei.registration import RegistrationConfig
from hodei.security import AccessPolicy, SchedulerSecurity, TokenAuthority, authorization_metadata
from hodei.testing import EmbeddedScheduler
from hodei.transport._codec import pb, pb_grpc
from hodei.transport._stream import ConnectStream
from tests.helpers import AttemptRecordingClient, make_worker

SECRET = b"k" * 48
OTHER_SECRET = b"o" * 48


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(SECRET)


@pytest_asyncio.fixture
async def scheduler(authority: TokenAuthority) -> AsyncIterator[EmbeddedScheduler]:
    async with EmbeddedScheduler(security=SchedulerSecurity(access=AccessPolicy(authority))) as embedded:
        yield embedded


@pytest.fixture
def operator(authority: TokenAuthority) -> str:
    return authority.mint_operator_token("ops")


async def refused(call: object) -> SchedulerError:
    assert callable(call)
    with pytest.raises(SchedulerError) as raised:
        await call()
    return raised.value


async def registered_ids(scheduler: EmbeddedScheduler) -> list[str]:
    return [record.worker_id for record in await scheduler.workers()]


def expired_join_token(worker_id: str) -> str:
    """A join token of the scheduler's key that expired an hour ago."""
    past = TokenAuthority(SECRET, clock=lambda: utcnow() - timedelta(hours=2))
    return past.mint_join_token(worker_id, ttl=60)


def forged_join_token(authority: TokenAuthority, worker_id: str) -> str:
    """A join token for ``worker_id`` made from a genuine one for another worker: its payload changed, its
    signature kept."""
    import base64
    import json

    header, payload, signature = authority.mint_join_token("someone-else", ttl=60).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    encoded = base64.urlsafe_b64encode(json.dumps(claims | {"sub": worker_id}).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


# --- registration: every way of not being allowed ---------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("no token", ErrorCode.UNAUTHENTICATED),
        ("garbage", ErrorCode.UNAUTHENTICATED),
        ("expired", ErrorCode.UNAUTHENTICATED),
        ("another key", ErrorCode.UNAUTHENTICATED),
        ("forged payload", ErrorCode.UNAUTHENTICATED),
        ("for another worker", ErrorCode.PERMISSION_DENIED),
        ("credential of another worker", ErrorCode.PERMISSION_DENIED),
    ],
)
async def test_registration_without_a_valid_token_for_its_worker_is_refused_and_changes_nothing(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, case: str, code: ErrorCode
) -> None:
    token = {
        "no token": None,
        "garbage": "not-a-token",
        "expired": expired_join_token("w-1"),
        "another key": TokenAuthority(OTHER_SECRET).mint_join_token("w-1", ttl=60),
        "forged payload": forged_join_token(authority, "w-1"),
        "for another worker": authority.mint_join_token("w-2", ttl=60),
        "credential of another worker": authority.mint_worker_credential("w-2"),
    }[case]

    error = await refused(lambda: scheduler.client(credential=token).register_worker(make_worker("w-1")))

    assert type(error) is AccessDenied
    assert error.code is code
    assert await registered_ids(scheduler) == []
    if token is not None:
        assert token not in error.message


async def test_a_join_token_registers_its_worker_once_and_a_replay_is_unauthenticated(
    scheduler: EmbeddedScheduler, authority: TokenAuthority
) -> None:
    token = authority.mint_join_token("w-1", ttl=60)
    client = scheduler.client(credential=token)

    receipt = await client.register_worker(replace(make_worker("w-1"), incarnation=1))
    await scheduler.scheduler.unregister("w-1")
    # The worker restarted (a new incarnation): a new registration, which a spent token does not admit.
    replay = await refused(lambda: client.register_worker(replace(make_worker("w-1"), incarnation=2)))

    assert receipt.record.worker_id == "w-1"
    assert authority.verify_worker_credential(receipt.credential, worker_id="w-1").worker_id == "w-1"
    assert "credential" not in repr(receipt) and receipt.credential not in repr(receipt)
    assert replay.code is ErrorCode.UNAUTHENTICATED
    assert replay.message == "join token already used"
    assert await registered_ids(scheduler) == []


async def test_a_join_token_binding_a_pool_refuses_another_pool(
    scheduler: EmbeddedScheduler, authority: TokenAuthority
) -> None:
    token = authority.mint_join_token("w-1", ttl=60, pool="gpu")

    error = await refused(lambda: scheduler.client(credential=token).register_worker(make_worker("w-1")))
    receipt = await scheduler.client(credential=token).register_worker(make_worker("w-1", pool="gpu"))

    assert error.code is ErrorCode.PERMISSION_DENIED
    assert receipt.record.pool == "gpu"


async def test_an_invalid_registration_does_not_spend_the_join_token(
    scheduler: EmbeddedScheduler, authority: TokenAuthority
) -> None:
    token = authority.mint_join_token("w-1", ttl=60)
    client = scheduler.client(credential=token)

    invalid = await refused(lambda: client.register_worker(make_worker("w-1", cpu_cores=0)))
    receipt = await client.register_worker(make_worker("w-1"))

    assert invalid.code is ErrorCode.INVALID_ARGUMENT
    assert receipt.created


async def test_a_worker_credential_registers_and_unregisters_its_own_worker_only(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, operator: str
) -> None:
    await scheduler.client(credential=operator).register_worker(make_worker("w-2"))
    client = scheduler.client(credential=authority.mint_worker_credential("w-1"))

    await client.register_worker(make_worker("w-1"))
    other = await refused(lambda: client.unregister_worker("w-2"))
    own = await client.unregister_worker("w-1")

    assert other.code is ErrorCode.PERMISSION_DENIED
    assert own is UnregistrationStatus.SUCCESS
    assert await registered_ids(scheduler) == ["w-2"]


@pytest.mark.parametrize("kind", ["join token", "worker credential"])
async def test_a_worker_s_token_may_not_do_what_only_operators_do(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, operator: str, kind: str
) -> None:
    await scheduler.client(credential=operator).register_worker(make_worker("w-2"))
    token = (
        authority.mint_join_token("w-1", ttl=60)
        if kind == "join token"
        else authority.mint_worker_credential("w-1")
    )
    client = scheduler.client(credential=token)
    calls = {
        "RegisterWorkers": lambda: client.register_workers([make_worker("w-1")]),
        "GetWorker": lambda: client.get_worker("w-2"),
        "ListWorkers": lambda: client.list_workers(),
        "DrainWorker": lambda: client.drain_worker("w-2"),
        "ShutdownWorker": lambda: client.shutdown_worker("w-2"),
        "ReportOrphanRemoved": lambda: client.report_orphan_removed("w-3"),
        "WatchWorkers": lambda: anext(client.watch_workers(include_snapshot=True)),
    }

    codes = {name: (await refused(call)).code for name, call in calls.items()}

    assert codes == dict.fromkeys(calls, ErrorCode.PERMISSION_DENIED)
    assert (await scheduler.get_worker("w-2")) is not None
    assert (await scheduler.get_worker("w-2")).status is WorkerStatus.AVAILABLE  # type: ignore[union-attr]
    assert await registered_ids(scheduler) == ["w-2"]


async def test_a_join_token_may_not_unregister_even_its_own_worker(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, operator: str
) -> None:
    await scheduler.client(credential=operator).register_worker(make_worker("w-1"))

    error = await refused(
        lambda: scheduler.client(credential=authority.mint_join_token("w-1", ttl=60)).unregister_worker("w-1")
    )

    assert error.code is ErrorCode.PERMISSION_DENIED
    assert await registered_ids(scheduler) == ["w-1"]


async def test_an_operator_may_do_everything(scheduler: EmbeddedScheduler, operator: str) -> None:
    client = scheduler.client(credential=operator)

    await client.register_worker(make_worker("w-1"))
    batch = await client.register_workers([make_worker("w-2"), make_worker("w-3")])
    drained = await client.drain_worker("w-1")
    listed = await client.list_workers()
    watched = await anext(client.watch_workers(include_snapshot=True))
    await client.report_orphan_removed("w-9")
    unregistered = await client.unregister_worker("w-2")

    assert all(not isinstance(outcome, SchedulerError) for outcome in batch)
    assert drained.record.status is WorkerStatus.DRAINING
    assert [w.worker_id for w in listed.workers] == ["w-1", "w-2", "w-3"]
    assert watched.worker_id == "w-1"
    assert unregistered is UnregistrationStatus.SUCCESS
    assert await registered_ids(scheduler) == ["w-1", "w-3"]


async def test_the_operator_s_registration_hands_back_no_worker_credential(
    scheduler: EmbeddedScheduler, operator: str
) -> None:
    receipt = await scheduler.client(credential=operator).register_worker(make_worker("w-1"))

    assert receipt.credential == ""


async def test_an_oversized_request_without_a_token_is_refused_unread_as_unauthenticated(
    scheduler: EmbeddedScheduler,
) -> None:
    # 5 MB of labels: refused at the door, before gRPC takes the request in.
    labels = {f"k{i:02}": "v" * 256 for i in range(64)}
    workers = [make_worker(f"w-{i:04}", labels=labels) for i in range(250)]

    error = await refused(lambda: scheduler.client().register_workers(workers))

    assert error.code is ErrorCode.UNAUTHENTICATED
    assert await registered_ids(scheduler) == []


async def test_health_checks_need_no_token(scheduler: EmbeddedScheduler) -> None:
    response = await health_pb2_grpc.HealthStub(scheduler.channel()).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_bearer_scheme_in_any_case_is_read_and_another_scheme_is_unauthenticated(
    scheduler: EmbeddedScheduler, operator: str
) -> None:
    stub = pb_grpc.SchedulerServiceStub(scheduler.channel())  # type: ignore[no-untyped-call]
    request = pb.ListWorkersRequest()

    await stub.ListWorkers(request, metadata=(("authorization", f"bearer {operator}"),), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListWorkers(request, metadata=(("authorization", f"Basic {operator}"),), timeout=5)

    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


# --- the adapter does not retry refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "UNAUTHENTICATED"), ("join-for-w-2", "PERMISSION_DENIED")],
)
async def test_the_adapter_makes_one_attempt_when_the_credential_is_refused(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, token: str | None, code: str
) -> None:
    credential = authority.mint_join_token("w-2", ttl=60) if token else None
    client = AttemptRecordingClient(scheduler.target, credential=credential)
    adapter = WorkerRegistrationAdapter(client, RegistrationConfig(max_retries=5, base_backoff=0.01))
    try:
        with pytest.raises(RegistrationFailed) as raised:
            await adapter.register_worker(make_worker("w-1"))
    finally:
        await client.close()

    assert client.attempts == [code]
    assert (raised.value.attempts, raised.value.code.name) == (1, code)


async def test_the_adapter_makes_one_attempt_for_a_batch_an_agent_s_token_may_not_send(
    scheduler: EmbeddedScheduler, authority: TokenAuthority
) -> None:
    client = AttemptRecordingClient(scheduler.target, credential=authority.mint_worker_credential("w-1"))
    adapter = WorkerRegistrationAdapter(client, RegistrationConfig(max_retries=5, base_backoff=0.01))
    try:
        results = await adapter.register_workers_batch([make_worker("w-1"), make_worker("w-2")])
    finally:
        await client.close()

    assert client.attempts == ["PERMISSION_DENIED"]
    assert [(r.ok, r.attempts, r.error.code.name if r.error else "") for r in results] == [
        (False, 1, "PERMISSION_DENIED"),
        (False, 1, "PERMISSION_DENIED"),
    ]


# --- the agent's stream ------------------------------------------------------------------------------------


def agent_worker(worker_id: str, incarnation: int = 1) -> DynamicWorker:
    return DynamicWorker(worker_id, WorkerType.PROCESS, DynamicWorkerConfig(), incarnation=incarnation)


def connect(scheduler: EmbeddedScheduler, token: str | None) -> ConnectStream:
    """A Connect stream presenting ``token`` (nothing when None)."""
    return ConnectStream(scheduler.channel(), metadata=authorization_metadata(token) if token else ())


async def test_a_hello_with_a_join_token_gets_a_credential_that_reconnects_and_the_token_cannot_be_replayed(
    scheduler: EmbeddedScheduler, authority: TokenAuthority
) -> None:
    token = authority.mint_join_token("w-1", ttl=60)

    first = connect(scheduler, token)
    ack = await first.open(agent_worker("w-1", 1), timeout=5)
    first.cancel()
    again = connect(scheduler, ack.credential)
    second = await again.open(agent_worker("w-1", 2), timeout=5)
    replay = connect(scheduler, token)
    error = await refused(lambda: replay.open(agent_worker("w-1", 3), timeout=5))
    again.cancel()

    assert ack.created and ack.credential
    assert authority.verify_worker_credential(ack.credential, worker_id="w-1").worker_id == "w-1"
    renewed = authority.verify_worker_credential(second.credential, worker_id="w-1")  # renewed at the hello
    assert second.credential != ack.credential
    assert renewed.expires_at is not None
    assert renewed.expires_at - renewed.issued_at == timedelta(days=7)
    assert ack.credential not in repr(ack)
    assert error.code is ErrorCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("no token", ErrorCode.UNAUTHENTICATED),
        ("expired", ErrorCode.UNAUTHENTICATED),
        ("for another worker", ErrorCode.PERMISSION_DENIED),
        ("credential of another worker", ErrorCode.PERMISSION_DENIED),
    ],
)
async def test_a_hello_without_a_valid_token_for_its_worker_is_refused_and_changes_nothing(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, case: str, code: ErrorCode
) -> None:
    token = {
        "no token": None,
        "expired": expired_join_token("w-1"),
        "for another worker": authority.mint_join_token("w-2", ttl=60),
        "credential of another worker": authority.mint_worker_credential("w-2"),
    }[case]
    stream = connect(scheduler, token)

    error = await refused(lambda: stream.open(agent_worker("w-1"), timeout=5))

    assert error.code is code
    assert await registered_ids(scheduler) == []
    assert scheduler.scheduler.sessions == {}


async def test_a_refused_hello_reports_the_refusal_even_when_grpc_then_overwrites_the_status(
    scheduler: EmbeddedScheduler,
) -> None:
    """grpc.aio marks a call INTERNAL "Internal error from Core" when a write fails because the server has
    just ended it (grpc/grpc#36066): under load, the hello's write loses that race to the refusal now and then.
    Here the overwrite is made to happen every time, as grpc.aio does it."""
    stream = connect(scheduler, None)
    call = stream._call  # the call grpc.aio overwrites
    assert await call.code() is grpc.StatusCode.UNAUTHENTICATED  # the refusal has arrived
    call._cython_call.set_internal_error("a write failed as the call ended")

    error = await refused(lambda: stream.open(agent_worker("w-1"), timeout=5))

    assert error.code is ErrorCode.UNAUTHENTICATED
    assert error.message == "no credential"


async def test_a_scheduler_that_renews_credentials_hands_a_fresh_one_with_each_hello(
    authority: TokenAuthority,
) -> None:
    security = SchedulerSecurity(access=AccessPolicy(authority, worker_credential_ttl=3600))
    async with EmbeddedScheduler(security=security) as scheduler:
        credential = authority.mint_worker_credential("w-1", ttl=60)
        stream = connect(scheduler, credential)
        ack = await stream.open(agent_worker("w-1"), timeout=5)
        stream.cancel()

    claims = authority.verify_worker_credential(ack.credential, worker_id="w-1")
    assert ack.credential != credential
    assert claims.expires_at is not None
    assert claims.expires_at - claims.issued_at == timedelta(seconds=3600)


# --- a credential keeps its join token's binding -------------------------------------------------------------


def bound_agent(pool: str, labels: dict[str, str], incarnation: int) -> DynamicWorker:
    config = DynamicWorkerConfig(pool=pool, labels=labels)
    return DynamicWorker("w-1", WorkerType.PROCESS, config, incarnation=incarnation)


@pytest.mark.parametrize(
    ("pool", "labels", "message"),
    [
        ("release", {"os": "linux"}, "worker credential is bound to another pool"),
        ("untrusted", {"os": "linux", "trusted": "yes"}, "worker credential is bound to other labels"),
    ],
)
async def test_a_credential_from_a_token_bound_to_a_pool_cannot_hello_or_register_outside_it(
    scheduler: EmbeddedScheduler, authority: TokenAuthority, pool: str, labels: dict[str, str], message: str
) -> None:
    token = authority.mint_join_token("w-1", ttl=60, pool="untrusted", labels={"os": "linux"})
    joined = connect(scheduler, token)
    ack = await joined.open(bound_agent("untrusted", {"os": "linux"}, 1), timeout=5)
    joined.cancel()

    hello = connect(scheduler, ack.credential)
    by_hello = await refused(lambda: hello.open(bound_agent(pool, labels, 2), timeout=5))
    client = scheduler.client(credential=ack.credential)
    by_register = await refused(lambda: client.register_worker(bound_agent(pool, labels, 3)))
    within = connect(scheduler, ack.credential)
    rejoined = await within.open(bound_agent("untrusted", {"os": "linux"}, 4), timeout=5)
    within.cancel()
    record = await scheduler.get_worker("w-1")

    for error in (by_hello, by_register):
        assert (type(error), error.code) == (AccessDenied, ErrorCode.PERMISSION_DENIED)
        assert error.message.startswith(message)
    assert record is not None
    assert (record.pool, dict(record.labels), record.incarnation) == ("untrusted", {"os": "linux"}, 4)
    carried = authority.verify_worker_credential(rejoined.credential, worker_id="w-1")
    assert (carried.pool, carried.labels) == ("untrusted", {"os": "linux"})
