"""The processes a benchmark measures: a scheduler (or the raw baseline server) of its own; its CPU and RSS, its
connections and open files, and its ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from hodei._infra.directories import free_loopback_port as free_port

__all__ = [
    "ProcessProbe",
    "ServerProcess",
    "Usage",
    "free_port",
    "heartbeat_buckets",
    "histogram_quantile",
    "open_files",
    "scrape",
    "tcp_connections",
    "timed_scrape",
]


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_seconds: float
    rss: int
    at: float


class ProcessProbe:
    """CPU time and resident memory of one process; ``with_children``, of the processes it started too (a
    SQLite store's writer): what a server costs the machine."""

    def __init__(self, pid: int, *, with_children: bool = False) -> None:
        self._process = psutil.Process(pid)
        self._with_children = with_children

    def sample(self) -> Usage:
        times = self._process.cpu_times()
        cpu = times.user + times.system
        rss = self._process.memory_info().rss
        if not self._with_children:
            return Usage(cpu, rss, time.perf_counter())
        cpu += times.children_user + times.children_system  # the children that ended
        for child in self._process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child_times = child.cpu_times()
                cpu += child_times.user + child_times.system
                rss += child.memory_info().rss
        return Usage(cpu, rss, time.perf_counter())

    @staticmethod
    def cpu_percent(before: Usage, after: Usage) -> float:
        elapsed = after.at - before.at
        return (after.cpu_seconds - before.cpu_seconds) / elapsed * 100 if elapsed > 0 else 0.0


class ServerProcess:
    """A server started as ``python -m ...`` on a free loopback port, stopped (and reaped) on exit."""

    def __init__(
        self, module_args: Sequence[str], *, port: int | None = None, log: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._args = [arg.replace("{address}", self.address) for arg in module_args]
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def scheduler(
        cls, *extra: str, store: str = "memory", port: int | None = None, log: Path | None = None
    ) -> ServerProcess:
        """``hodei scheduler serve`` on ``store``; ``log`` (appended to) keeps what it says on stderr."""
        args = ["hodei", "scheduler", "serve", "--listen", "{address}", "--store", store, *extra]
        return cls(args, port=port, log=log)

    @classmethod
    def baseline(cls) -> ServerProcess:
        return cls(["hodei.bench.baseline", "--listen", "{address}"])

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, *, timeout: float = 30.0) -> ServerProcess:
        with contextlib.ExitStack() as files:
            stderr = files.enter_context(self._log.open("ab")) if self._log else subprocess.DEVNULL
            self._process = subprocess.Popen(  # noqa: ASYNC220 - returns once forked; the server outlives the loop
                [sys.executable, "-m", *self._args], stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + timeout
        while not await self._listening():
            if self._process.poll() is not None:
                raise RuntimeError(f"{' '.join(self._args)} exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(self._args)} did not listen within {timeout:g} s")
            await asyncio.sleep(0.05)
        return self

    async def _listening(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup, no goodbye; reaped before this returns."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    async def __aenter__(self) -> ServerProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


async def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the scheduler's ``/metrics``: name -> labels -> value."""
    return (await timed_scrape(url))[0]


async def timed_scrape(url: str) -> tuple[dict[str, dict[tuple[tuple[str, str], ...], float]], float, float]:
    """:func:`scrape`, with when the samples were read (``time.perf_counter()`` halfway through the request) and
    how long the request took: a busy scheduler may take a while to answer, and counters read at its two ends
    are a window's only if the window is timed where they were read."""

    def fetch() -> tuple[str, float, float]:
        sent = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = str(answer.read().decode())
        answered = time.perf_counter()
        return text, (sent + answered) / 2, answered - sent

    text, at, took = await asyncio.to_thread(fetch)
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples, at, took


def heartbeat_buckets(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]],
) -> list[tuple[float, float]]:
    """The cumulative buckets of the scheduler's ``hodei_heartbeat_lag_seconds``, from a :func:`scrape`."""
    found = samples.get("hodei_heartbeat_lag_seconds_bucket", {})
    return sorted((float(dict(labels)["le"]), value) for labels, value in found.items())


def histogram_quantile(fraction: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative ``(upper bound, count)`` buckets: linear within the
    bucket the rank falls in. NaN without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = fraction * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


# One socket of /proc/PID/net/tcp{,6}: its state and its inode (0 for a socket no process holds).
_SOCKET = re.compile(rb"^ *\d+: \S+ \S+ ([0-9A-F]{2}) \S+ \S+ \S+ +\d+ +\d+ (\d+)", re.MULTILINE)
_LISTEN = b"0A"


def tcp_connections(pid: int) -> int:
    """The TCP connections ``pid`` holds open, listening sockets not counted (0 when it is gone): the sockets
    among its file descriptors, found in the kernel's tables.

    What psutil's ``net_connections`` counts, without decoding every socket of the machine into Python objects:
    that took a third of a core, taken from the scheduler under test, while 10,000 agents (20,000 sockets on
    loopback) came back after a restart. Counting every socket on the scheduler's port instead is not the same:
    it also counts those a killed scheduler still holds while it dies."""
    held: set[bytes] = set()
    try:
        with os.scandir(f"/proc/{pid}/fd") as descriptors:
            for descriptor in descriptors:
                with contextlib.suppress(OSError):
                    target = os.readlink(descriptor.path)
                    if target.startswith("socket:["):
                        held.add(target[8:-1].encode())
    except OSError:  # gone
        return 0
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            sockets = _SOCKET.findall(Path(f"/proc/{pid}/net/{table}").read_bytes())
            count += sum(1 for state, inode in sockets if state != _LISTEN and inode in held)
    return count


def open_files(pid: int) -> int:
    """The file descriptors ``pid`` holds open (0 when it is gone)."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).num_fds()
    return 0
