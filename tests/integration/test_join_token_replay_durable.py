"""A join token is single-use across a restart and across replicas: the registry store remembers it was spent
(``SpentTokens``), not only the memory of the scheduler process that took it. Single use is per worker: the same
worker's call retried after an ambiguous failure (the work done, the answer lost) is no replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from hodei import ErrorCode
from hodei.agent import AgentConfig, WorkerAgent
from hodei.domain import DynamicWorker
from hodei.errors import AccessDenied, SchedulerError
from hodei.lifecycle import WorkerEventKind
from hodei.ports import RegistryStore
from hodei.registration import RegistrationConfig, WorkerRegistrationAdapter
from hodei.security import AccessPolicy, SchedulerSecurity, TokenAuthority
from hodei.stores import PostgresRegistryStore
from hodei.stores._sqlite import SqliteRegistryStore
from hodei.testing import EmbeddedScheduler, FailingScheduler, FaultProxy
from tests.helpers import AttemptRecordingClient, make_worker, wait_until

SECRET = b"r" * 48


def secured() -> SchedulerSecurity:
    """Each scheduler its own authority, so its own in-memory ledger: only the store is shared."""
    return SchedulerSecurity(access=AccessPolicy(TokenAuthority(SECRET)))


def registration(worker_id: str, incarnation: int = 1) -> DynamicWorker:
    """A registration of ``worker_id``'s ``incarnation``: a join token is spent for one of them."""
    return replace(make_worker(worker_id), incarnation=incarnation)


async def replayed(
    scheduler: EmbeddedScheduler, token: str, worker_id: str, incarnation: int = 2
) -> SchedulerError:
    """The refusal of another registration (by default, a restart of the worker) with a token already spent."""
    with pytest.raises(SchedulerError) as caught:
        await scheduler.client(credential=token).register_worker(
            registration(worker_id, incarnation), timeout=5
        )
    return caught.value


async def test_a_join_token_spent_before_a_restart_is_refused_after_it(tmp_path: Path) -> None:
    token = TokenAuthority(SECRET).mint_join_token("w-1", ttl=60)
    path = tmp_path / "registry.db"
    store = await SqliteRegistryStore.open(path)
    async with EmbeddedScheduler(store=store, security=secured()) as first:
        receipt = await first.client(credential=token).register_worker(registration("w-1"), timeout=5)
        await first.scheduler.unregister("w-1")  # gone from the registry: only the spent token remains
    await store.close()  # as the scheduler's process does when it stops: the file is free for its restart

    store = await SqliteRegistryStore.open(path)
    try:
        async with EmbeddedScheduler(store=store, security=secured()) as restarted:
            error = await replayed(restarted, token, "w-1")
            assert await restarted.workers() == []
    finally:
        await store.close()

    assert receipt.record.worker_id == "w-1"
    assert (error.code, error.message) == (ErrorCode.UNAUTHENTICATED, "join token already used")


async def test_a_join_token_spent_on_one_replica_is_refused_by_another(postgres_dsn: str) -> None:
    token = TokenAuthority(SECRET).mint_join_token("w-2", ttl=60)
    one = EmbeddedScheduler(
        store=await PostgresRegistryStore.open(postgres_dsn, min_size=1), security=secured()
    )
    two = EmbeddedScheduler(
        store=await PostgresRegistryStore.open(postgres_dsn, min_size=1), security=secured()
    )
    async with one, two:
        await one.client(credential=token).register_worker(registration("w-2"), timeout=5)
        error = await replayed(two, token, "w-2")
        other = TokenAuthority(SECRET).mint_join_token("w-3", ttl=60)
        fresh = await two.client(credential=other).register_worker(registration("w-3"), timeout=5)

    assert (error.code, error.message) == (ErrorCode.UNAUTHENTICATED, "join token already used")
    assert fresh.record.worker_id == "w-3"


StoreOpener = Callable[[], Awaitable[RegistryStore]]
RETRYING = RegistrationConfig(max_retries=4, base_backoff=0.05, max_backoff=0.2, registration_timeout=2.0)


@pytest.fixture(params=["sqlite", "postgres"])
async def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreOpener]:
    """Opens the real durable store under test; closed after the test."""
    opened: list[RegistryStore] = []

    async def open_store() -> RegistryStore:
        store: RegistryStore
        if request.param == "sqlite":
            store = await SqliteRegistryStore.open(tmp_path / "registry.db")
        else:
            store = await PostgresRegistryStore.open(request.getfixturevalue("postgres_dsn"), min_size=1)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


