"""Helpers shared by the integration tests: the ``hodei`` console script run as a real subprocess (to
completion, or as a scheduler serving until the test ends it), and the replicas of one PostgreSQL registry.

Every process started here is ended by its caller (by its PID) whatever happens; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hodei.bench.processes import ServerProcess
from tests.helpers import free_port

HODEI = shutil.which("hodei") or str(Path(sys.executable).parent / "hodei")
SCHEDULER_SERVICE = "hodei.scheduler.v1.SchedulerService"

# What a pipe or a CI log gives the CLI: no terminal size, no forced colours.
CLI_ENV = {
    key: value
    for key, value in os.environ.items()
    if key not in {"COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}
} | {"NO_COLOR": "1"}


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


def logged_events(log: Path, name: str) -> list[dict[str, object]]:
    """The events called ``name`` among the JSON lines of ``log`` (none if it is not there yet). A line still
    being written is not one yet."""
    found: list[dict[str, object]] = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        with contextlib.suppress(ValueError):
            event = json.loads(line) if line.startswith("{") else None
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
    return found


async def end(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    """Kill the process if it still runs, reap it, and return what it printed."""
    if process.returncode is None:
        process.kill()
    return await process.communicate()


async def run_hodei(*args: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> Finished:
    """Run ``hodei ARGS`` to completion (with ``env`` added to :data:`CLI_ENV`); fail the test if it takes longer
    than ``timeout`` seconds."""
    process = await asyncio.create_subprocess_exec(
        HODEI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CLI_ENV | (env or {}),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        await end(process)
        raise AssertionError(f"hodei {' '.join(args)} still ran after {timeout} s") from None
    finally:
        if process.returncode is None:
            await end(process)
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())


def table_rows(output: str) -> list[list[str]]:
    """The body rows of a table printed by the CLI, as lists of cell texts."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


SERVING = health_pb2.HealthCheckResponse.SERVING


async def health_becomes_serving(target: str, service: str, *, timeout: float) -> None:
    """Watch ``service``'s health on ``target`` until it is SERVING; fail after ``timeout`` seconds.

    A watch sent while the scheduler starts may end UNAVAILABLE at once, though it waits for the channel to be
    ready (seen under load: the connection was taken while the new process listened but did not serve yet);
    it is watched again, until the deadline."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        while True:
            updates = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=service),
                timeout=max(deadline - time.monotonic(), 0.0),
                wait_for_ready=True,
            )
            try:
                async for update in updates:
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(update.status))
                    if update.status == SERVING:
                        return
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                    raise AssertionError(
                        f"{service} on {target} was not SERVING within {timeout} s (statuses seen: {seen}): "
                        f"{error.code()}"
                    ) from None
                seen.append("UNAVAILABLE")
                await asyncio.sleep(0.1)
                continue
            finally:
                updates.cancel()
            raise AssertionError(f"the health watch of {service} on {target} ended at {seen}")


@dataclass
class ServedScheduler:
    process: asyncio.subprocess.Process
    target: str

    async def listening_line(self, *, timeout: float = 5.0) -> str:
        """The first line the scheduler printed, read while it runs."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        return line.decode().rstrip("\n")

    async def stop(self, sig: signal.Signals = signal.SIGTERM, *, timeout: float = 15.0) -> Finished:
        """Send ``sig`` and wait for the scheduler to exit; what it printed from here on."""
        self.process.send_signal(sig)
        stdout, stderr = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode is not None
        return Finished(self.process.returncode, stdout.decode(), stderr.decode())


@contextlib.asynccontextmanager
async def scheduler_serve(
    *options: str, env: Mapping[str, str] = CLI_ENV, timeout: float = 20.0
) -> AsyncIterator[ServedScheduler]:
    """``hodei scheduler serve OPTIONS`` on a free loopback port, once its scheduler service is SERVING;
    killed at exit if it still runs."""
    target = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        HODEI,
        "scheduler",
        "serve",
        "--listen",
        target,
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    try:
        serving = asyncio.create_task(health_becomes_serving(target, SCHEDULER_SERVICE, timeout=timeout))
        exited = asyncio.create_task(process.wait())
        await asyncio.wait({serving, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():
            serving.cancel()
            _, stderr = await end(process)
            raise AssertionError(
                f"hodei scheduler serve {' '.join(options)} exited with {process.returncode} before serving: "
                f"{stderr.decode()}"
            )
        exited.cancel()
        serving.result()
        yield ServedScheduler(process, target)
    finally:
        await end(process)


# --- replicas of one PostgreSQL registry ---

HEARTBEAT, LEASE_TTL, SWEEP = 0.5, 1.5, 0.2
LIVENESS = (
    "--heartbeat-interval",
    str(HEARTBEAT),
    "--lease-ttl",
    str(LEASE_TTL),
    "--sweep-interval",
    str(SWEEP),
    "--recovery-window",
    "0",
)
OWN_SUBCHANNELS = (("grpc.use_local_subchannel_pool", 1),)


async def replica(dsn: str, log: Path) -> ServerProcess:
    return await ServerProcess.scheduler(*LIVENESS, store=dsn, log=log).start()
