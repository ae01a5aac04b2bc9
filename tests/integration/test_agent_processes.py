"""Agents as real processes: what happens when processes die, are stopped, or lose their scheduler."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from hodei import DynamicWorkerConfig, SchedulerError, SchedulerPortClient, WorkerStatus, WorkerType
from hodei.lifecycle import LivenessConfig, WorkerEventKind
from hodei.management import WorkerManagementConfig, WorkerManagementService
from hodei.providers import ProcessProvider
from hodei.registration import RegistrationConfig, WorkerRegistrationAdapter
from hodei.testing import EmbeddedScheduler
from tests.helpers import connected, free_port, wait_for

LIVENESS = LivenessConfig(
    heartbeat_interval=0.2, lease_ttl=1.0, lost_grace=1.0, recovery_window=0.0, sweep_interval=0.05
)
CONFIG = DynamicWorkerConfig(
    worker_type=WorkerType.PROCESS, cpu_cores=1, memory_mb=256, labels={"suite": "p"}
)


def hodei_command() -> list[str]:
    return [sys.executable, "-m", "hodei"]


@pytest_asyncio.fixture
async def provider(tmp_path: Path) -> AsyncIterator[ProcessProvider]:
    started = ProcessProvider("unset", log_dir=tmp_path / "agents", stop_grace=5.0)
    yield started
    await started.aclose()
    assert no_children_of_ours(), "an agent process outlived the test"


def no_children_of_ours() -> bool:
    return not [p for p in psutil.Process().children(recursive=True) if "agent" in " ".join(p.cmdline())]


async def test_provisioned_agent_process_registers_and_is_available_with_the_same_id(
    provider: ProcessProvider,
) -> None:
    async with (
        EmbeddedScheduler(liveness=LIVENESS) as scheduler,
        SchedulerPortClient(scheduler.target) as port,
    ):
        provider.schedulers = (scheduler.target,)
        service = WorkerManagementService(provider, registration=WorkerRegistrationAdapter(port))

        worker = await service.provision_worker(CONFIG)
        await wait_for(lambda: connected(scheduler, worker.worker_id), timeout=15)

        record = await scheduler.get_worker(worker.worker_id)
        assert record is not None
        assert record.worker_type is WorkerType.PROCESS
        assert (record.capabilities.cpu_cores, record.capabilities.memory_mb) == (1, 256)
        assert record.labels == {"suite": "p", "hodei.owner": "hodei"}
        assert record.incarnation > 0  # the agent's own registration took over the control plane's
        assert [w.worker_id for w in await scheduler.workers()] == [worker.worker_id]
        assert await provider.status(worker.worker_id) is WorkerStatus.AVAILABLE


async def test_an_agent_killed_with_sigkill_is_lost_within_its_ttl_and_removed_after_the_grace(
    provider: ProcessProvider,
) -> None:
    async with EmbeddedScheduler(liveness=LIVENESS) as scheduler:
        provider.schedulers = (scheduler.target,)
        await provider.provision("victim", CONFIG)
        await wait_for(lambda: connected(scheduler, "victim"), timeout=15)
        watcher = scheduler.scheduler.events.watch()
        pid = provider.pid("victim")
        assert pid is not None

        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        kinds: list[WorkerEventKind] = []
        lost_after = removed_after = 0.0
        async with asyncio.timeout(10):
            async for event in watcher:
                kinds.append(event.kind)
                if event.kind is WorkerEventKind.LOST:
                    lost_after = time.monotonic() - killed_at
                if event.kind is WorkerEventKind.EXPIRED:
                    removed_after = time.monotonic() - killed_at
                    break

    assert kinds == [WorkerEventKind.DISCONNECTED, WorkerEventKind.LOST, WorkerEventKind.EXPIRED]
    bound = LIVENESS.lease_ttl + LIVENESS.heartbeat_interval + 2 * LIVENESS.sweep_interval
    assert lost_after <= bound + 0.3, f"LOST {lost_after:.2f} s after SIGKILL"
    assert removed_after >= lost_after + LIVENESS.lost_grace - LIVENESS.sweep_interval
    print(
        f"\nSIGKILL -> LOST in {lost_after:.3f} s (TTL {LIVENESS.lease_ttl} s), removed after {removed_after:.3f} s"
    )


async def test_sigterm_makes_an_agent_drain_unregister_and_exit_zero(provider: ProcessProvider) -> None:
    async with EmbeddedScheduler(liveness=LIVENESS) as scheduler:
        provider.schedulers = (scheduler.target,)
        await provider.provision("polite", CONFIG)
        await wait_for(lambda: connected(scheduler, "polite"), timeout=15)
        watcher = scheduler.scheduler.events.watch()

        await provider.stop("polite", grace=10)

        assert await provider.status("polite") is WorkerStatus.TERMINATED  # exit code 0
        assert await scheduler.get_worker("polite") is None
        watcher.close()
        kinds = [e.kind async for e in watcher]
        assert kinds[:3] == [WorkerEventKind.DRAINING, WorkerEventKind.DRAINED, WorkerEventKind.UNREGISTERED]


async def test_decommission_drains_through_the_stream_unregisters_and_leaves_no_process(
    provider: ProcessProvider,
) -> None:
    async with (
        EmbeddedScheduler(liveness=LIVENESS) as scheduler,
        SchedulerPortClient(scheduler.target) as port,
    ):
        provider.schedulers = (scheduler.target,)
        service = WorkerManagementService(
            provider,
            registration=WorkerRegistrationAdapter(port, RegistrationConfig()),
            config=WorkerManagementConfig(drain_timeout=5, stop_grace=5),
        )
        worker = await service.provision_worker(CONFIG)
        await wait_for(lambda: connected(scheduler, worker.worker_id), timeout=15)
        pid = provider.pid(worker.worker_id)

        result = await service.decommission_worker(worker.worker_id)

        assert (result.was_registered, result.drained) == (True, True)
        assert await scheduler.get_worker(worker.worker_id) is None
        assert pid is not None and not psutil.pid_exists(pid)
        assert await provider.list_workers() == []


async def test_agents_of_a_control_plane_killed_with_sigkill_unregister_and_exit(tmp_path: Path) -> None:
    async with EmbeddedScheduler(liveness=LIVENESS) as scheduler:
        script = textwrap.dedent(
            f"""
            import asyncio, sys
            from hodei import DynamicWorkerConfig
            from hodei.providers import ProcessProvider

            async def main():
                provider = ProcessProvider({scheduler.target!r}, log_dir={str(tmp_path)!r})
                for name in ("orphan-1", "orphan-2"):
                    await provider.provision(name, DynamicWorkerConfig(cpu_cores=1, memory_mb=64))
                print(provider.pid("orphan-1"), provider.pid("orphan-2"), flush=True)
                await asyncio.Event().wait()

            asyncio.run(main())
            """
        )
        control_plane = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert control_plane.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(control_plane.stdout.readline), 15)
            pids = [int(p) for p in line.split()]
            await wait_for(lambda: connected(scheduler, "orphan-2"), timeout=15)
            await wait_for(lambda: connected(scheduler, "orphan-1"), timeout=15)

            control_plane.kill()  # SIGKILL: the control plane cannot clean up
            control_plane.wait(5)
            await wait_for(lambda: _all_gone(pids), timeout=10)

            assert await scheduler.workers() == []  # they unregistered on the way out
        finally:
            control_plane.kill()
            control_plane.wait(5)


async def _all_gone(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


async def test_a_dozen_agent_processes_come_back_after_the_scheduler_process_is_killed_and_restarted(
    provider: ProcessProvider, tmp_path: Path
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    serve = [
        *hodei_command(),
        "scheduler",
        "serve",
        "--store",
        "memory",
        "--listen",
        address,
        "--heartbeat-interval",
        "0.5",
        "--lease-ttl",
        "3",
        "--recovery-window",
        "5",
    ]
    log = (tmp_path / "scheduler.log").open("ab")
    scheduler = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with SchedulerPortClient(address) as client:
            await wait_for(lambda: _serving(client), timeout=15)
            provider.schedulers = (address,)
            # A dozen processes of their own (the 2,000-agent restart in test_fleet_restart.py is the fleet's size).
            ids = [f"fleet-{i:02}" for i in range(12)]
            for worker_id in ids:
                await provider.provision(worker_id, CONFIG)
            await wait_for(lambda: _all_available(client, ids), timeout=60, interval=0.2)

            scheduler.kill()
            scheduler.wait(5)
            restarted_at = time.monotonic()
            scheduler = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
            await wait_for(lambda: _all_available(client, ids), timeout=30, interval=0.1)
            back_after = time.monotonic() - restarted_at

            page = await client.list_workers(page_size=1000)
            assert sorted(w.worker_id for w in page.workers) == ids  # every one, and none twice
            assert all(w.status is WorkerStatus.AVAILABLE and w.connected for w in page.workers)
            print(f"\n{len(ids)} agents AVAILABLE again {back_after:.2f} s after the scheduler was restarted")
            assert back_after < 15
    finally:
        scheduler.terminate()
        scheduler.wait(10)
        log.close()


async def _serving(client: SchedulerPortClient) -> bool:
    try:
        await client.list_workers(timeout=1)
    except SchedulerError:
        return False
    return True


async def _all_available(client: SchedulerPortClient, ids: list[str]) -> bool:
    try:
        page = await client.list_workers(page_size=1000, timeout=2)
    except SchedulerError:
        return False
    ready = {w.worker_id for w in page.workers if w.connected and w.status is WorkerStatus.AVAILABLE}
    return ready == set(ids) and len(page.workers) == len(ids)


@pytest.mark.parametrize("bad_id", ["bad id!"])
def test_the_agent_command_exits_non_zero_with_a_clear_message_on_invalid_data(bad_id: str) -> None:
    with EmbeddedSchedulerThread() as target:
        result = subprocess.run(
            [*hodei_command(), "agent", "--scheduler", target, "--worker-id", bad_id],
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert result.returncode == 2
    assert "refused worker 'bad id!'" in result.stderr
    assert "INVALID_ARGUMENT" in result.stderr and "worker_id" in result.stderr


class EmbeddedSchedulerThread:
    """A scheduler process for synchronous tests (the agent command is a blocking subprocess)."""

    def __enter__(self) -> str:
        self.address = f"127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [*hodei_command(), "scheduler", "serve", "--listen", self.address, "--store", "memory"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", int(self.address.rsplit(":", 1)[1]))) == 0:
                    return self.address
            if time.monotonic() > deadline:
                raise AssertionError("the scheduler did not start")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


async def test_an_agent_that_ignores_sigterm_is_killed_after_the_grace(provider: ProcessProvider) -> None:
    async with EmbeddedScheduler(liveness=LIVENESS) as scheduler:
        provider.schedulers = (scheduler.target,)
        await provider.provision("frozen", CONFIG)
        await wait_for(lambda: connected(scheduler, "frozen"), timeout=15)
        pid = provider.pid("frozen")
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM

        started = time.monotonic()
        await provider.stop("frozen", grace=0.5)
        took = time.monotonic() - started

        assert await provider.status("frozen") is WorkerStatus.FAILED  # killed, not exited
        assert not psutil.pid_exists(pid)
        assert took >= 0.5


def test_killing_an_agent_shows_it_lost_in_workers_watch() -> None:
    address = f"127.0.0.1:{free_port()}"
    scheduler = subprocess.Popen(
        [
            *hodei_command(),
            "scheduler",
            "serve",
            "--store",
            "memory",
            "--listen",
            address,
            "--heartbeat-interval",
            "0.2",
            "--lease-ttl",
            "1",
            "--recovery-window",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent = watch = None
    try:
        _wait_until_serving(address)
        agent = subprocess.Popen(
            [*hodei_command(), "agent", "--scheduler", address, "--worker-id", "watched-1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        watch = subprocess.Popen(
            [*hodei_command(), "workers", "watch", "--scheduler", address, "--exit-after", "12"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_until_listed(address, "watched-1")
        agent.kill()
        _wait_until_lost(address, "watched-1")
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=15)
    finally:
        for process in (agent, watch, scheduler):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(5)

    assert "watched-1" in out, err
    assert "lost" in out and "no heartbeat for 1 s" in out


def _status_of(address: str, worker_id: str) -> str:
    return next((line for line in _list(address).stdout.splitlines() if worker_id in line), "")


def _list(address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*hodei_command(), "workers", "list", "--scheduler", address],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _wait_until_serving(address: str) -> None:
    deadline = time.monotonic() + 20
    while _list(address).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"no scheduler answered on {address}")


def _wait_until_listed(address: str, worker_id: str) -> None:
    deadline = time.monotonic() + 20
    while "available" not in _status_of(address, worker_id):
        if time.monotonic() > deadline:
            raise AssertionError(f"{worker_id} never became available")


def _wait_until_lost(address: str, worker_id: str) -> None:
    deadline = time.monotonic() + 20
    while "lost" not in _status_of(address, worker_id):
        if time.monotonic() > deadline:
            raise AssertionError(f"{worker_id} never became lost")


def _environ_of(pid: int) -> dict[str, str]:
    """The environment a process was started with, as the kernel keeps it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


