"""A pool's counts stay true across a SIGKILL of the control plane and a restart of the scheduler.

Real processes: ``hodei scheduler serve`` on a SQLite file, ``hodei control-plane run --pools`` with its agent
processes, and jobs acquired through the public client. The control plane dies with SIGKILL (its agents shut
down on their own, seeing their parent gone) and a new one takes over; the scheduler dies with SIGKILL and comes
back on the same port and file. Throughout, the pool never holds more live workers than its max, a new control
plane provisions only for what waits, and a BUSY worker stays bound to its job across the scheduler's restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from hodei import Job, JobOutcome, SchedulerError, SchedulerPortClient, SchedulerUnavailable, WorkerStatus
from hodei._infra.directories import log_tail
from hodei.pools import Requirements
from tests.helpers import free_port, wait_for, wait_until
from tests.integration.helpers import (
    CLI_ENV,
    HODEI,
    SCHEDULER_SERVICE,
    end,
    health_becomes_serving,
    logged_events,
)

T = TypeVar("T")
pytestmark = pytest.mark.timeout(240)

POOLS = """\
[pools.burst]
kind = "dynamic"
provider = "process"
min = 0
max = 3
max_provisioning = 3
idle_timeout = 600
scale_down_cooldown = 0

[pools.burst.template]
cpu_cores = 1
memory_mb = 256
"""
# Leases long enough for a loaded machine (agent processes starved of CPU still renew them), and a restarted
# scheduler gives its agents 20 s to come back: the test is about counts, not about expiry.
LIVENESS = (
    "--heartbeat-interval",
    "1",
    "--lease-ttl",
    "10",
    "--sweep-interval",
    "0.2",
    "--recovery-window",
    "20",
)


async def serve(target: str, store: Path, log: Path) -> asyncio.subprocess.Process:
    """``hodei scheduler serve`` on ``target``, once SERVING; a scheduler that exits first fails the test with
    what it said."""
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            HODEI, "scheduler", "serve", "--listen", target, "--store", f"sqlite:///{store}", *LIVENESS,
            stdout=output, stderr=output, env=CLI_ENV,
        )  # fmt: skip
    try:
        serving = asyncio.create_task(health_becomes_serving(target, SCHEDULER_SERVICE, timeout=90))
        exited = asyncio.create_task(process.wait())
        await asyncio.wait({serving, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():
            serving.cancel()
            said = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"the scheduler exited with {process.returncode}: {said[-2000:]}")
        exited.cancel()
        serving.result()
    except BaseException:
        await end(process)  # never left running by a test that failed
        raise
    return process


async def control_plane(target: str, pools: Path, logs: Path) -> asyncio.subprocess.Process:
    """``hodei control-plane run``; what it says goes to ``logs``.log (shown if the test fails)."""
    with logs.with_name(f"{logs.name}.log").open("ab") as output:
        return await asyncio.create_subprocess_exec(
            HODEI, "control-plane", "run", "-s", target, "--pools", str(pools), "--interval", "0.2",
            "--agent-logs", str(logs), stdout=output, stderr=output, env=CLI_ENV,
        )  # fmt: skip


class Watch:
    """Every live (not LOST) worker of the pool ever seen, and the most seen at once, sampled every 50 ms."""

    def __init__(self, client: SchedulerPortClient) -> None:
        self._client = client
        self.seen: set[str] = set()
        self.peak = 0
        self.timeline: list[str] = []  # when each worker was first seen, and as what

    async def run(self) -> None:
        while True:
            with contextlib.suppress(SchedulerError):  # the scheduler is down for a while
                page = await self._client.list_workers(page_size=1000, timeout=2)
                live = {
                    r.worker_id
                    for r in page.workers
                    if r.pool == "burst" and r.status is not WorkerStatus.LOST
                }
                for record in page.workers:
                    if record.worker_id in live and record.worker_id not in self.seen:
                        self.timeline.append(
                            f"{time.monotonic():.2f} {record.worker_id} {record.status.value}"
                        )
                self.seen |= live
                self.peak = max(self.peak, len(live))
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watching(client: SchedulerPortClient) -> AsyncIterator[Watch]:
    watch = Watch(client)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_pool_stays_within_max_and_bound_across_a_killed_control_plane_and_a_restarted_scheduler(
    tmp_path: Path,
) -> None:
    target = f"127.0.0.1:{free_port()}"
    store, pools = tmp_path / "registry.db", tmp_path / "pools.toml"
    pools.write_text(POOLS)
    scheduler = await serve(target, store, tmp_path / "scheduler.log")
    first = second = None
    try:
        async with SchedulerPortClient(target) as client, watching(client) as watch:
            first = await control_plane(target, pools, tmp_path / "agents-1")

            async def pool_is(**statuses: int) -> bool:
                with contextlib.suppress(SchedulerError):
                    pools = await client.list_pools(timeout=5)
                    return [{s.value: n for s, n in p.workers.items()} for p in pools] == [statuses]
                return False

            await wait_for(lambda: pool_is(), timeout=30, interval=0.1)  # the control plane applied its pools
            # Three short jobs: the pool grows from 0 to 3, then they idle.
            ran = await asyncio.gather(*(run_job(client, f"short-{i}", Job(("true",))) for i in range(3)))
            assert [r.outcome for r in ran] == [JobOutcome.SUCCEEDED] * 3, ran
            await wait_for(lambda: pool_is(available=3), timeout=30, interval=0.1)

            # The control plane dies: its agents see their parent gone and leave; the pool empties.
            marks = [f"{time.monotonic():.2f} short jobs done"]
            first.send_signal(signal.SIGKILL)
            await first.wait()
            await wait_for(lambda: pool_is(), timeout=60, interval=0.1)

            # A new control plane provisions only for what waits: two long jobs, two workers.
            marks.append(f"{time.monotonic():.2f} second control plane")
            second = await control_plane(target, pools, tmp_path / "agents-2")
            long = [
                await asyncio.wait_for(
                    client.acquire_worker(
                        f"long-{i}", Requirements(pool="burst"), job=Job(("sleep", "600")), wait=90
                    ),
                    120,
                )
                for i in range(2)
            ]
            await wait_for(lambda: pool_is(busy=2), timeout=30, interval=0.1)
            # Bound is not yet delivered: an agent that never got its job says at its hello that it runs none,
            # and the restarted scheduler rightly ends that job as lost. Both must run theirs first.
            jobs = {f"long-{i}" for i in range(2)}
            await wait_until(lambda: started_jobs(tmp_path / "agents-2") == jobs, timeout=60, interval=0.1)

            # The scheduler dies and comes back on the same port and file: both workers still bound.
            marks.append(f"{time.monotonic():.2f} scheduler killed")
            scheduler.send_signal(signal.SIGKILL)
            await scheduler.wait()
            scheduler = await serve(target, store, tmp_path / "scheduler.log")
            for acquired in long:
                view = await answered(
                    lambda a=acquired: client.renew_assignment(a.assignment.assignment_id, timeout=5)
                )
                # Still bound (to the same worker and job; its incarnation is the reconnected agent's).
                assert view.result is None
                assert (view.assignment.job_id, view.assignment.worker_id) == (
                    acquired.assignment.job_id,
                    acquired.assignment.worker_id,
                )

            async def agents_back() -> bool:
                page = await client.list_workers(page_size=1000, timeout=5)
                bound = {r.worker_id: r for r in page.workers if r.assignment is not None}
                return {w: (r.status, r.connected) for w, r in bound.items()} == {
                    a.record.worker_id: (WorkerStatus.BUSY, True) for a in long
                }

            try:
                await wait_for(agents_back, timeout=60, interval=0.1)
            except AssertionError:  # say what the registry holds, and what each process said
                page = await client.list_workers(page_size=1000, timeout=5)
                held = sorted((r.worker_id, r.status.value, r.connected, r.assignment) for r in page.workers)
                agents = [
                    f"{path.name}:\n{log_tail(path, 10)}"
                    for path in sorted((tmp_path / "agents-2").glob("*"))
                ]
                tails = _tails(tmp_path / "agents-1", tmp_path / "agents-2")
                said = "\n".join(
                    [*marks, *map(str, held), log_tail(tmp_path / "scheduler.log", 40), *tails, *agents]
                )
                raise AssertionError(f"the long jobs' agents were not back within 60 s:\n{said}") from None
            await wait_for(lambda: pool_is(busy=2), timeout=30, interval=0.1)
            for acquired in long:
                await client.release_worker(acquired.assignment.assignment_id, outcome=JobOutcome.CANCELLED)

        # Three for the short jobs, two for the long ones: none provisioned beyond.
        said = "\n".join(
            [*sorted(marks + watch.timeline), *_tails(tmp_path / "agents-1", tmp_path / "agents-2")]
        )
        assert watch.peak <= 3, said
        assert len(watch.seen) == 5, said
    finally:
        for process in (second, first):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 60)
                await end(process)
        await end(scheduler)


async def answered(call: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """``call()``'s answer once the scheduler answers (its client reconnects after a restart), within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except SchedulerUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def run_job(client: SchedulerPortClient, job_id: str, job: Job) -> object:
    acquired = await client.acquire_worker(job_id, Requirements(pool="burst"), job=job, wait=90, timeout=120)
    while True:
        view = await client.renew_assignment(acquired.assignment.assignment_id, wait=10)
        if view.result is not None:
            return view.result


def started_jobs(directory: Path) -> set[str]:
    """The jobs the agents logging in ``directory`` have started (their ``job.started`` lines)."""
    return {str(e["job_id"]) for path in directory.glob("*.log") for e in logged_events(path, "job.started")}


def _tails(*directories: Path) -> list[str]:
    """The last lines each control plane said about its pool (provisions, failures, scale decisions)."""
    lines = []
    for directory in directories:
        log = directory.with_name(f"{directory.name}.log")
        if log.is_file():
            said = log.read_text(errors="replace").splitlines()
            lines += [f"{directory.name}: {line[:300]}" for line in said if "pool" in line][-40:]
    return lines
