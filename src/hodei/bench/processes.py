"""The processes a benchmark measures: a scheduler (or the raw baseline server) of its own, and its CPU and RSS."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from hodei._infra.directories import free_loopback_port as free_port

__all__ = ["ProcessProbe", "ServerProcess", "free_port"]


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_seconds: float
    rss: int
    at: float


class ProcessProbe:
    """CPU time and resident memory of one process."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)

    def sample(self) -> Usage:
        times = self._process.cpu_times()
        return Usage(times.user + times.system, self._process.memory_info().rss, time.perf_counter())

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
