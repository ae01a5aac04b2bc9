"""FaultProxy between a real SchedulerPortClient and a real EmbeddedScheduler: what each fault does to gRPC.

Each client here has gRPC connections of its own (``grpc.use_local_subchannel_pool``): by default gRPC shares one
connection between all the channels of a process that dial the same target, and a "new" client would ride
the connection of an older one, past a proxy that refuses new connections. Clients are warmed up (one call)
before a fault when the test is about the connection already open, as gRPC's one long-lived connection is.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hodei import (
    DynamicWorker,
    ErrorCode,
    RegistrationConfig,
    RegistrationError,
    SchedulerError,
    SchedulerPortClient,
    SchedulerTimeout,
    SchedulerUnavailable,
    WorkerRegistrationAdapter,
)
from hodei.testing import EmbeddedScheduler, FaultProxy
from tests.helpers import AttemptRecordingClient, free_port, make_worker, wait_for

OWN_CONNECTIONS = (("grpc.use_local_subchannel_pool", 1),)
# gRPC waits about 1 s (jittered, growing) before it connects again after a refused or reset connection attempt;
# the clients of the tests that reconnect wait 50 ms to 200 ms instead. (Not grpc.min_reconnect_backoff_ms: it
# is also the connection attempt's timeout, 20 s by default, and at 50 ms a loaded machine fails handshakes
# with "connection attempt timed out before receiving SETTINGS frame".)
QUICK_RECONNECTS = (
    *OWN_CONNECTIONS,
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)
LIST_SIZE = 1000  # workers in the scheduler for the tests of large answers: one ListWorkers page of ~90 KB


@pytest.fixture
async def connect(proxy: FaultProxy) -> AsyncIterator[Callable[..., AttemptRecordingClient]]:
    """``connect(options=...)``: a client of the proxy with connections of its own, closed after the test."""
    clients: list[AttemptRecordingClient] = []

    def make(options: tuple[tuple[str, Any], ...] = OWN_CONNECTIONS) -> AttemptRecordingClient:
        client = AttemptRecordingClient(proxy.target, options=options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(connect: Callable[..., AttemptRecordingClient]) -> AttemptRecordingClient:
    """A client whose connection through the proxy is open (one call made)."""
    client = connect(QUICK_RECONNECTS)
    assert await client.get_worker("warm-up") is None
    return client


@pytest.fixture
async def many_workers(scheduler: EmbeddedScheduler) -> int:
    for i in range(LIST_SIZE):
        await scheduler.add_worker(make_worker(f"listed-{i:04}", labels={"team": "build", "slot": str(i)}))
    return LIST_SIZE


def elapsed_since(started: float) -> float:
    return asyncio.get_running_loop().time() - started


def now() -> float:
    return asyncio.get_running_loop().time()


async def raises(kind: type[SchedulerError], call: Awaitable[object]) -> SchedulerError:
    with pytest.raises(kind) as raised:
        await call
    return raised.value


# --- forwarding -------------------------------------------------------------------------------------------


async def test_a_registration_through_the_proxy_reaches_the_scheduler_and_moves_both_byte_counters(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, connect: Callable[..., AttemptRecordingClient]
) -> None:
    client = connect()

    receipt = await client.register_worker(make_worker("through-proxy", cpu_cores=2), timeout=5)

    assert receipt.created is True
    registered = await scheduler.get_worker("through-proxy")
    assert registered is not None
    assert registered.capabilities.cpu_cores == 2
    assert proxy.connections_accepted == 1
    assert proxy.active_connections == 1
    assert proxy.bytes_upstream > 0
    assert proxy.bytes_downstream > 0
    assert (proxy.connections_reset, proxy.connections_cut) == (0, 0)


async def test_stopping_the_proxy_ends_its_connections_and_tasks_even_with_traffic_held(
    scheduler: EmbeddedScheduler,
) -> None:
    proxy = FaultProxy(scheduler.target)
    async with proxy, SchedulerPortClient(proxy.target, options=OWN_CONNECTIONS) as client:
        await client.register_worker(make_worker("before-stop"), timeout=5)
        proxy.black_hole()
        held = asyncio.create_task(client.register_worker(make_worker("held-at-stop"), timeout=30))
        proxy.delay(30)
        with pytest.raises(RuntimeError):
            await proxy.start()

        await proxy.stop()
        await proxy.stop()

        assert proxy.active_connections == 0
        assert [t for t in asyncio.all_tasks() if "FaultProxy" in t.get_coro().__qualname__] == []
        await raises(SchedulerUnavailable, held)
        await raises(SchedulerUnavailable, client.register_worker(make_worker("after-stop"), timeout=5))
    with pytest.raises(RuntimeError):
        await proxy.start()


async def test_a_proxy_whose_upstream_is_down_resets_each_connection_it_accepts() -> None:
    # A port nobody listens on, below the kernel's ephemeral range: no server's bind to port 0 takes it meanwhile.
    upstream = f"127.0.0.1:{free_port()}"
    async with (
        FaultProxy(upstream) as proxy,
        SchedulerPortClient(proxy.target, options=OWN_CONNECTIONS) as client,
    ):
        error = await raises(SchedulerUnavailable, client.register_worker(make_worker("nowhere"), timeout=5))

        assert "reset" in str(error).lower()
        assert proxy.connections_accepted >= 1
        assert proxy.connections_reset == 0  # not a fault of the proxy's: what the upstream's absence does
        await wait_for(lambda: as_awaitable(proxy.active_connections == 0))


@pytest.mark.parametrize(
    "set_fault",
    [
        lambda proxy: proxy.delay(-0.1),
        lambda proxy: proxy.delay(0.1, jitter=-1),
        lambda proxy: proxy.delay(0.1, direction="sideways"),
        lambda proxy: proxy.limit_bandwidth(0),
        lambda proxy: proxy.close_after(-1),
    ],
    ids=["negative delay", "negative jitter", "unknown direction", "no bandwidth", "negative close-after"],
)
async def test_fault_settings_out_of_range_are_refused(
    proxy: FaultProxy, set_fault: Callable[[FaultProxy], None]
) -> None:
    with pytest.raises(ValueError):
        set_fault(proxy)


def test_an_upstream_without_a_port_is_refused() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        FaultProxy("scheduler.example")


# --- latency ----------------------------------------------------------------------------------------------


async def test_latency_makes_a_registration_take_at_least_the_delay_each_way(
    proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.delay(0.2)
    started = now()

    await client.register_worker(make_worker("slow-both-ways"), timeout=10)

    assert elapsed_since(started) >= 0.4


async def test_jitter_only_lengthens_the_delay(scheduler: EmbeddedScheduler) -> None:
    async with (
        FaultProxy(scheduler.target, random=lambda: 0.5) as proxy,
        SchedulerPortClient(proxy.target, options=OWN_CONNECTIONS) as client,
    ):
        assert await client.get_worker("warm-up") is None
        proxy.delay(0.1, jitter=0.2)  # 0.1 s + half of 0.2 s, each way
        started = now()

        await client.register_worker(make_worker("jittered"), timeout=10)

        assert elapsed_since(started) >= 0.4


async def test_downstream_latency_holds_the_answer_while_the_request_is_served_and_heal_releases_it(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.delay(30, direction="downstream")
    call = asyncio.create_task(client.register_worker(make_worker("answer-held"), timeout=60))

    await wait_for(lambda: has_worker(scheduler, "answer-held"))
    assert not call.done()
    proxy.heal()

    receipt = await asyncio.wait_for(call, 10)
    assert receipt.created is True


async def test_a_deadline_shorter_than_the_latency_ends_the_call_with_scheduler_timeout(
    proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.delay(0.5)

    error = await raises(SchedulerTimeout, client.register_worker(make_worker("too-slow"), timeout=0.2))

    assert error.code is ErrorCode.DEADLINE_EXCEEDED
    assert proxy.active_connections == 1  # a deadline ends the call, not the connection


# --- black hole -------------------------------------------------------------------------------------------


async def test_a_black_hole_times_a_call_out_and_after_heal_the_same_connection_serves_the_next(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.black_hole()
    started = now()

    error = await raises(SchedulerTimeout, client.register_worker(make_worker("lost"), timeout=0.5))

    assert error.code is ErrorCode.DEADLINE_EXCEEDED
    assert elapsed_since(started) >= 0.5
    proxy.heal()
    receipt = await client.register_worker(make_worker("after-black-hole"), timeout=5)
    assert receipt.created is True
    assert await scheduler.get_worker("after-black-hole") is not None
    # Nobody was told: the connection outlived the black hole and carried the next call.
    assert (proxy.connections_accepted, proxy.connections_reset) == (1, 0)


async def test_a_call_held_by_a_black_hole_is_delivered_when_it_ends_before_the_calls_deadline(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.black_hole()
    sent_before = proxy.bytes_upstream
    call = asyncio.create_task(client.register_worker(make_worker("held"), timeout=30))

    # Nothing may happen for a while: this waits out an interval, it does not wait for an event.
    done, _ = await asyncio.wait([call], timeout=0.5)
    assert not done
    assert await scheduler.get_worker("held") is None
    assert proxy.bytes_upstream == sent_before
    proxy.black_hole(False)

    receipt = await asyncio.wait_for(call, 10)
    assert receipt.created is True
    assert proxy.connections_accepted == 1


async def test_a_connection_opened_into_a_black_hole_is_accepted_but_unanswered_until_heal(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, connect: Callable[..., AttemptRecordingClient]
) -> None:
    client = connect()
    proxy.black_hole()

    await raises(SchedulerTimeout, client.register_worker(make_worker("into-the-void"), timeout=0.5))

    assert proxy.connections_accepted == 1
    assert (proxy.bytes_upstream, proxy.bytes_downstream) == (0, 0)
    proxy.heal()
    await client.register_worker(make_worker("out-of-the-void"), timeout=5)
    assert await scheduler.get_worker("out-of-the-void") is not None
    assert proxy.connections_accepted == 1


# --- resets -----------------------------------------------------------------------------------------------


async def test_a_reset_fails_the_call_in_flight_with_unavailable_and_a_retry_reconnects(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.delay(30, direction="downstream")  # the request is served; its answer waits in the proxy
    call = asyncio.create_task(client.register_worker(make_worker("in-flight"), timeout=60))
    await wait_for(lambda: has_worker(scheduler, "in-flight"))

    proxy.reset_all()
    proxy.heal()

    error = await raises(SchedulerUnavailable, call)
    assert error.code is ErrorCode.UNAVAILABLE
    assert "Connection reset by peer" in str(error)
    assert proxy.connections_reset == 1
    # A call made right after may still be sent on the dead connection ("Stream removed (sendmsg: Broken
    # pipe)") before gRPC has let go of it: the next call is not guaranteed to succeed, a retry is.
    await wait_for(lambda: registers(client, make_worker("in-flight")))
    record = await scheduler.get_worker("in-flight")
    assert record is not None  # the reset lost the answer, not the registration
    assert proxy.connections_accepted == 2


async def test_after_a_reset_the_adapters_retry_registers_the_worker_on_a_new_connection(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    adapter = WorkerRegistrationAdapter(client, RegistrationConfig(max_retries=3, base_backoff=0.05))
    proxy.delay(30, direction="downstream")
    registration = asyncio.create_task(adapter.register_worker(make_worker("retried")))
    await wait_for(lambda: has_worker(scheduler, "retried"))

    proxy.reset_all()
    proxy.heal()

    receipt = await asyncio.wait_for(registration, 10)
    assert receipt.created is False
    assert client.attempts == ["UNAVAILABLE", "OK"]
    assert proxy.connections_reset == 1
    assert proxy.connections_accepted == 2


async def test_resetting_new_connections_too_fails_every_call_with_unavailable_until_heal(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.reset_all(including_new=True)

    for attempt in range(3):
        await raises(SchedulerUnavailable, client.register_worker(make_worker(f"reset-{attempt}"), timeout=5))

    assert proxy.connections_reset == proxy.connections_accepted >= 2  # the open one and each new one
    assert proxy.active_connections == 0
    proxy.heal()
    await wait_for(lambda: registers(client, make_worker("after-resets")))
    assert await scheduler.get_worker("after-resets") is not None


# --- closed half-way --------------------------------------------------------------------------------------


async def test_a_connection_closed_half_way_through_a_large_list_fails_it_with_unavailable(
    proxy: FaultProxy, client: AttemptRecordingClient, many_workers: int
) -> None:
    proxy.close_after(10_000)
    received_before = proxy.bytes_downstream

    error = await raises(SchedulerUnavailable, client.list_workers(page_size=many_workers, timeout=10))

    assert error.code is ErrorCode.UNAVAILABLE
    assert "Socket closed" in str(error)  # gRPC's words for a FIN; an RST is "Connection reset by peer"
    assert proxy.bytes_downstream - received_before == 10_000
    assert (proxy.connections_cut, proxy.connections_reset) == (1, 0)
    proxy.heal()
    try:
        page = await client.list_workers(page_size=many_workers, timeout=10)
    except SchedulerUnavailable as racing:
        # The channel may hand the next call to the connection it is still closing (gRPC: "Delayed close due to
        # in-progress write"); that one call fails UNAVAILABLE, and the one after it dials again. Once only.
        assert "Delayed close" in str(racing)
        page = await client.list_workers(page_size=many_workers, timeout=10)
    assert len(page.workers) == many_workers
    assert proxy.connections_accepted == 2


# --- refusing ---------------------------------------------------------------------------------------------


async def test_a_refusing_proxy_fails_new_connections_with_unavailable_while_open_ones_carry_on(
    scheduler: EmbeddedScheduler,
    proxy: FaultProxy,
    client: AttemptRecordingClient,
    connect: Callable[..., AttemptRecordingClient],
) -> None:
    port = proxy.port
    proxy.refuse()
    newcomer = connect(QUICK_RECONNECTS)

    error = await raises(SchedulerUnavailable, newcomer.register_worker(make_worker("refused"), timeout=5))

    assert error.code is ErrorCode.UNAVAILABLE
    assert "Connection refused" in str(error)
    assert proxy.connections_accepted == 1
    await client.register_worker(make_worker("on-the-open-connection"), timeout=5)
    proxy.refuse(False)
    assert proxy.port == port
    await connect().register_worker(make_worker("on-a-new-connection"), timeout=5)
    await wait_for(lambda: registers(newcomer, make_worker("refused")))
    assert [await has_worker(scheduler, w) for w in ("on-a-new-connection", "refused")] == [True, True]
    assert proxy.connections_accepted == 3


async def test_a_refusing_proxy_that_resets_the_open_connection_fails_calls_until_it_listens_again(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    proxy.refuse()
    proxy.reset_all()
    failures: list[str] = []

    async def refused() -> bool:
        error = await raises(SchedulerUnavailable, client.register_worker(make_worker("gone"), timeout=5))
        failures.append(str(error))
        return "Connection refused" in str(error)

    # The first calls may still meet the dead connection ("Stream removed (Socket closed)", "... Broken pipe",
    # "... Connection reset by peer"); then gRPC connects again, and is refused.
    await wait_for(refused)
    assert all(failure.startswith("UNAVAILABLE: ") for failure in failures)
    assert (proxy.connections_accepted, proxy.connections_reset) == (1, 1)
    assert await scheduler.get_worker("gone") is None

    proxy.heal()
    await wait_for(lambda: registers(client, make_worker("back")))
    assert proxy.connections_accepted == 2


# --- bandwidth --------------------------------------------------------------------------------------------


async def test_a_bandwidth_limit_makes_a_large_list_take_at_least_its_size_over_the_rate(
    proxy: FaultProxy, client: AttemptRecordingClient, many_workers: int
) -> None:
    before = proxy.bytes_downstream
    await client.list_workers(page_size=many_workers, timeout=10)
    size = proxy.bytes_downstream - before
    rate = size / 0.5  # bytes per second: the list takes 0.5 s or more
    proxy.limit_bandwidth(rate, direction="downstream")
    started, before = now(), proxy.bytes_downstream

    page = await client.list_workers(page_size=many_workers, timeout=30)

    carried = proxy.bytes_downstream - before
    assert len(page.workers) == many_workers
    assert carried > 50_000  # the list, and a few HTTP/2 frames more or less than the first time
    assert elapsed_since(started) >= carried / rate


async def test_an_upstream_bandwidth_limit_slows_requests_and_not_answers(
    proxy: FaultProxy, client: AttemptRecordingClient
) -> None:
    worker = make_worker("big-request", labels={f"label-{i}": "x" * 40 for i in range(60)})
    proxy.limit_bandwidth(4_000, direction="upstream")
    started, sent_before = now(), proxy.bytes_upstream

    await client.register_worker(worker, timeout=30)

    sent = proxy.bytes_upstream - sent_before
    assert sent > 3_000
    assert elapsed_since(started) >= sent / 4_000


# --- switching while traffic flows ------------------------------------------------------------------------


async def test_faults_switched_while_registrations_flow_leave_every_reported_registration_in_the_scheduler(
    scheduler: EmbeddedScheduler, proxy: FaultProxy, connect: Callable[..., AttemptRecordingClient]
) -> None:
    client = connect(QUICK_RECONNECTS)
    adapter = WorkerRegistrationAdapter(
        client,
        RegistrationConfig(max_retries=30, base_backoff=0.02, max_backoff=0.2, registration_timeout=0.3),
    )
    registered: list[str] = []
    failed: dict[str, RegistrationError] = {}
    stop = asyncio.Event()
    ids = (f"flow-{n:05}" for n in itertools.count())

    async def register_until_stopped() -> None:
        while not stop.is_set():
            worker = make_worker(next(ids))
            try:
                await adapter.register_worker(worker)
            except RegistrationError as error:
                failed[worker.worker_id] = error
            else:
                registered.append(worker.worker_id)

    async def progress(more: int = 5) -> None:
        """Wait until ``more`` registrations have succeeded since now."""
        target = len(registered) + more
        await wait_for(lambda: as_awaitable(len(registered) >= target), timeout=15)

    Condition = Callable[[], Awaitable[bool]]

    def code_seen(code: str) -> Condition:
        seen = client.attempts.count(code)
        return lambda: as_awaitable(client.attempts.count(code) > seen)

    def counted(name: str, more: int = 1) -> Condition:
        seen = getattr(proxy, name)
        return lambda: as_awaitable(getattr(proxy, name) >= seen + more)

    def refuse_and_drop() -> None:
        proxy.refuse()
        proxy.reset_all()

    # Each fault: how to inject it, and what shows that it has bitten the traffic (made just before it is
    # injected), or None for a fault that lets traffic through slowly: then it holds while some succeed.
    faults: list[tuple[Callable[[], None], Callable[[], Condition] | None]] = [
        (lambda: proxy.delay(0.05, jitter=0.05), None),
        (proxy.black_hole, lambda: code_seen("DEADLINE_EXCEEDED")),
        (lambda: proxy.limit_bandwidth(5_000), None),
        (proxy.reset_all, lambda: counted("connections_reset")),
        (lambda: proxy.close_after(500), lambda: counted("connections_cut")),
        (refuse_and_drop, lambda: code_seen("UNAVAILABLE")),
        (lambda: proxy.reset_all(including_new=True), lambda: counted("connections_reset", 2)),
        (lambda: proxy.delay(0.5, direction="downstream"), lambda: code_seen("DEADLINE_EXCEEDED")),
    ]
    async with asyncio.TaskGroup() as producers:
        for _ in range(4):
            producers.create_task(register_until_stopped())
        await progress()
        for inject, bites in faults:
            bitten = bites() if bites is not None else None
            inject()
            if bitten is None:
                await progress(3)
            else:
                await wait_for(bitten, timeout=15)
            proxy.heal()
            await progress()
        stop.set()

    assert len(registered) >= 5 * (len(faults) + 1)
    missing = [w for w in registered if not await has_worker(scheduler, w)]
    assert missing == []
    assert failed == {}  # the retry budget outlasts every fault here
    assert proxy.connections_reset >= 3
    assert proxy.connections_cut >= 1
    assert {"DEADLINE_EXCEEDED", "UNAVAILABLE"} <= set(client.attempts)


# --- helpers ----------------------------------------------------------------------------------------------


async def has_worker(scheduler: EmbeddedScheduler, worker_id: str) -> bool:
    return await scheduler.get_worker(worker_id) is not None


async def registers(client: SchedulerPortClient, worker: DynamicWorker) -> bool:
    """Whether one registration call succeeds now (a condition for ``wait_for``)."""
    try:
        await client.register_worker(worker, timeout=2)
    except SchedulerUnavailable:
        return False
    return True


async def as_awaitable(value: bool) -> bool:
    return value
