"""The ``hodei`` console script, run as real subprocesses against a real scheduler on loopback.

Every process a test starts is ended by the test (by its PID) whatever happens, and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import hodei
from hodei import SchedulerPortClient, UnregistrationStatus
from tests.helpers import free_port, make_worker
from tests.integration.helpers import CLI_ENV, HODEI, SCHEDULER_SERVICE, run_hodei, table_rows


@dataclass(frozen=True)
class ServedScheduler:
    process: subprocess.Popen[str]
    target: str


@contextlib.contextmanager
def scheduler_serve() -> Iterator[ServedScheduler]:
    """``hodei scheduler serve`` on a free loopback port, once its health check says the scheduler service is
    SERVING (set last, when the server is ready); killed at exit."""
    target = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [HODEI, "scheduler", "serve", "--listen", target, "--store", "memory"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CLI_ENV,
        text=True,
    )
    try:
        with grpc.insecure_channel(target) as channel:
            updates = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SCHEDULER_SERVICE), timeout=20, wait_for_ready=True
            )
            try:
                for update in updates:
                    if update.status == health_pb2.HealthCheckResponse.SERVING:
                        break
            except grpc.RpcError as error:
                raise AssertionError(
                    f"hodei scheduler serve on {target} did not become SERVING "
                    f"(exit code {process.poll()}): {error.code()}"
                ) from None
            finally:
                updates.cancel()
        yield ServedScheduler(process, target)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=15)


@pytest.fixture(scope="module")
def shared_scheduler() -> Iterator[ServedScheduler]:
    with scheduler_serve() as served:
        yield served


@pytest.fixture
async def scheduler_target(shared_scheduler: ServedScheduler) -> str:
    """The address of the module's ``hodei scheduler serve``, its registry emptied for this test."""
    assert shared_scheduler.process.poll() is None, "hodei scheduler serve has exited"
    async with SchedulerPortClient(shared_scheduler.target) as client:
        for record in (await client.list_workers(page_size=1000)).workers:
            await client.unregister_worker(record.worker_id)
    return shared_scheduler.target


async def register_two_workers(target: str) -> None:
    async with SchedulerPortClient(target) as client:
        await client.register_worker(make_worker("cli-worker-a", labels={"team": "red"}))
        await client.register_worker(make_worker("cli-worker-b", labels={"team": "blue"}))


ROW_A = ["cli-worker-a", "available", "docker", "2", "4096", "default", "team=red", "none"]
ROW_B = ["cli-worker-b", "available", "docker", "2", "4096", "default", "team=blue", "none"]


async def test_workers_list_prints_every_worker_registered_with_scheduler_serve_as_available(
    scheduler_target: str,
) -> None:
    await register_two_workers(scheduler_target)

    listed = await run_hodei("workers", "list", "--scheduler", scheduler_target)

    assert listed.returncode == 0, listed
    assert f"2 worker(s) on {scheduler_target}" in listed.stdout
    assert table_rows(listed.stdout) == [ROW_A, ROW_B]


async def test_workers_list_filters_by_status_and_by_labels(scheduler_target: str) -> None:
    await register_two_workers(scheduler_target)
    target = scheduler_target

    available, busy, red, green = await asyncio.gather(
        run_hodei("workers", "list", "--scheduler", target, "--status", "available"),
        run_hodei("workers", "list", "--scheduler", target, "--status", "busy"),
        run_hodei("workers", "list", "--scheduler", target, "--labels", "team=red"),
        run_hodei("workers", "list", "--scheduler", target, "--labels", "team=green"),
    )

    assert [r.returncode for r in (available, busy, red, green)] == [0, 0, 0, 0]
    assert table_rows(available.stdout) == [ROW_A, ROW_B]
    assert table_rows(busy.stdout) == []
    assert f"0 worker(s) on {target}" in busy.stdout
    assert table_rows(red.stdout) == [ROW_A]
    assert f"1 worker(s) on {target}" in red.stdout
    assert table_rows(green.stdout) == []