async def test_an_agent_process_gets_the_allowed_environment_and_none_of_the_control_planes_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("HODEI_LABELS", "stolen=1")  # the control plane's own setting, not the agent's
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("FOO", "passed-by-name")
    monkeypatch.setenv("BAR", "not-named")
    async with EmbeddedScheduler(liveness=LIVENESS) as scheduler:
        provider = ProcessProvider(
            scheduler.target,
            log_dir=tmp_path / "agents",
            stop_grace=5.0,
            pass_environment=("FOO",),
            environment={"EXTRA": "given"},
        )
        try:
            await provider.provision("env-1", CONFIG)
            await wait_for(lambda: connected(scheduler, "env-1"), timeout=15)
            pid = provider.pid("env-1")
            assert pid is not None
            environ = _environ_of(pid)
        finally:
            await provider.aclose()

    assert "DATABASE_PASSWORD" not in environ
    assert "AWS_SECRET_ACCESS_KEY" not in environ
    assert "HODEI_LABELS" not in environ
    assert "BAR" not in environ
    assert (environ["FOO"], environ["EXTRA"], environ["TZ"], environ["LC_TIME"]) == (
        "passed-by-name",
        "given",
        "UTC",
        "C.UTF-8",
    )
    assert environ["PATH"] == os.environ["PATH"]
    assert set(environ) <= {
        "PATH",
        "HOME",
        "LANG",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "FOO",
        "EXTRA",
    } | {k for k in environ if k.startswith("LC_")}
