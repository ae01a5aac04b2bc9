"""SchedulerPortClient given several scheduler replicas: it fails over between them, and the caller sees no error.

The replicas are EmbeddedSchedulers on loopback sharing one MemoryRegistryStore, as replicas share a database,
except where a replica is killed: that one runs in a child process of its own. A dead address is a loopback port
that the test holds bound and never listens on: connecting to it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from hodei import (
    BatchRegistrationResult,
    DynamicWorker,
    DynamicWorkerConfig,
    MaxRetriesExceeded,
    RegistrationConfig,
    RegistrationReceipt,
    SchedulerError,
    SchedulerPortClient,
    SchedulerUnavailable,
    WorkerRegistrationAdapter,
    WorkerStatus,
    WorkerType,
)
from hodei._bootstrap import build_control_plane
from hodei._infra.fixtures import skip_or_fail_for_missing
from hodei.server._interception import REGISTRATION_METHODS, MethodInterceptor
from hodei.stores._memory import MemoryRegistryStore
from hodei.testing import EmbeddedScheduler, MockWorkerProvider
from hodei.transport._addresses import scheduler_addresses
from tests.helpers import make_worker

HODEI = shutil.which("hodei") or str(Path(sys.executable).parent / "hodei")
# What a pipe gives the CLI: no terminal size, no colours.
CLI_ENV = {key: value for key, value in os.environ.items() if key not in {"COLUMNS", "LINES"}}
CLI_ENV["NO_COLOR"] = "1"


class RegistrationCounter(MethodInterceptor):
    """Counts the registration calls that reached one replica."""

    per_call = True

    def __init__(self) -> None:
        super().__init__(REGISTRATION_METHODS)
        self.calls = 0

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        self.calls += 1
        return handler


class Replica:
    """An EmbeddedScheduler and the count of registrations it answered."""

    def __init__(self, scheduler: EmbeddedScheduler, counter: RegistrationCounter) -> None:
        self.scheduler = scheduler
        self.counter = counter
        self.target = scheduler.target


@contextlib.asynccontextmanager
async def two_replicas() -> AsyncIterator[tuple[Replica, Replica, MemoryRegistryStore]]:
    """Two schedulers on one store."""
    store = MemoryRegistryStore()
    counters = RegistrationCounter(), RegistrationCounter()
    async with (
        EmbeddedScheduler(store=store, interceptors=[counters[0]]) as first,
        EmbeddedScheduler(store=store, interceptors=[counters[1]]) as second,
    ):
        yield Replica(first, counters[0]), Replica(second, counters[1]), store


@contextlib.contextmanager
def dead_address(host: str = "127.0.0.1") -> Iterator[str]:
    """``HOST:PORT`` (``[HOST]:PORT`` for IPv6) of a port held bound, so that nobody else takes it, where nothing
    listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as held:
        held.bind((host, 0))
        port = held.getsockname()[1]
        yield f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def missing_ipv6_loopback() -> str | None:
    """Why this machine cannot listen on the IPv6 loopback, or None when it can."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        return f"the IPv6 loopback [::1] cannot be bound here ({error}); the mixed IPv4/IPv6 list needs it"
    return None


class PortHeldMidway:
    """The client, except that calls after the first ``midway`` wait until ``resume`` is set: the test stops a
    replica in between, so that the stop falls in the middle of the traffic whatever the machine's speed."""

    def __init__(self, client: SchedulerPortClient, midway: int) -> None:
        self.client = client
        self.midway = midway
        self.calls = 0
        self.reached = asyncio.Event()
        self.resume = asyncio.Event()

    async def _take_turn(self) -> None:
        self.calls += 1
        if self.calls > self.midway:
            self.reached.set()
            await self.resume.wait()

    async def register_worker(
        self, worker: DynamicWorker, *, timeout: float | None = None
    ) -> RegistrationReceipt:
        await self._take_turn()
        return await self.client.register_worker(worker, timeout=timeout)

    async def register_workers(
        self, workers: Sequence[DynamicWorker], *, timeout: float | None = None
    ) -> list[RegistrationReceipt | SchedulerError]:
        await self._take_turn()
        return await self.client.register_workers(workers, timeout=timeout)


Outcome = RegistrationReceipt | BatchRegistrationResult | Exception


