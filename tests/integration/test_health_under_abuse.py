"""1,000 idle connections and a flood of streams leave a scheduler process answering health checks in 100 ms.

The scheduler runs as ``hodei scheduler serve`` in a process of its own; this process plays the abusers (raw
sockets that connect and send nothing, gRPC channels that connect and stay idle, and Connect streams far beyond
the cap for one address) and then measures health checks on a connection of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei._infra.fixtures import skip_or_fail_for_missing
from hodei.transport._codec import pb_grpc
from tests.helpers import free_port, wait_until
from tests.integration.helpers import CLI_ENV, HODEI

IDLE_SOCKETS = 1_000  # raw TCP connections that never send a byte
IDLE_CHANNELS = 1_000  # gRPC connections, handshake done, no call
FLOOD_CHANNELS = 4
FLOOD_STREAMS_PER_CHANNEL = 300
MAX_STREAMS_PER_PEER = 500
HEALTH_CHECKS = 30
HEALTH_BOUND = 0.100  # seconds, each
FDS_NEEDED = 4 * (IDLE_SOCKETS + IDLE_CHANNELS) + 512  # both ends live in processes with this limit


@pytest.fixture
def enough_file_descriptors() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= FDS_NEEDED:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < FDS_NEEDED:
        skip_or_fail_for_missing(f"{FDS_NEEDED} open files (RLIMIT_NOFILE); the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (FDS_NEEDED, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.asynccontextmanager
async def scheduler_process() -> AsyncIterator[tuple[str, psutil.Process]]:
    target = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [HODEI, "scheduler", "serve", "--listen", target, "--store", "memory", "--log-level", "error",
         "--max-streams-per-peer", str(MAX_STREAMS_PER_PEER)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=CLI_ENV, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 20)
        assert line.startswith(f"hodei scheduler listening on {target}"), line
        yield target, psutil.Process(process.pid)
    finally:
        process.kill()
        process.wait(10)


async def health_latencies(target: str, count: int) -> list[float]:
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connected; not measured
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            latencies.append(time.perf_counter() - started)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
    return latencies


@pytest.mark.alone
async def test_health_answers_within_100_ms_beside_1000_idle_connections_and_a_stream_flood(
    enough_file_descriptors: None,
) -> None:
    sockets: list[socket.socket] = []
    channels: list[grpc.aio.Channel] = []
    streams: list[Any] = []
    async with scheduler_process() as (target, scheduler):
        host, port = target.rsplit(":", 1)
        try:
            baseline = await health_latencies(target, HEALTH_CHECKS)
            # Idle gRPC connections: handshake done, then nothing.
            for _ in range(IDLE_CHANNELS):
                channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                channels.append(channel)
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 60)
            # A flood of Connect streams, far beyond the cap for one address, none of which says hello.
            for _ in range(FLOOD_CHANNELS):
                channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                channels.append(channel)
                stub = pb_grpc.SchedulerServiceStub(channel)  # type: ignore[no-untyped-call]
                streams += [stub.Connect() for _ in range(FLOOD_STREAMS_PER_CHANNEL)]
            expected_refusals = len(streams) - MAX_STREAMS_PER_PEER
            await wait_until(lambda: sum(s.done() for s in streams) >= expected_refusals, timeout=8)
            # Raw sockets last: the scheduler closes them after its handshake timeout (10 s).
            for _ in range(IDLE_SOCKETS):
                sockets.append(socket.create_connection((host, int(port)), timeout=5))
            await wait_until(lambda: established(scheduler) >= IDLE_SOCKETS + IDLE_CHANNELS, timeout=8)

            under_abuse = await health_latencies(target, HEALTH_CHECKS)
            connections = established(scheduler)
            refused = [s for s in streams if s.done()]
            codes = {await s.code() for s in refused}
        finally:
            for stream in streams:
                stream.cancel()
            for sock in sockets:
                sock.close()
            await asyncio.gather(*(c.close() for c in channels))

    def ms(values: list[float]) -> str:
        return ", ".join(f"{v * 1000:.1f}" for v in sorted(values))

    print(f"\nhealth check latencies (ms), quiet scheduler: max {max(baseline) * 1000:.1f}; {ms(baseline)}")
    print(
        f"with {connections} connections open to it ({IDLE_SOCKETS} silent sockets, {IDLE_CHANNELS} idle gRPC "
        f"connections), {len(streams) - len(refused)} streams held, {len(refused)} refused: "
        f"max {max(under_abuse) * 1000:.1f}; {ms(under_abuse)}"
    )
    assert connections >= IDLE_SOCKETS + IDLE_CHANNELS
    assert len(refused) == expected_refusals
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(latency < HEALTH_BOUND for latency in under_abuse), ms(under_abuse)


def established(process: psutil.Process) -> int:
    return sum(c.status == psutil.CONN_ESTABLISHED for c in process.net_connections(kind="tcp"))
