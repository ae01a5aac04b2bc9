"""The shapes of load the benchmark's scenarios offer — a closed loop, all at once, an open loop — and the
:class:`Load` each measures. A shape knows nothing of what it calls: the scenarios give it the call."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from hodei.errors import RegistrationError, SchedulerError

__all__ = ["Load", "Progress", "all_at_once", "closed_loop", "open_loop"]

Progress = Callable[[int], None]


@dataclass
class Load:
    """Latencies (seconds), errors by kind, and the wall time of one run of load."""

    latencies: list[float]
    errors: Counter[str]
    elapsed: float
    extra: dict[str, float]


async def _timed(
    call: Callable[[int], Awaitable[object]], index: int, latencies: list[float], errors: Counter[str]
) -> None:
    started = time.perf_counter()
    try:
        await call(index)
    except (RegistrationError, SchedulerError) as error:
        errors[error.code.name] += 1
    except grpc.aio.AioRpcError as error:
        errors[error.code().name] += 1
    else:
        latencies.append(time.perf_counter() - started)


async def closed_loop(
    count: int, in_flight: int, call: Callable[[int], Awaitable[object]], progress: Progress
) -> Load:
    """``count`` calls, ``in_flight`` at a time: each of ``in_flight`` lanes starts its next call when its last
    one ends."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    next_index = iter(range(count))

    async def lane() -> None:
        for index in next_index:
            await _timed(call, index, latencies, errors)
            progress(1)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(in_flight, count)):
            group.create_task(lane())
    return Load(latencies, errors, time.perf_counter() - started, {})


async def all_at_once(count: int, call: Callable[[int], Awaitable[object]], progress: Progress) -> Load:
    """``count`` calls started together (a registration storm)."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def one(index: int) -> None:
        await _timed(call, index, latencies, errors)
        progress(1)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(one(index))
    return Load(latencies, errors, time.perf_counter() - started, {})


async def open_loop(
    rate: float, duration: float, call: Callable[[int], Awaitable[object]], progress: Progress
) -> Load:
    """Calls offered at ``rate`` per second for ``duration`` seconds, whether or not earlier ones finished;
    latency counts from the moment a call was due."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    count = int(rate * duration)
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()

    async def one(index: int, due: float) -> None:
        try:
            await call(index)
        except RegistrationError as error:
            errors[error.code.name] += 1
        else:
            latencies.append(loop.time() - due)
        progress(1)

    started = loop.time()
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            due = started + index * interval
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            group.create_task(one(index, due))
    return Load(latencies, errors, loop.time() - started, {"offered_per_second": rate})