async def register_one_by_one(
    adapter: WorkerRegistrationAdapter, workers: list[DynamicWorker]
) -> list[Outcome]:
    """Each worker on its own, 20 registrations in flight at a time; every outcome, failures included."""
    pending = iter(workers)
    outcomes: list[Outcome] = []

    async def registrar() -> None:
        for worker in pending:
            try:
                outcomes.append(await adapter.register_worker(worker))
            except Exception as error:  # kept, so that the test shows every failure, not the first
                outcomes.append(error)

    async with asyncio.TaskGroup() as group:
        for _ in range(20):
            group.create_task(registrar())
    return outcomes


async def register_in_batches(
    adapter: WorkerRegistrationAdapter, workers: list[DynamicWorker]
) -> list[Outcome]:
    return list(await adapter.register_workers_batch(workers))


def failed(outcome: Outcome) -> bool:
    return isinstance(outcome, Exception) or (isinstance(outcome, BatchRegistrationResult) and not outcome.ok)


@pytest.mark.parametrize("form", ["comma-separated", "sequence"])
async def test_a_client_given_both_addresses_in_either_order_registers_and_reads_back(form: str) -> None:
    async with two_replicas() as (first, second, _):
        for n, order in enumerate([(first, second), (second, first)]):
            addresses = [replica.target for replica in order]
            target: str | list[str] = ", ".join(addresses) if form == "comma-separated" else addresses
            async with SchedulerPortClient(target) as client:
                receipt = await client.register_worker(make_worker(f"worker-{n}"))
                got = await client.get_worker(f"worker-{n}")

            assert client.target == ",".join(addresses)
            assert receipt.created
            assert got is not None
            assert got.worker_id == f"worker-{n}"
            for replica in (first, second):  # one store behind both
                assert await replica.scheduler.get_worker(f"worker-{n}") is not None
        assert first.counter.calls + second.counter.calls == 2


@pytest.mark.parametrize(
    ("register", "batch_size", "midway"),
    [(register_one_by_one, 1, 100), (register_in_batches, 10, 10)],
    ids=["one-by-one", "in-batches"],
)
async def test_300_registrations_all_succeed_once_while_the_replica_in_use_stops_midway(
    register: Callable[[WorkerRegistrationAdapter, list[DynamicWorker]], Awaitable[list[Outcome]]],
    batch_size: int,
    midway: int,
) -> None:
    workers = [make_worker(f"worker-{n:03}") for n in range(300)]
    config = RegistrationConfig(batch_size=batch_size, batch_concurrency=4)
    async with two_replicas() as (first, second, store):
        async with SchedulerPortClient([first.target, second.target]) as client:
            port = PortHeldMidway(client, midway)
            registering = asyncio.create_task(register(WorkerRegistrationAdapter(port, config), workers))
            async with asyncio.timeout(10):
                await port.reached.wait()
            answered_by_first = first.counter.calls
            stopping = asyncio.create_task(first.scheduler.stop())
            port.resume.set()  # the calls already sent are still in flight on the first replica as it stops
            await stopping
            outcomes = await registering

        assert [outcome for outcome in outcomes if failed(outcome)] == []
        assert len(outcomes) == len(workers)
        stored = [record.worker_id for record in await second.scheduler.workers()]
        assert stored == [worker.worker_id for worker in workers]
        assert await store.count() == len(workers)
        assert answered_by_first > 0, "the stopped replica was not the one in use"
        assert second.counter.calls > 0, "nothing failed over to the other replica"


# A scheduler process of its own, on a memory store, whatever `hodei scheduler serve` defaults to.
SCHEDULER_PROCESS = """
import asyncio
from hodei.testing import EmbeddedScheduler

async def serve():
    async with EmbeddedScheduler() as scheduler:
        print(scheduler.target, flush=True)
        await asyncio.Event().wait()

asyncio.run(serve())
"""


