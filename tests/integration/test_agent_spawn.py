"""``hodei agent --spawn N``: N workers in one process, each registered, leased and drained on its own, every
slot's stream over one connection to the scheduler; a slot refused ends alone."""

from __future__ import annotations

import asyncio
import signal

import psutil
import pytest

from hodei import InvalidWorkerData, SchedulerError, WorkerRecord
from hodei.agent._slots import slot_ids
from hodei.testing import EmbeddedScheduler
from tests.helpers import wait_for
from tests.integration.helpers import CLI_ENV, HODEI, end

pytestmark = pytest.mark.timeout(90)


def test_slot_ids_are_the_id_for_one_slot_and_numbered_for_several() -> None:
    assert slot_ids("build", 1) == ["build"]
    assert slot_ids("build", 3) == ["build-1", "build-2", "build-3"]
    with pytest.raises(ValueError, match="slots must be at least 1, got 0"):
        slot_ids("build", 0)


def refuse_slot_2(record: WorkerRecord) -> SchedulerError | None:
    if record.worker_id == "host-b-2":
        return InvalidWorkerData("slot 2 is not welcome here", worker_id=record.worker_id)
    return None


async def connected_ids(scheduler: EmbeddedScheduler) -> list[str]:
    return sorted(r.worker_id for r in (await scheduler.client().list_workers()).workers if r.connected)


def scheduler_connections(agent_pid: int, port: int) -> int:
    """The agent process's TCP connections to the scheduler's port."""
    return sum(
        1
        for c in psutil.Process(agent_pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def test_five_slots_register_over_one_connection_and_sigterm_drains_and_unregisters_them_all() -> None:
    async with EmbeddedScheduler() as scheduler:
        port = int(scheduler.target.rsplit(":", 1)[1])
        agent = await asyncio.create_subprocess_exec(
            HODEI, "agent", "-s", scheduler.target, "--worker-id", "host-a", "--spawn", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
        )  # fmt: skip
        try:
            expected = [f"host-a-{n}" for n in range(1, 6)]

            async def all_connected() -> bool:
                return await connected_ids(scheduler) == expected

            await wait_for(all_connected, timeout=30)
            assert scheduler_connections(agent.pid, port) == 1
            records = {r.worker_id: r for r in (await scheduler.client().list_workers()).workers}
            assert [records[w].lease_ttl for w in expected] == [15.0] * 5  # each holds a lease of its own

            agent.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(agent.communicate(), 30)
            assert agent.returncode == 0, stderr.decode()
            assert (await scheduler.client().list_workers()).workers == []  # every slot unregistered itself
        finally:
            await end(agent)


async def test_a_refused_slot_ends_alone_and_the_process_says_so_and_exits_2_when_stopped() -> None:
    async with EmbeddedScheduler(veto=refuse_slot_2) as scheduler:
        agent = await asyncio.create_subprocess_exec(
            HODEI, "agent", "-s", scheduler.target, "--worker-id", "host-b", "--spawn", "3",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
        )  # fmt: skip
        try:

            async def others_connected() -> bool:
                return await connected_ids(scheduler) == ["host-b-1", "host-b-3"]

            await wait_for(others_connected, timeout=30)
            assert agent.returncode is None  # the refusal of one slot did not end the process
            agent.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(agent.communicate(), 30)
            assert agent.returncode == 2
            refusals = [line for line in stderr.decode().splitlines() if line.startswith("hodei agent:")]
            assert refusals == [
                "hodei agent: the scheduler refused worker 'host-b-2': INVALID_ARGUMENT: slot 2 is not welcome here"
            ]
            assert (await scheduler.client().list_workers()).workers == []
        finally:
            await end(agent)