async def test_workers_list_prints_every_field_in_full_when_its_output_goes_to_a_pipe(
    scheduler_target: str,
) -> None:
    # Worker ids as the management service makes them (worker-<12 hex digits>).
    async with SchedulerPortClient(scheduler_target) as client:
        await client.register_worker(make_worker("worker-1ddfb00ab69e", labels={"team": "red"}))
        await client.register_worker(make_worker("worker-24754c8ed09d", labels={"team": "blue"}))

    listed = await run_hodei("workers", "list", "--scheduler", scheduler_target)

    assert listed.returncode == 0, listed
    assert table_rows(listed.stdout) == [
        ["worker-1ddfb00ab69e", "available", "docker", "2", "4096", "default", "team=red", "none"],
        ["worker-24754c8ed09d", "available", "docker", "2", "4096", "default", "team=blue", "none"],
    ]


async def test_workers_unregister_prints_success_and_then_not_registered_with_exit_code_3(
    scheduler_target: str,
) -> None:
    await register_two_workers(scheduler_target)
    target = scheduler_target

    first = await run_hodei("workers", "unregister", "cli-worker-a", "--scheduler", target)
    second = await run_hodei("workers", "unregister", "cli-worker-a", "--scheduler", target)

    assert (first.returncode, first.stdout.strip()) == (0, "cli-worker-a: success")
    assert (second.returncode, second.stdout.strip()) == (3, "cli-worker-a: not_registered")
    async with SchedulerPortClient(target) as client:
        assert await client.get_worker("cli-worker-a") is None
        assert await client.get_worker("cli-worker-b") is not None
        assert await client.unregister_worker("cli-worker-a") is UnregistrationStatus.NOT_REGISTERED


def test_sigterm_stops_scheduler_serve_with_exit_code_zero() -> None:
    with scheduler_serve() as served:
        served.process.send_signal(signal.SIGTERM)
        stdout, stderr = served.process.communicate(timeout=15)

        assert served.process.returncode == 0, stderr
        assert stdout.splitlines() == [
            f"hodei scheduler listening on {served.target} (store: memory)",
            "hodei scheduler stopped",
        ]
        assert "Task was destroyed but it is pending" not in stderr  # every task started is ended on stop


async def test_workers_list_where_nothing_listens_exits_1_promptly_with_an_error_line() -> None:
    target = f"127.0.0.1:{free_port()}"

    # Well under the CLI's own 10 s deadline: failing to connect must be reported at once, not waited out.
    listed = await run_hodei("workers", "list", "--scheduler", target, timeout=8)

    assert listed.returncode == 1
    output = listed.stdout + listed.stderr
    assert any(line.startswith("error: UNAVAILABLE") for line in output.splitlines()), output
    assert "Traceback" not in output


async def test_demo_with_three_workers_exits_0_and_prints_summary_ok() -> None:
    demo = await run_hodei("demo", "--workers", "3")

    assert demo.returncode == 0, demo
    assert any(line.startswith("summary OK: 3 provisioned, 3 AVAILABLE") for line in demo.stdout.splitlines())
    assert "FAILED" not in demo.stdout
    assert "Task was destroyed but it is pending" not in demo.stderr
    assert re.search(r"^   metrics: http://127\.0\.0\.1:\d+/metrics$", demo.stdout, re.MULTILINE), demo.stdout


async def test_the_pools_demo_grows_a_pool_from_zero_runs_the_burst_and_shrinks_it_back() -> None:
    demo = await run_hodei("demo", "--pools", "--workers", "4", timeout=120)

    assert demo.returncode == 0, demo
    lines = demo.stdout.splitlines()
    assert any(line.endswith("first worker provisioned") for line in lines), demo.stdout
    assert any(line.endswith("4 jobs running on 4 workers") for line in lines), demo.stdout
    assert any("4/4 jobs succeeded; e.g. job demo-job-" in line for line in lines), demo.stdout
    assert any(line.endswith("the pool has 0 workers; 0 agent processes left") for line in lines), demo.stdout
    assert any(
        line.startswith("summary OK: grew from 0 on 4 waiting jobs, ran them (4 succeeded), shrank back to 0")
        for line in lines
    ), demo.stdout
    assert "Task was destroyed but it is pending" not in demo.stderr


async def test_version_prints_the_package_version() -> None:
    version = await run_hodei("version")

    assert version.returncode == 0
    assert version.stdout.strip() == "0.1.0" == hodei.__version__
