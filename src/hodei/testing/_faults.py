"""The faults of a :class:`~hodei.testing.FaultProxy`: what is switched on now, and the waits a chunk goes through
before it is forwarded — its latency, its share of the bandwidth, the end of a black hole.

The writers of every connection read the faults at every chunk; every change wakes the writers that wait, so
that a fault bites the connections already open as well as new ones. Used from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

__all__ = ["WAYS", "Chunk", "Direction", "Faults", "Way", "ways"]

Direction = Literal["upstream", "downstream", "both"]
Way = Literal["upstream", "downstream"]
WAYS: tuple[Way, Way] = ("upstream", "downstream")

_BURST_SECONDS = 0.05  # a bandwidth limit lets through bursts of at most this much time's worth of bytes


@dataclass(slots=True)
class Chunk:
    data: bytes
    arrived: float
    jitter_fraction: float  # in [0, 1): this chunk's share of the jitter, drawn once


@dataclass(slots=True)
class _Bucket:
    """A token bucket: ``rate`` bytes a second (``None``: unlimited), at most ``_BURST_SECONDS`` of them saved."""

    rate: float | None = None
    tokens: float = 0.0
    stamp: float = 0.0

    def limit(self, rate: float | None, now: float) -> None:
        self.rate, self.tokens, self.stamp = rate, 0.0, now

    def take(self, wanted: int, now: float) -> tuple[int, float]:
        """``(granted, 0)`` with ``0 < granted <= wanted``, or ``(0, seconds to wait)`` before asking again."""
        if self.rate is None:
            return wanted, 0.0
        capacity = max(1, int(self.rate * _BURST_SECONDS))
        self.tokens = min(float(capacity), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(wanted, capacity)
        if self.tokens >= need:
            self.tokens -= need
            return need, 0.0
        return 0, (need - self.tokens) / self.rate


class Faults:
    """Latency, jitter and bandwidth per direction, and the black hole: set by the proxy's methods, waited out
    by its writers (:meth:`hold`)."""

    def __init__(self) -> None:
        self._delay: dict[Way, float] = dict.fromkeys(WAYS, 0.0)
        self._jitter: dict[Way, float] = dict.fromkeys(WAYS, 0.0)
        self._buckets: dict[Way, _Bucket] = {way: _Bucket() for way in WAYS}
        self._black_hole = False
        self._changed = asyncio.Event()

    def delay(self, seconds: float, jitter: float, direction: Direction) -> None:
        if seconds < 0 or jitter < 0:
            raise ValueError(f"delay and jitter must not be negative, got {seconds} and {jitter}")
        for way in ways(direction):
            self._delay[way] = seconds
            self._jitter[way] = jitter
        self.wake()

    def limit_bandwidth(self, bytes_per_second: float | None, direction: Direction) -> None:
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be positive or None, got {bytes_per_second}")
        now = asyncio.get_running_loop().time()
        for way in ways(direction):
            self._buckets[way].limit(bytes_per_second, now)
        self.wake()

    def black_hole(self, on: bool) -> None:
        self._black_hole = on
        self.wake()

    def heal(self) -> None:
        """No latency, no bandwidth limit, no black hole."""
        for way in WAYS:
            self._delay[way] = self._jitter[way] = 0.0
            self._buckets[way].rate = None
        self._black_hole = False
        self.wake()

    async def hold(self, chunk: Chunk, way: Way, wanted: int) -> int:
        """Wait until the faults let (part of) ``chunk`` go ``way``: its latency over, out of any black hole;
        how many of the ``wanted`` bytes the bandwidth lets through now."""
        await self._latency(chunk, way)
        granted = await self._bandwidth(way, wanted)
        while self._black_hole:
            await self._until_changed(None)
        return granted

    async def _latency(self, chunk: Chunk, way: Way) -> None:
        loop = asyncio.get_running_loop()
        while (
            left := chunk.arrived + self._delay[way] + chunk.jitter_fraction * self._jitter[way] - loop.time()
        ) > 0:
            await self._until_changed(left)

    async def _bandwidth(self, way: Way, wanted: int) -> int:
        loop = asyncio.get_running_loop()
        while True:
            granted, wait = self._buckets[way].take(wanted, loop.time())
            if granted:
                return granted
            await self._until_changed(wait)

    def wake(self) -> None:
        """Wake every writer waiting on a fault, to look at the faults again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until_changed(self, timeout: float | None) -> None:
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await changed.wait()


def ways(direction: Direction) -> tuple[Way, ...]:
    if direction == "both":
        return WAYS
    if direction in WAYS:
        return (direction,)
    raise ValueError(f"direction must be 'upstream', 'downstream' or 'both', got {direction!r}")
