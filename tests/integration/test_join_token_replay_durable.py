"""A join token is single-use across a restart and across replicas: the registry store remembers it was spent
(``SpentTokens``), not only the memory of the scheduler process that took it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hodei import ErrorCode
from hodei.errors import SchedulerError
from hodei.security import AccessPolicy, SchedulerSecurity, TokenAuthority
from hodei.stores.postgres import PostgresRegistryStore
from hodei.stores.sqlite import SqliteRegistryStore
from hodei.testing import EmbeddedScheduler
from tests.helpers import make_worker

SECRET = b"r" * 48


def secured() -> SchedulerSecurity:
    """Each scheduler its own authority, so its own in-memory ledger: only the store is shared."""
    return SchedulerSecurity(access=AccessPolicy(TokenAuthority(SECRET)))


async def replayed(scheduler: EmbeddedScheduler, token: str, worker_id: str) -> SchedulerError:
    with pytest.raises(SchedulerError) as caught:
        await scheduler.client(credential=token).register_worker(make_worker(worker_id), timeout=5)
    return caught.value


async def test_a_join_token_spent_before_a_restart_is_refused_after_it(tmp_path: Path) -> None:
    token = TokenAuthority(SECRET).mint_join_token("w-1", ttl=60)
    path = tmp_path / "registry.db"
    store = await SqliteRegistryStore.open(path)
    async with EmbeddedScheduler(store=store, security=secured()) as first:
        receipt = await first.client(credential=token).register_worker(make_worker("w-1"), timeout=5)
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
        await one.client(credential=token).register_worker(make_worker("w-2"), timeout=5)
        error = await replayed(two, token, "w-2")
        other = TokenAuthority(SECRET).mint_join_token("w-3", ttl=60)
        fresh = await two.client(credential=other).register_worker(make_worker("w-3"), timeout=5)

    assert (error.code, error.message) == (ErrorCode.UNAUTHENTICATED, "join token already used")
    assert fresh.record.worker_id == "w-3"
