"""``hodei pools …`` and ``hodei control-plane run --pools`` as real subprocesses against a real scheduler.

Every process a test starts is ended by the test whatever happens, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hodei import SchedulerPortClient, WorkerStatus
from hodei.lifecycle import LivenessConfig
from hodei.pools import Requirements
from hodei.testing import EmbeddedScheduler
from tests.helpers import wait_for
from tests.integration.helpers import CLI_ENV, HODEI, end, run_hodei, table_rows

pytestmark = pytest.mark.timeout(120)

BURST = """\
[pools.burst]
kind = "dynamic"
provider = "process"
max = 3

[pools.burst.template]
cpu_cores = 1
memory_mb = 256
labels = { team = "[/]" }
"""


def fixed(size: int) -> str:
    return f"""\
[pools.fixed]
kind = "static"
provider = "process"
size = {size}

[pools.fixed.template]
cpu_cores = 1
memory_mb = 256
"""


async def test_pools_apply_list_and_status_show_the_pools_the_scheduler_has(
    scheduler: EmbeddedScheduler, tmp_path: Path
) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(BURST)

    applied = await run_hodei("pools", "apply", str(path), "--scheduler", scheduler.target)
    listed = await run_hodei("pools", "list", "--scheduler", scheduler.target)
    status = await run_hodei("pools", "status", "burst", "--scheduler", scheduler.target)
    missing = await run_hodei("pools", "status", "nope", "--scheduler", scheduler.target)

    row = ["burst", "dynamic", "process", "0/3", "0", "none", "0"]
    assert (applied.returncode, table_rows(applied.stdout), applied.stderr) == (0, [row], "")
    assert "1 pool(s) applied to " + scheduler.target in applied.stdout
    assert (listed.returncode, table_rows(listed.stdout)) == (0, [row])
    assert status.returncode == 0, status
    fields = {r[0]: r[1] for r in table_rows(status.stdout) if len(r) == 2}
    assert fields["kind"] == "dynamic"
    assert (fields["min"], fields["max"], fields["warm"]) == ("0", "3", "0")
    assert fields["labels"] == "team=[/]"  # shown as it is, never read as markup
    assert fields["by status"] == "none"
    assert (missing.returncode, missing.stdout) == (3, "")
    assert missing.stderr == f"error: no pool 'nope' on {scheduler.target}\n"


async def test_an_invalid_pools_file_is_refused_with_its_line_and_field_and_the_pools_stay(
    scheduler: EmbeddedScheduler, tmp_path: Path
) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(BURST)
    assert (await run_hodei("pools", "apply", str(path), "-s", scheduler.target)).returncode == 0
    path.write_text(BURST.replace("max = 3", "max = 3\nmin = 9"))

    refused = await run_hodei("pools", "apply", str(path), "-s", scheduler.target)

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.startswith(f"error: {path}:5: pools.burst.min: must not be above max (3), got 9")
    async with SchedulerPortClient(scheduler.target) as client:
        [pool] = await client.list_pools()
    assert (pool.spec.name, pool.spec.min, pool.spec.max) == ("burst", 0, 3)


async def test_pools_watch_through_a_pipe_prints_the_pools_then_a_line_per_event_and_exits_0_on_sigterm(
    scheduler: EmbeddedScheduler,
) -> None:
    async with SchedulerPortClient(scheduler.target) as client:
        await client.apply_pools("pools.toml", BURST)
        watch = await asyncio.create_subprocess_exec(
            HODEI, "pools", "watch", "-s", scheduler.target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            first = (await asyncio.wait_for(watch.stdout.readline(), 20)).decode()
            await wait_for(subscribed(scheduler), timeout=20)
            waiting = asyncio.create_task(client.acquire_worker("job-1", Requirements(pool="burst"), wait=30))
            demand = (await asyncio.wait_for(watch.stdout.readline(), 20)).decode()
            watch.send_signal(signal.SIGTERM)
            rest, stderr = await asyncio.wait_for(watch.communicate(), 15)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        finally:
            await end(watch)

    assert first == "pool 'burst' dynamic process 0/3 size=0 [none] waiting=0\n"
    assert demand.split(" ", 2)[2] == "demand pool=burst waiting=1 pools=burst\n"
    assert (watch.returncode, rest, stderr) == (0, b"", b"")


async def test_pools_watch_as_json_says_what_waits_in_each_demand_event(scheduler: EmbeddedScheduler) -> None:
    async with SchedulerPortClient(scheduler.target) as client:
        await client.apply_pools("pools.toml", BURST)
        watch = await asyncio.create_subprocess_exec(
            HODEI, "pools", "watch", "--json", "-s", scheduler.target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
        )  # fmt: skip
        try:
            assert watch.stdout is not None

            await wait_for(subscribed(scheduler), timeout=20)
            waiting = asyncio.create_task(client.acquire_worker("job-1", Requirements(pool="burst"), wait=30))
            event = json.loads(await asyncio.wait_for(watch.stdout.readline(), 20))
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            watch.send_signal(signal.SIGINT)
            await asyncio.wait_for(watch.communicate(), 15)
        finally:
            await end(watch)

    assert event["kind"] == "demand"
    assert [(d["waiting"], d["pools"]) for d in event["demand"]] == [(1, ["burst"])]
    assert watch.returncode == 0


def subscribed(scheduler: EmbeddedScheduler) -> Callable[[], Awaitable[bool]]:
    """Whether somebody (the watch under test) follows the scheduler's events."""

    async def condition() -> bool:
        return bool(scheduler.scheduler.events.watchers)

    return condition


