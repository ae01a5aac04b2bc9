"""``python -m hodei.bench.health_probe ADDRESS SECONDS [CA_FILE]``: health checks from a process of their own, so
that what they measure is the scheduler's responsiveness and not the load generator's; prints their latencies.
With ``CA_FILE`` it speaks TLS, trusting that CA."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei.bench.report import percentile
from hodei.security._tls import channel_credentials


async def probe(
    address: str, seconds: float, interval: float = 0.01, *, ca_file: str | None = None
) -> dict[str, float]:
    latencies: list[float] = []
    if ca_file is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, channel_credentials(ca_file))
    async with channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        print("ready", flush=True)  # the load starts once the probe is in place
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(interval)
    return {
        "health_checks": float(len(latencies)),
        "health_p50_ms": percentile(latencies, 0.5) * 1000,
        "health_p99_ms": percentile(latencies, 0.99) * 1000,
        "health_max_ms": max(latencies, default=0.0) * 1000,
    }


def main() -> None:
    ca_file = sys.argv[3] if len(sys.argv) > 3 else None
    print(json.dumps(asyncio.run(probe(sys.argv[1], float(sys.argv[2]), ca_file=ca_file))), flush=True)


if __name__ == "__main__":
    main()
