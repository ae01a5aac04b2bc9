"""The composition root's SchedulerHost on a real store and real sockets: what it opens it closes, what it
is handed stays the caller's, and every task started while it ran has ended once it has stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from hodei._bootstrap import SchedulerHost, build_scheduler
from hodei.agent import AgentConfig, WorkerAgent
from hodei.errors import StoreError
from hodei.lifecycle import LivenessConfig
from hodei.stores._sqlite import SqliteRegistryStore
from hodei.transport._client import SchedulerPortClient
from tests.helpers import make_worker, wait_for

FAST = LivenessConfig(
    heartbeat_interval=0.05, lease_ttl=0.4, lost_grace=0.6, recovery_window=0.0, sweep_interval=0.05
)


@contextlib.contextmanager
def recording_tasks() -> Iterator[list[asyncio.Task[Any]]]:
    """Every task the running loop creates inside the block, whoever creates it."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **options: Any
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **options)
        tasks.append(task)
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        yield tasks
    finally:
        loop.set_task_factory(None)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file's URL, or a fresh PostgreSQL database's (whose scheduler has a relay and a leadership)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("postgres_dsn"))


async def test_once_the_host_has_stopped_every_task_started_while_it_served_an_agent_has_ended(
    store_url: str,
) -> None:
    with recording_tasks() as created:
        host = await SchedulerHost.open(
            store_url,
            listen="127.0.0.1:0",
            liveness=FAST,
            metrics_listen="127.0.0.1:0",
            max_connections=1000,
        )
        async with host:
            agent = WorkerAgent(
                AgentConfig(schedulers=(host.address,), worker_id="w-1", cpu_cores=1, memory_mb=256)
            )
            running = asyncio.create_task(agent.run())
            await asyncio.wait_for(agent.connected.wait(), 5)
            await wait_for(lambda: _leading(host))  # the leadership callback has run: health is updated
        agent.request_shutdown("test over")
        await asyncio.wait_for(running, 10)
        pending = [task for task in created if not task.done()]

    started = {task.get_name() for task in created}
    relayed = {"hodei-relay-listen", "hodei-relay-send"} if store_url.startswith("postgresql") else set()
    assert {"hodei-liveness", "hodei-connection-watch", "hodei-health", *relayed} <= started
    assert pending == []
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def _leading(host: SchedulerHost) -> bool:
    return host.scheduler.leading


async def test_the_host_closes_the_store_it_opened_so_that_another_scheduler_may_open_it(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    host = await SchedulerHost.open(url, listen="127.0.0.1:0")
    async with host:
        with pytest.raises(StoreError):
            await SchedulerHost.open(url, listen="127.0.0.1:0")

    again = await SchedulerHost.open(url, listen="127.0.0.1:0")
    await again.stop()


async def test_a_store_handed_to_the_host_stays_open_for_the_caller_after_the_host_stops(
    tmp_path: Path,
) -> None:
    store = await SqliteRegistryStore.open(tmp_path / "registry.db")
    try:
        host = SchedulerHost(build_scheduler(listen="127.0.0.1:0", store=store))
        async with host, SchedulerPortClient(host.address) as client:
            await client.register_worker(make_worker("w-1"))

        found = await store.get("w-1")
    finally:
        await store.close()

    assert found is not None
    assert found.worker_id == "w-1"


async def test_a_metrics_address_in_use_is_refused_naming_it_and_nothing_is_left_listening() -> None:
    async with SchedulerHost(build_scheduler(listen="127.0.0.1:0")) as first:
        taken = first.address
        second = await SchedulerHost.open("memory", listen="127.0.0.1:0", metrics_listen=taken)
        with pytest.raises(OSError) as refused:
            await second.start()
        await second.stop()

        assert str(refused.value.strerror).startswith(f"cannot serve metrics on {taken}: ")
        assert second.server.port == 0