@contextlib.asynccontextmanager
async def scheduler_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A real scheduler in a child process, once it listens; killed at exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCHEDULER_PROCESS, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            target = (await process.stdout.readline()).decode().strip()
        assert target.startswith("127.0.0.1:"), f"the scheduler process said {target!r}"
        yield process, target
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_registrations_all_succeed_while_the_scheduler_process_in_use_is_killed_midway() -> None:
    # Each process has its own memory store: what the killed one held dies with it. What is checked here is
    # that the caller never sees the death of a replica.
    workers = [make_worker(f"worker-{n:03}") for n in range(300)]
    async with (
        scheduler_process() as (first, first_target),
        scheduler_process() as (_, second_target),
        SchedulerPortClient([first_target, second_target]) as client,
    ):
        port = PortHeldMidway(client, 100)
        registering = asyncio.create_task(register_one_by_one(WorkerRegistrationAdapter(port), workers))
        async with asyncio.timeout(10):
            await port.reached.wait()
        first.kill()  # SIGKILL, with calls in flight on it
        port.resume.set()
        outcomes = await registering
        survivors = await client.list_workers(page_size=1000)

    assert [outcome for outcome in outcomes if failed(outcome)] == []
    assert len(outcomes) == len(workers)
    assert 0 < len(survivors.workers) < len(workers), "the killed scheduler was not the one in use"


async def test_a_client_whose_first_address_is_dead_from_the_start_works_through_the_next() -> None:
    async with EmbeddedScheduler() as live:
        with dead_address() as dead:
            async with SchedulerPortClient([dead, live.target]) as client:
                receipt = await client.register_worker(make_worker("w-1"))
                page = await client.list_workers()

    assert receipt.created
    assert [record.worker_id for record in page.workers] == ["w-1"]


async def test_a_control_plane_built_with_several_addresses_registers_through_the_live_one() -> None:
    async with EmbeddedScheduler() as live:
        with dead_address() as dead:
            async with build_control_plane(MockWorkerProvider(), scheduler=[dead, live.target]) as service:
                worker = await service.provision_worker(DynamicWorkerConfig(worker_type=WorkerType.DOCKER))

        assert worker.status is WorkerStatus.REGISTERED
        assert await live.get_worker(worker.worker_id) is not None


async def test_when_every_address_is_dead_unavailable_surfaces_as_max_retries_exceeded() -> None:
    with dead_address() as one, dead_address() as other:
        async with SchedulerPortClient(f"{one},{other}") as client:
            adapter = WorkerRegistrationAdapter(client, RegistrationConfig(max_retries=2, base_backoff=0.01))
            with pytest.raises(MaxRetriesExceeded) as raised:
                await adapter.register_worker(make_worker("nowhere"))

    assert raised.value.worker_id == "nowhere"
    assert raised.value.attempts == 3
    assert isinstance(raised.value.last_error, SchedulerUnavailable)


async def test_host_names_are_resolved_and_a_list_may_mix_ipv4_and_ipv6_addresses() -> None:
    if (missing := missing_ipv6_loopback()) is not None:
        skip_or_fail_for_missing(missing)
    async with EmbeddedScheduler() as on_ipv4, EmbeddedScheduler(host="[::1]") as on_ipv6:
        with dead_address("::1") as dead_ipv6, dead_address() as dead_ipv4:
            mixed = SchedulerPortClient([dead_ipv6, f"localhost:{on_ipv4.port}"])
            only_ipv6 = SchedulerPortClient([dead_ipv6, on_ipv6.target])
            only_names = SchedulerPortClient(
                [f"localhost:{dead_ipv4.rsplit(':', 1)[1]}", f"localhost:{on_ipv4.port}"]
            )
            for client in (mixed, only_ipv6, only_names):
                async with client:
                    await client.register_worker(make_worker("w-1"))

        assert await on_ipv4.get_worker("w-1") is not None
        assert await on_ipv6.get_worker("w-1") is not None


def test_a_host_name_that_does_not_resolve_is_unavailable_naming_its_address() -> None:
    with pytest.raises(SchedulerUnavailable, match=re.escape("'no-such-host.invalid:50051': cannot resolve")):
        SchedulerPortClient("127.0.0.1:50051,no-such-host.invalid:50051")


async def test_channel_options_given_replace_the_failover_defaults_key_by_key() -> None:
    async with two_replicas() as (first, second, _):
        spread = [("grpc.lb_policy_name", "round_robin")]
        async with SchedulerPortClient([first.target, second.target], options=spread) as client:
            deadline = time.monotonic() + 5
            n = 0
            while not (first.counter.calls and second.counter.calls):  # round_robin reaches both
                assert time.monotonic() < deadline, "round_robin never used both replicas"
                await client.register_worker(make_worker(f"w-{n}"))
                n += 1