LIVENESS = LivenessConfig(
    heartbeat_interval=0.2, lease_ttl=1.0, lost_grace=30.0, recovery_window=0.0, sweep_interval=0.05
)


async def test_control_plane_run_applies_its_pools_file_reapplies_it_on_change_and_refuses_an_invalid_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(fixed(1))
    logged: list[dict[str, object]] = []

    async def read_logs(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            with contextlib.suppress(ValueError):
                logged.append(json.loads(line))

    def said(event: str) -> list[dict[str, object]]:
        return [e for e in logged if e.get("event") == event]

    async with EmbeddedScheduler(liveness=LIVENESS) as scheduler:

        async def available(count: int) -> bool:
            records = [r for r in await scheduler.workers() if r.pool == "fixed"]
            return len(records) == count and all(
                r.connected and r.status is WorkerStatus.AVAILABLE for r in records
            )

        control_plane = await asyncio.create_subprocess_exec(
            HODEI, "control-plane", "run", "-s", scheduler.target, "--pools", str(path), "--interval", "0.1",
            "--agent-logs", str(tmp_path / "agents"), "--log-format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
        )  # fmt: skip
        assert control_plane.stderr is not None and control_plane.stdout is not None
        reading = asyncio.create_task(read_logs(control_plane.stderr))
        try:
            await wait_for(lambda: available(1), timeout=60, interval=0.1)
            path.write_text(fixed(2))
            await wait_for(lambda: available(2), timeout=60, interval=0.1)
            path.write_text(fixed(2).replace("size = 2", "size = -1"))

            async def refused() -> bool:
                return bool(said("pools.file_refused"))

            await wait_for(refused, timeout=30, interval=0.1)
            control_plane.send_signal(signal.SIGTERM)
            stdout = await asyncio.wait_for(control_plane.stdout.read(), 60)
            await asyncio.wait_for(control_plane.wait(), 60)
            await asyncio.wait_for(reading, 15)
        finally:
            reading.cancel()
            await end(control_plane)
        async with SchedulerPortClient(scheduler.target) as client:
            [pool] = await client.list_pools()
        left = [r.worker_id for r in await scheduler.workers()]

    assert control_plane.returncode == 0, logged[-5:]
    assert [e["pools"] for e in said("pools.applied")] == ["fixed", "fixed"]
    [refusal] = said("pools.file_refused")
    assert (refusal["file"], refusal["line"], refusal["field"]) == (str(path), 4, "pools.fixed.size")
    assert pool.spec.max == 2  # the invalid file changed nothing
    assert left == []  # its agents were retired with it
    assert "hodei control plane stopped" in stdout.decode()


async def test_control_plane_run_refuses_an_invalid_pools_file_before_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(fixed(2).replace("size = 2", "size = -1"))

    refused = await run_hodei("control-plane", "run", "-s", "127.0.0.1:1", "--pools", str(path), timeout=30)

    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.startswith(f"hodei control-plane: {path}:4: pools.fixed.size: must be between ")
