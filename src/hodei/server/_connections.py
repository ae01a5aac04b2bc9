"""How many connections one scheduler process may hold, so that it never meets its file-descriptor limit.

Every connection is a file descriptor. A scheduler that reaches ``RLIMIT_NOFILE`` cannot accept, cannot open
its store's files, cannot answer ``/metrics`` and cannot log to a file; its agents then time out, dial again
and make it worse (a congestive collapse). So:

- at start, :func:`raise_open_files_limit` raises the soft limit to the hard one (the soft limit is often
  1,024; nothing but the hard limit is worth keeping below it), and ``hodei scheduler serve`` logs
  ``scheduler.open_files_limit`` with both values;
- gRPC refuses connections beyond a quota (the server option ``grpc.max_allowed_incoming_connections``: a
  connection beyond is accepted and closed at once, before any of its bytes are read, so the agent's dial
  fails with UNAVAILABLE and it backs off), which :func:`default_max_connections` derives from the limit minus
  a reserve for the store, the metrics endpoint, logs and gRPC's own descriptors;
- :class:`ConnectionWatch` samples the sockets open every few seconds (gRPC does not tell a server when it
  refused a connection) into ``hodei_sockets_open``, beside ``hodei_connections_max``; at the quota it sets
  ``hodei_connections_refusing`` to 1 and logs ``connections.refusing`` (at most once a minute while it lasts),
  and ``connections.accepting`` when it is below again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

__all__ = [
    "FD_RESERVE",
    "ConnectionWatch",
    "count_sockets",
    "default_max_connections",
    "raise_open_files_limit",
]

log = logging.getLogger(__name__)

# Descriptors kept back from connections: the store (SQLite's database, journal and shared memory; a
# PostgreSQL pool), the metrics endpoint and its scrapers, log files, gRPC's epoll, eventfds and listeners,
# and Python's own. At least this many, and a twentieth of the limit (1,000 of 20,000).
FD_RESERVE = 256
_FD_DIR = Path("/proc/self/fd")
_NR_OPEN = Path("/proc/sys/fs/nr_open")  # Linux's ceiling for an unlimited hard limit


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; ``(soft before, soft now, hard)``.

    An unlimited hard limit is read as the kernel's ceiling (``fs.nr_open``). A limit the kernel refuses to
    raise is kept (``soft now`` equals ``soft before``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, now, hard


def default_max_connections(open_files: int) -> int:
    """The connections one process with ``open_files`` descriptors may accept: the limit minus the reserve
    (:data:`FD_RESERVE`, or a twentieth of the limit if larger, but never more than half of it)."""
    reserve = min(max(FD_RESERVE, open_files // 20), open_files // 2)
    return max(1, open_files - reserve)


def count_sockets() -> int:
    """The sockets this process holds open (listeners, connections and the rest), read from /proc."""
    count = 0
    try:
        with os.scandir(_FD_DIR) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):  # closed since it was listed
                    if os.readlink(entry.path).startswith("socket:"):
                        count += 1
    except OSError:
        return 0
    return count


class ConnectionWatch:
    """Samples the sockets open every ``interval`` seconds against the connection quota ``max_connections``:
    the gauges and log lines of the module docstring. Reading /proc costs 2.5 ms per 1,000 descriptors, in a
    thread of its own. ``start`` and ``stop`` it; ``refusing`` is what the last sample said."""

    def __init__(
        self,
        max_connections: int,
        registry: CollectorRegistry,
        *,
        interval: float = 5.0,
        log_every: float = 60.0,
    ) -> None:
        self.max_connections = max_connections
        self.interval = interval
        self.log_every = log_every
        self.refusing = False
        self._limit = Gauge(
            "hodei_connections_max",
            "Connections this scheduler accepts at once; gRPC closes any beyond as soon as it accepts them.",
            registry=registry,
        )
        self._open = Gauge(
            "hodei_sockets_open",
            "Sockets this scheduler process holds open (connections, listeners, store, metrics), sampled.",
            registry=registry,
        )
        self._refusing = Gauge(
            "hodei_connections_refusing",
            "1 while the sockets open are at the connection quota, so that new connections are refused.",
            registry=registry,
        )
        self._limit.set(max_connections)
        self._task: asyncio.Task[None] | None = None
        self._logged_at = -float("inf")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hodei-connection-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self.observe(await asyncio.to_thread(count_sockets))
            await asyncio.sleep(self.interval)

    def observe(self, sockets: int) -> None:
        """Take one sample: ``sockets`` open now."""
        self._open.set(sockets)
        refusing = sockets >= self.max_connections
        fields = {"sockets": sockets, "max_connections": self.max_connections}
        now = time.monotonic()
        if refusing and (not self.refusing or now - self._logged_at >= self.log_every):
            self._logged_at = now
            log.warning(
                "connections.refusing",
                extra=fields
                | {
                    "reason": "at the connection quota: new connections are closed as soon as they are accepted"
                },
            )
        elif self.refusing and not refusing:
            log.info("connections.accepting", extra=fields)
        self.refusing = refusing
        self._refusing.set(int(refusing))