async def test_a_registration_retried_after_its_answer_was_lost_is_no_replay_of_its_join_token(
    durable_store: StoreOpener,
) -> None:
    token = TokenAuthority(SECRET).mint_join_token("w-4", ttl=60)
    failing = FailingScheduler(1, lose_answers=True, store=await durable_store(), security=secured())
    async with failing, AttemptRecordingClient(failing.target, credential=token) as client:
        adapter = WorkerRegistrationAdapter(client, RETRYING)
        receipt = await adapter.register_worker(registration("w-4"))
        workers = await failing.workers()
        restarted = await replayed(failing, token, "w-4")  # a new incarnation is a new registration

    assert client.attempts == ["UNAVAILABLE", "OK"]  # the first was written, and its answer lost
    assert (receipt.record.worker_id, receipt.created) == ("w-4", False)
    assert receipt.credential != ""
    assert [w.worker_id for w in workers] == ["w-4"]
    assert (restarted.code, restarted.message) == (ErrorCode.UNAUTHENTICATED, "join token already used")


async def test_a_registration_whose_answer_the_network_held_past_its_deadline_is_retried_with_its_join_token(
    durable_store: StoreOpener,
) -> None:
    token = TokenAuthority(SECRET).mint_join_token("w-6", ttl=60)
    config = RegistrationConfig(max_retries=6, base_backoff=0.05, max_backoff=0.2, registration_timeout=0.5)
    async with (
        EmbeddedScheduler(store=await durable_store(), security=secured()) as scheduler,
        FaultProxy(scheduler.target) as proxy,
        AttemptRecordingClient(proxy.target, credential=token) as client,
    ):
        with pytest.raises(AccessDenied):  # a join token may only register; the connection is up after it
            await client.get_worker("w-6", timeout=5)
        proxy.delay(60.0, direction="downstream")  # the request gets through; its answer does not come back
        registering = asyncio.create_task(
            WorkerRegistrationAdapter(client, config).register_worker(registration("w-6"))
        )
        await wait_until(lambda: client.attempts[:1] == ["DEADLINE_EXCEEDED"])
        written = await scheduler.get_worker("w-6")
        proxy.heal()
        receipt = await registering
        workers = await scheduler.workers()

    assert written is not None  # the first attempt was done: only its answer was lost
    assert client.attempts[-1] == "OK"
    assert set(client.attempts[:-1]) == {"DEADLINE_EXCEEDED"}
    assert (receipt.record.worker_id, receipt.created) == ("w-6", False)
    assert [w.worker_id for w in workers] == ["w-6"]


async def test_an_agent_whose_first_hello_was_answered_in_vain_joins_with_its_token_on_the_next_try(
    durable_store: StoreOpener,
) -> None:
    """The scheduler registered the agent and spent its join token, and the answer (the credential) never
    arrived: the agent says the same hello again (same incarnation), which the token still admits."""
    token = TokenAuthority(SECRET).mint_join_token("agent-1", ttl=60)
    async with (
        EmbeddedScheduler(store=await durable_store(), security=secured()) as scheduler,
        FaultProxy(scheduler.target) as proxy,
    ):
        config = AgentConfig(
            schedulers=(proxy.target,),
            worker_id="agent-1",
            token=token,
            cpu_cores=1,
            memory_mb=64,
            hello_timeout=0.5,
            reconnect_base=0.05,
            reconnect_max=0.1,
        )
        agent = WorkerAgent(config, random=lambda: 0.0)
        incarnation = agent.incarnation
        watcher = scheduler.scheduler.events.watch()

        async def lose_the_first_answer() -> None:
            async for event in watcher:
                if event.kind is WorkerEventKind.CONNECTED:  # registered; its answer is about to leave
                    proxy.black_hole()
                    return

        losing = asyncio.create_task(lose_the_first_answer())
        running = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(losing, 10)
            registry = agent.metrics.registry

            def timed_out() -> float:  # hellos that got no answer in time
                found = registry.get_sample_value(
                    "hodei_agent_stream_connects_total", {"result": "deadline_exceeded"}
                )
                return found or 0.0

            await wait_until(lambda: timed_out() >= 1, timeout=10)
            proxy.heal()
            await wait_until(lambda: agent.connected.is_set() or running.done(), timeout=10)
            refused = running.exception() if running.done() else None
            record = await scheduler.get_worker("agent-1")
        finally:
            watcher.close()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    assert refused is None
    assert agent.connections == 1 and agent.credential != ""
    assert record is not None and record.connected
    assert record.incarnation == agent.incarnation == incarnation  # the same registration, said again
