"""The scheduler never meets its file-descriptor limit: it raises its soft limit to the hard one at start and
says so, refuses connections beyond a quota below the limit (with a metric and a log line), and a Connect
stream whose hello was abandoned ends at once, its connection closed."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei.bench.processes import ServerProcess, free_port
from hodei.server._connections import default_max_connections
from hodei.server._limits import ServerLimits
from hodei.testing import EmbeddedScheduler
from hodei.transport._codec import pb_grpc
from tests.helpers import wait_for, wait_until
from tests.integration.helpers import logged_events

OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


async def check(channel: grpc.aio.Channel) -> str:
    """The outcome of one health check on ``channel``: ``OK`` or the code's name."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    return "OK"


async def accepted(channel: grpc.aio.Channel) -> bool:
    return await check(channel) == "OK"


async def accepted_on_a_new_connection(target: str) -> bool:
    async with grpc.aio.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
        return await accepted(channel)


# Lowers the soft limit, then becomes the command it is given: a fresh interpreter with no threads. (A preexec_fn
# would run Python in a child forked from this process, whose gRPC threads may hold a lock the child then waits
# for: it hung once, before exec, and the scheduler never started.)
WITH_SOFT_LIMIT_512 = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (512, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


async def test_serve_raises_its_open_files_soft_limit_to_the_hard_limit_and_says_so(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log = tmp_path / "scheduler.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                *(sys.executable, "-c", WITH_SOFT_LIMIT_512, sys.executable),
                *("-m", "hodei", "scheduler", "serve", "--store", "memory", "--log-format", "json"),
                *("--listen", f"127.0.0.1:{free_port()}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        await wait_until(lambda: bool(logged_events(log, "scheduler.open_files_limit")), timeout=30)
        [event] = logged_events(log, "scheduler.open_files_limit")
        soft_now, hard_now = psutil.Process(process.pid).rlimit(psutil.RLIMIT_NOFILE)
    finally:
        process.terminate()
        process.wait(10)

    assert (soft_now, hard_now) == (hard, hard)
    assert event["soft_before"] == 512
    assert (event["soft"], event["hard"]) == (hard, hard)
    assert event["max_connections"] == default_max_connections(hard)
    assert event["level"] == "info"


def test_the_default_quota_keeps_a_reserve_below_the_limit() -> None:
    assert default_max_connections(20_000) == 19_000  # a twentieth
    assert default_max_connections(1_024) == 768  # at least 256
    assert default_max_connections(300) == 150  # never more than half
    assert default_max_connections(1) == 1
    assert ("grpc.max_allowed_incoming_connections", 7) in ServerLimits(max_connections=7).options()
    assert all(name != "grpc.max_allowed_incoming_connections" for name, _ in ServerLimits().options())
    with pytest.raises(ValueError, match="max_connections"):
        ServerLimits(max_connections=-1)


async def test_grpc_refuses_connections_beyond_the_quota_until_one_closes() -> None:
    async with EmbeddedScheduler(limits=ServerLimits(max_connections=3)) as scheduler:
        channels = [grpc.aio.insecure_channel(scheduler.target, options=[OWN_CONNECTION]) for _ in range(5)]
        try:
            held = [await check(channel) for channel in channels[:3]]
            beyond = [await check(channel) for channel in channels[3:]]
            await channels[0].close()
            # The freed place is taken once the server has seen the close: dialled afresh until then.
            await wait_for(lambda: accepted_on_a_new_connection(scheduler.target), timeout=10)
        finally:
            for channel in channels:
                await channel.close()

    assert held == ["OK"] * 3
    assert beyond == ["UNAVAILABLE"] * 2


async def test_serve_refuses_beyond_max_connections_with_a_metric_and_a_log_line(tmp_path: Path) -> None:
    metrics_port = free_port()
    log = tmp_path / "scheduler.log"
    process = ServerProcess.scheduler(
        *("--max-connections", "4", "--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-format", "json"),
        log=log,
    )
    async with process:
        await wait_until(lambda: bool(logged_events(log, "scheduler.open_files_limit")), timeout=30)
        channels = [grpc.aio.insecure_channel(process.address, options=[OWN_CONNECTION]) for _ in range(6)]
        try:
            # The start-up probe's connection may still hold a place for a moment.
            await wait_for(lambda: accepted(channels[0]), timeout=10)
            held = [await check(channel) for channel in channels[1:4]]
            beyond = [await check(channel) for channel in channels[4:]]
            await wait_until(lambda: bool(logged_events(log, "connections.refusing")), timeout=20)
            [refusing] = logged_events(log, "connections.refusing")
            scraped = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            for channel in channels:
                await channel.close()

    assert held == ["OK"] * 3
    assert beyond == ["UNAVAILABLE"] * 2
    assert refusing["max_connections"] == 4
    assert isinstance(refusing["sockets"], int) and refusing["sockets"] >= 4
    assert refusing["level"] == "warning"
    assert "hodei_connections_max 4.0" in scraped
    assert "hodei_connections_refusing 1.0" in scraped
    [open_event] = logged_events(log, "scheduler.open_files_limit")
    assert open_event["max_connections"] == 4


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_a_connect_whose_hello_is_abandoned_ends_at_once() -> None:
    async with (
        EmbeddedScheduler() as scheduler,
        grpc.aio.insecure_channel(scheduler.target, options=[OWN_CONNECTION]) as channel,
    ):
        call = pb_grpc.SchedulerServiceStub(channel).Connect()  # type: ignore[no-untyped-call]
        await wait_until(lambda: scheduler.stream_limits.open == 1, timeout=5)
        loop = asyncio.get_running_loop()
        abandoned = loop.time()
        call.cancel()
        await wait_until(lambda: scheduler.stream_limits.open == 0, timeout=5)
        stream_ended = loop.time() - abandoned

    assert stream_ended < 1  # at once, not after the 10 s hello timeout