@pytest.mark.parametrize(
    ("target", "addresses"),
    [
        ("127.0.0.1:50051", ("127.0.0.1:50051",)),
        (" 10.0.0.1:1 , 10.0.0.2:2 ", ("10.0.0.1:1", "10.0.0.2:2")),
        (["sched-a:1", "sched-b:2,[::1]:3"], ("sched-a:1", "sched-b:2", "[::1]:3")),
        ("localhost", ("localhost",)),  # one address is any target gRPC dials, its port defaulted
        ("dns:///scheduler:50051", ("dns:///scheduler:50051",)),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", ("ipv4:10.0.0.1:1,10.0.0.2:2",)),  # a URI stays whole
    ],
)
def test_address_lists_split_into_their_addresses(
    target: str | list[str], addresses: tuple[str, ...]
) -> None:
    assert scheduler_addresses(target) == addresses


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "no scheduler address in ''"),
        ([], "no scheduler address in ''"),
        (" , ", "no scheduler address in ' , '"),
        ("a:1,,b:2", "an empty scheduler address in 'a:1,,b:2'"),
        (["a:1", ""], "an empty scheduler address in 'a:1,'"),
        ("a:1,localhost", "scheduler address 'localhost' has no port: expected HOST:PORT"),
        ("a:1,b:", "scheduler address 'b:' has no port"),
        ("a:1,b:http", "scheduler address 'b:http' has no port"),
        ("a:1,::1:5", "scheduler address '::1:5' is not HOST:PORT"),
        ("a:1,dns:///b:2", "scheduler address 'dns:///b:2' is not HOST:PORT"),
        ("a:1,b:70000", "scheduler address 'b:70000': port 70000 is out of range"),
        ("a:1,b:0", "scheduler address 'b:0': port 0 is out of range"),
        ("a:1,[::g]:5", "scheduler address '[::g]:5': '::g' is not an IPv6 address"),
    ],
)
def test_a_bad_address_list_is_a_value_error_naming_the_bad_entry(
    target: str | list[str], message: str
) -> None:
    for attempt in (lambda: scheduler_addresses(target), lambda: SchedulerPortClient(target)):
        with pytest.raises(ValueError) as raised:
            attempt()
        assert message in str(raised.value)


async def run_hodei(*args: str) -> tuple[int, str, str]:
    """``hodei ARGS`` in a subprocess, while this test's event loop goes on serving its schedulers."""
    process = await asyncio.create_subprocess_exec(
        HODEI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV
    )
    try:
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_workers_list_given_a_dead_address_and_a_live_one_lists_the_live_ones_workers() -> None:
    async with EmbeddedScheduler() as live:
        await live.add_worker(make_worker("cli-worker"))
        with dead_address() as dead:
            code, stdout, stderr = await run_hodei("workers", "list", "--scheduler", f"{dead},{live.target}")

    assert code == 0, stderr
    assert f"1 worker(s) on {dead},{live.target}" in stdout
    assert "cli-worker" in stdout


@pytest.mark.parametrize("command", [["list"], ["watch"], ["unregister", "w-1"]])
async def test_workers_commands_refuse_a_malformed_scheduler_list_naming_the_bad_entry(
    command: list[str],
) -> None:
    code, _, stderr = await run_hodei("workers", *command, "--scheduler", "127.0.0.1:50051,localhost")

    assert code == 2
    said = " ".join(stderr.replace("│", " ").split())  # the error box may wrap the message
    assert "scheduler address 'localhost' has no port" in said


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("127.0.0.1", "scheduler address '127.0.0.1' has no port: expected HOST:PORT"),
        ("localhost", "scheduler address 'localhost' has no port: expected HOST:PORT"),
        ("127.0.0.1:99999", "scheduler address '127.0.0.1:99999': port 99999 is out of range"),
    ],
)
def test_one_address_needs_its_port_where_the_port_must_be_explicit(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        scheduler_addresses(target, explicit_port=True)
    assert scheduler_addresses("dns:///scheduler:50051", explicit_port=True) == ("dns:///scheduler:50051",)
