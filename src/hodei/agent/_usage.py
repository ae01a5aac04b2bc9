"""What the agent reports of its host with each heartbeat: CPU and memory in use, sampled at most once a second
per process.

The slots of one process (``hodei agent --spawn N``) all report the same host, so they share one sample: a
process of 2,500 slots spent a sixth of its time reading ``/proc`` for the heartbeats. It also keeps psutil's
``cpu_percent`` meaningful, which measures since its previous call: without the shared sample, since another
slot's heartbeat a few milliseconds before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from hodei.domain import ResourceUsage

__all__ = ["HostUsage", "host_usage"]


def _read() -> ResourceUsage:
    return ResourceUsage(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_mb=int(psutil.virtual_memory().used // (1024 * 1024)),
    )


class HostUsage:
    """:meth:`sample` is ``read()``'s last result while younger than ``ttl`` seconds of ``clock``, else a new one."""

    def __init__(
        self,
        read: Callable[[], ResourceUsage] = _read,
        *,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl = ttl
        self._clock = clock
        self._last: tuple[float, ResourceUsage] | None = None

    def sample(self) -> ResourceUsage:
        now = self._clock()
        if self._last is None or now - self._last[0] >= self._ttl:
            self._last = (now, self._read())
        return self._last[1]


host_usage = HostUsage()
"""The process's one sample, which every agent in it reports by default."""
