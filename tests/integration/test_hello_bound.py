"""The hello bound on Connect: beyond its bound of hellos in progress the scheduler refuses a hello with
RESOURCE_EXHAUSTED and a RetryInfo delay that grows with the agents waiting; the agent comes back after that
delay (not its backoff), and a hello's timeout counts from the scheduler's acceptance, not from dialing."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest

from hodei.agent import AgentConfig, WorkerAgent
from hodei.errors import ErrorCode, SchedulerError
from hodei.server._bounds import HelloBound
from hodei.server._interception import MethodInterceptor
from hodei.stores._memory import MemoryRegistryStore
from hodei.testing import EmbeddedScheduler, FakeClock, FaultyStore
from hodei.transport._stream import ConnectStream
from tests.helpers import make_worker, metric, wait_until

pytestmark = pytest.mark.timeout(60)

OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def stalled_scheduler(bound: HelloBound) -> tuple[EmbeddedScheduler, FaultyStore]:
    """A scheduler whose first store write (the first hello's registration) waits until released."""
    store = FaultyStore(MemoryRegistryStore(), stall_on=1)
    return EmbeddedScheduler(store=store, hello_bound=bound), store


async def hello(target: str, worker_id: str) -> tuple[ConnectStream, grpc.aio.Channel, asyncio.Task[Any]]:
    channel = grpc.aio.insecure_channel(target, options=OWN_CONNECTION)
    stream = ConnectStream(channel)
    opening = asyncio.create_task(stream.open(replace(make_worker(worker_id), incarnation=1), timeout=10))
    return stream, channel, opening


async def test_hellos_beyond_the_bound_are_refused_with_a_retry_delay_that_grows_with_the_agents_waiting() -> (
    None
):
    clock = FakeClock(1000.0)
    # One hello at once, expected to take 0.5 s: 2 hellos a second; the u of the delay is always 0.5.
    bound = HelloBound(max_in_flight=1, base_delay=0.25, clock=clock, random=lambda: 0.5)
    scheduler, store = stalled_scheduler(bound)
    async with scheduler:
        first, first_channel, opening = await hello(scheduler.target, "agent-first")
        await store.stalled()
        assert bound.in_flight == 1
        refusals: list[SchedulerError] = []
        for n in range(3):
            _, channel, refused = await hello(scheduler.target, f"agent-{n}")
            with pytest.raises(SchedulerError) as raised:
                await refused
            refusals.append(raised.value)
            await channel.close()
        waiting = bound.waiting
        returning = scheduler.scheduler.monitor.returning()  # what holds the recovery window open: 3 + 1
        store.release()
        ack = await opening
        # The agent may read its acknowledgement before the scheduler's handler has left the bound: waited for.
        await wait_until(lambda: bound.in_flight == 0, timeout=5)
        in_flight_after = bound.in_flight
        rejections = metric(bound.metrics.registry, "hodei_hello_rejections_total")
        gauge = metric(bound.metrics.registry, "hodei_hellos_waiting")
        clock.advance(10.0)  # every advised delay has run out
        waiting_later = bound.waiting
        first.cancel()
        await first_channel.close()

    assert [r.code for r in refusals] == [ErrorCode.RESOURCE_EXHAUSTED] * 3
    # base 0.25 s + (agents already waiting + 0.5) / 2 per s
    assert [r.retry_after for r in refusals] == [0.5, 1.0, 1.5]
    assert ack.record.worker_id == "agent-first"
    assert (waiting, returning, gauge, rejections, bound.rejected) == (3, 4, 3.0, 3.0, 3)
    assert (in_flight_after, waiting_later) == (0, 0)


async def test_the_advised_delay_is_spread_over_the_longest_window_once_the_queue_is_longer() -> None:
    clock = FakeClock(1000.0)
    draws = iter([0.0] * 4 + [0.5])  # one draw per advice
    bound = HelloBound(
        max_in_flight=1, base_delay=0.25, max_delay=2.0, clock=clock, random=lambda: next(draws)
    )
    delays = [bound.advice() for _ in range(5)]
    # 0.25 + n / 2 until beyond 2 s; then uniform over [0.25, 2] (0.5 of the way)
    assert delays == [0.25, 0.75, 1.25, 1.75, 0.25 + 0.5 * 1.75]


async def test_the_hello_rate_follows_the_time_the_last_hellos_took() -> None:
    clock = FakeClock(1000.0)
    bound = HelloBound(max_in_flight=10, clock=clock)
    assert bound.rate() == 20.0  # 10 at once, 0.5 s each expected
    scheduler, store = stalled_scheduler(bound)
    async with scheduler:
        stream, channel, opening = await hello(scheduler.target, "agent-slow")
        await store.stalled()
        clock.advance(2.0)
        store.release()
        await opening
        stream.cancel()
        await channel.close()
    assert bound.rate() == 5.0  # 10 at once, 2 s each


class QuietContext:
    """What :meth:`HelloBound.admitted` asks of a call it admits."""

    async def send_initial_metadata(self, metadata: object) -> None:
        return None


async def test_the_hello_rate_is_at_least_the_hellos_acknowledged_in_the_last_second() -> None:
    clock = FakeClock(1000.0)
    bound = HelloBound(max_in_flight=50, clock=clock)
    async with contextlib.AsyncExitStack() as hellos:
        for _ in range(50):
            await hellos.enter_async_context(bound.admitted(QuietContext()))  # type: ignore[arg-type]
        clock.advance(5.0)  # a slow loop: each hello took 5 s, 50 at once
    assert bound.rate() == 50.0  # not 50 / 5 s: 50 were acknowledged in the last second
    clock.advance(1.0)
    assert bound.rate() == 10.0  # a second later, Little's law again


class Unhurried(MethodInterceptor):
    """Connect streams wait ``delay`` s before the scheduler takes them (a scheduler behind on its work)."""

    def __init__(self, delay: float) -> None:
        super().__init__({"Connect"})
        self.delay = delay
        self.calls = 0

    def intercept(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        serve = handler.stream_stream

        async def later(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.calls += 1
            await asyncio.sleep(self.delay)
            return await serve(requests, context)

        return grpc.stream_stream_rpc_method_handler(
            later,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def test_a_hello_queued_longer_than_the_hello_timeout_is_not_abandoned_before_the_scheduler_accepts_it() -> (
    None
):
    unhurried = Unhurried(delay=1.5)
    async with EmbeddedScheduler(interceptors=[unhurried]) as scheduler:
        config = AgentConfig(
            schedulers=(scheduler.target,),
            worker_id="agent-patient",
            cpu_cores=1,
            memory_mb=64,
            hello_timeout=0.5,
            reconnect_base=0.05,
            reconnect_max=0.1,
        )
        agent = WorkerAgent(config)
        running = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.connected.wait(), 20)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    registry = agent.metrics.registry
    assert (
        registry.get_sample_value("hodei_agent_stream_connects_total", {"result": "deadline_exceeded"})
        is None
    )
    assert metric(registry, "hodei_agent_stream_connects_total", result="ok") == 1.0
    assert (unhurried.calls, agent.connections) == (1, 1)  # one stream, never dialed again


async def test_an_agent_refused_comes_back_after_the_advised_delay_not_its_backoff_and_then_connects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The scheduler advises 0.2 s; the agent's own backoff would be 30 s.
    bound = HelloBound(max_in_flight=1, base_delay=0.2, random=lambda: 0.0)
    scheduler, store = stalled_scheduler(bound)
    async with scheduler:
        first, first_channel, opening = await hello(scheduler.target, "agent-first")
        await store.stalled()
        config = AgentConfig(
            schedulers=(scheduler.target,),
            worker_id="agent-refused",
            cpu_cores=1,
            memory_mb=64,
            reconnect_base=30.0,
            reconnect_max=30.0,
        )
        agent = WorkerAgent(config, random=lambda: 1.0)  # the advised 0.2 s, stretched to 0.24 s
        registry = agent.metrics.registry

        def refused() -> float:
            found = registry.get_sample_value(
                "hodei_agent_stream_connects_total", {"result": "resource_exhausted"}
            )
            return found or 0.0

        caplog.set_level(logging.WARNING, logger="hodei.agent._agent")
        running = asyncio.create_task(agent.run())
        try:
            await wait_until(lambda: refused() >= 3, timeout=10)
            store.release()
            await opening
            await asyncio.wait_for(agent.connected.wait(), 10)
            incarnation = agent.incarnation
            record = await scheduler.get_worker("agent-refused")
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            first.cancel()
            await first_channel.close()

    assert not running.done() or running.cancelled()  # the refusals never ended the agent
    assert record is not None and record.connected and record.incarnation == incarnation
    assert agent.connections == 1
    assert [r.getMessage() for r in caplog.records if r.name == "hodei.agent._agent"] == []  # no failure told


async def test_a_refused_hello_lets_go_of_its_stream_at_once_not_when_the_garbage_collector_runs() -> None:
    """A refused agent's stream (its call, and so its connection to the scheduler) is freed as soon as the
    refusal is handled: a reference cycle would keep the connection open on the scheduler until a collection,
    and a fleet refused after a restart would hold hundreds of connections more than it has agents."""
    bound = HelloBound(max_in_flight=1)
    scheduler, store = stalled_scheduler(bound)
    async with scheduler:
        first, first_channel, opening = await hello(scheduler.target, "agent-first")
        await store.stalled()
        channel = grpc.aio.insecure_channel(scheduler.target, options=OWN_CONNECTION)
        gc.disable()
        try:
            stream = ConnectStream(channel)
            held = weakref.ref(stream)
            codes = []
            try:
                await stream.open(replace(make_worker("agent-refused"), incarnation=1), timeout=10)
            except SchedulerError as error:
                codes.append(error.code)
            del stream
            alive = held() is not None
        finally:
            gc.enable()
            await channel.close()
            store.release()
            await opening
            first.cancel()
            await first_channel.close()

    assert codes == [ErrorCode.RESOURCE_EXHAUSTED]
    assert not alive
