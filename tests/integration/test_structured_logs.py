"""Structured logs of real processes: ``hodei scheduler serve`` and ``hodei agent`` write one JSON event per
state change on stderr, with its context, and no secret given to them ever shows in anything they print.

Every process a test starts is killed by the test whatever happens; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hodei import (
    DynamicWorkerConfig,
    ErrorCode,
    RegistrationConfig,
    SchedulerPortClient,
    WorkerManagementService,
    WorkerRegistrationAdapter,
)
from hodei.agent import AgentConfig, WorkerAgent
from hodei.domain import WorkerRecord
from hodei.errors import SchedulerError, scheduler_error_for
from hodei.security import SchedulerSecurity, TlsConfig, write_test_pki
from hodei.testing import EmbeddedScheduler, FailingScheduler, MockWorkerProvider
from tests.helpers import free_port, make_worker, wait_for
from tests.integration.helpers import CLI_ENV, HODEI, end, run_hodei, scheduler_serve

SECRET = "Sup3r-S3cret-Passw0rd"
DSN = f"postgresql://hodei:{SECRET}@127.0.0.1:1/registry"
FAST_LIVENESS = (
    "--heartbeat-interval", "0.2", "--lease-ttl", "0.6", "--recovery-window", "0", "--sweep-interval", "0.1",
)  # fmt: skip


def events(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as JSON (fails on a line that is not)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def the(found: list[dict[str, Any]], event: str, **fields: Any) -> dict[str, Any]:
    """The one event called ``event`` whose fields include ``fields``."""
    matching = [e for e in found if e["event"] == event and fields.items() <= e.items()]
    assert len(matching) == 1, f"{len(matching)} {event} {fields} in {[e['event'] for e in found]}"
    return matching[0]


class AgentProcess:
    """``hodei agent`` with its stderr read line by line as it runs."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []  # its log events
        self.printed = ""  # what else it wrote on stderr (an error message for people)

    async def until(self, event: str, *, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout):
            while len(found := [e for e in self.lines if e["event"] == event]) < count:
                line = await self.process.stderr.readline()
                assert line, f"the agent exited before {event}: {self.lines}"
                self.lines.append(json.loads(line))
        return found

    async def finish(self) -> int:
        """Wait for it to exit (10 s at most); its exit code. The rest of its stderr goes to ``lines`` and
        ``printed``, its stdout to ``printed``."""
        stdout, rest = await asyncio.wait_for(self.process.communicate(), 10)
        for line in rest.decode().splitlines():
            if line.startswith("{"):
                self.lines.append(json.loads(line))
            else:
                self.printed += line + "\n"
        self.printed += stdout.decode()
        assert self.process.returncode is not None
        return self.process.returncode


async def start_agent(*options: str) -> AgentProcess:
    process = await asyncio.create_subprocess_exec(
        HODEI, "agent", "--log-format", "json", *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
    )  # fmt: skip
    return AgentProcess(process)


@pytest.fixture
async def agents() -> AsyncIterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    try:
        yield started
    finally:
        for agent in started:
            await end(agent.process)


async def test_the_scheduler_logs_each_change_of_a_workers_life_as_one_json_event(
    agents: list[AgentProcess],
) -> None:
    async with scheduler_serve("--store", "memory", "--log-level", "debug", *FAST_LIVENESS) as served:
        async with SchedulerPortClient(served.target) as client:
            await client.register_worker(make_worker("pushed-1"))
            agents.append(agent := await start_agent("--scheduler", served.target, "--worker-id", "agent-1"))
            [connected] = await agent.until("agent.connected")
            await client.drain_worker("agent-1", deadline=5.0)

            async def has(flag: str) -> bool:
                record = await client.get_worker("agent-1")
                return record is not None and (
                    record.drained if flag == "drained" else record.status.value == flag
                )

            await wait_for(lambda: has("drained"), timeout=10)
            agent.process.kill()  # no goodbye: the scheduler must find it silent
            await agent.process.wait()
            await wait_for(lambda: has("lost"), timeout=10)
            await client.unregister_worker("pushed-1")
        stopped = await served.stop()

    found = events(stopped.stderr)
    assert all({"timestamp", "level", "logger", "event"} <= line.keys() for line in found)
    started = the(found, "scheduler.started")
    assert started["address"] == served.target and started["traced"] is False
    assert (started["access_control"], started["tls"]) == ("off", "off")  # shown, not redacted
    registered = the(found, "worker.registered", worker_id="pushed-1")
    assert (registered["worker_type"], registered["status"], registered["logger"]) == (
        "docker",
        "available",
        "hodei.server._servicer",
    )
    incarnation = connected["incarnation"]
    assert the(found, "worker.connected", worker_id="agent-1")["reason"] == f"incarnation {incarnation}"
    assert the(found, "worker.draining", worker_id="agent-1")["status"] == "draining"
    assert the(found, "worker.drained", worker_id="agent-1")["incarnation"] == incarnation
    the(found, "worker.disconnected", worker_id="agent-1")
    lost_line = the(found, "worker.lost", worker_id="agent-1")
    assert lost_line["level"] == "warning" and lost_line["reason"].startswith("no heartbeat for")
    assert the(found, "worker.unregistered", worker_id="pushed-1")["logger"] == "hodei.scheduler._events"
    the(found, "scheduler.stopped")
    # The events of one registry come numbered, in order.
    sequences = [line["sequence"] for line in found if "sequence" in line]
    assert len(sequences) >= 5 and all(a < b for a, b in itertools.pairwise(sequences))


async def test_an_agent_logs_its_connection_and_its_orderly_shutdown(agents: list[AgentProcess]) -> None:
    async with EmbeddedScheduler() as scheduler:
        agents.append(agent := await start_agent("--scheduler", scheduler.target, "--worker-id", "agent-2"))
        [connected] = await agent.until("agent.connected")
        agent.process.terminate()
        code = await agent.finish()

    assert code == 0
    assert connected["worker_id"] == "agent-2" and connected["scheduler"] == scheduler.target
    assert connected["incarnation"] > 0 and connected["heartbeat_interval_s"] == 5.0
    assert the(agent.lines, "agent.shutdown_requested")["reason"] == "SIGTERM"
    assert the(agent.lines, "agent.draining")["reason"] == "shutting down"
    assert the(agent.lines, "agent.unregistered")["worker_id"] == "agent-2"


async def test_an_agent_that_cannot_reach_its_scheduler_logs_each_reconnection_with_its_delay_at_debug_level(
    agents: list[AgentProcess],
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    agents.append(
        agent := await start_agent("--scheduler", nowhere, "--worker-id", "agent-3", "--log-level", "debug")
    )

    broken = await agent.until("agent.stream_broken", count=2)
    reconnecting = await agent.until("agent.reconnecting", count=2)

    assert all(line["code"] == "UNAVAILABLE" and line["scheduler"] == nowhere for line in broken)
    assert [line["failures"] for line in reconnecting[:2]] == [1, 2]
    # Full jitter: each delay below the backoff ceiling (0.2 s doubling, at most 10 s).
    assert all(
        line["worker_id"] == "agent-3" and 0 <= line["delay_s"] < min(10.0, 0.2 * 2 ** (line["failures"] - 1))
        for line in reconnecting
    )


async def test_an_agent_that_never_connected_says_why_once_then_retries_quietly(
    agents: list[AgentProcess],
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    agents.append(agent := await start_agent("--scheduler", nowhere, "--worker-id", "agent-5"))

    [said] = await agent.until("agent.cannot_connect")
    # Quiet retries: the next attempts (every 0.2 s or so at first) log nothing at the default level.
    with pytest.raises(TimeoutError):
        await agent.until("agent.cannot_connect", count=2, timeout=3.0)

    assert said["level"] == "warning"
    assert said["reason"] == (
        f"nothing listens at {nowhere}: check the address (--scheduler) and that the scheduler runs"
    )
    assert (said["failures"], said["code"], said["ever_connected"]) == (1, "UNAVAILABLE", False)
    assert [line["event"] for line in agent.lines] == ["agent.cannot_connect"]


async def test_an_agent_without_the_ca_of_a_tls_scheduler_is_told_to_give_it(
    agents: list[AgentProcess], tmp_path: Path
) -> None:
    pki = write_test_pki(tmp_path / "pki")
    security = SchedulerSecurity(tls=TlsConfig(pki.server_cert_file, pki.server_key_file))
    async with EmbeddedScheduler(security=security) as scheduler:
        agents.append(agent := await start_agent("--scheduler", scheduler.target, "--worker-id", "agent-6"))
        [said] = await agent.until("agent.cannot_connect")

    assert said["reason"] == (
        f"the scheduler at {scheduler.target} speaks TLS: give --tls-ca (the CA that signed its certificate)"
    )


# --- secrets -------------------------------------------------------------------------------------------


async def test_a_postgres_password_given_to_scheduler_serve_is_in_nothing_it_prints() -> None:
    served = await run_hodei(
        "scheduler", "serve", "--listen", f"127.0.0.1:{free_port()}", "--store", DSN, "--log-level", "debug",
        timeout=20,
    )  # fmt: skip

    assert served.returncode == 1, served
    assert "cannot open the registry store" in served.stderr
    assert SECRET not in served.stdout + served.stderr


def refusing_with_a_password(record: WorkerRecord) -> SchedulerError:
    return scheduler_error_for(
        ErrorCode.PERMISSION_DENIED, f"{record.worker_id} may not join: the allow-list at {DSN} says no"
    )


async def test_a_refused_agent_leaks_no_secret_in_its_logs_nor_in_its_error(
    agents: list[AgentProcess],
) -> None:
    async with EmbeddedScheduler(veto=refusing_with_a_password) as scheduler:
        agents.append(
            agent := await start_agent(
                *("--scheduler", scheduler.target, "--worker-id", "agent-4", "--log-level", "debug"),
                *("--label", f"api_token={SECRET}"),
            )
        )
        code = await agent.finish()

    assert code == 2
    refused = the(agent.lines, "agent.refused", worker_id="agent-4")
    assert refused["code"] == "PERMISSION_DENIED"
    assert "postgresql://hodei:[redacted]@127.0.0.1:1/registry" in refused["error"]
    assert "refused worker 'agent-4'" in agent.printed
    assert SECRET not in json.dumps(agent.lines) + agent.printed


async def test_secrets_in_worker_labels_and_in_the_schedulers_errors_stay_out_of_the_control_planes_logs(
    captured_logs: io.StringIO,
) -> None:
    config = RegistrationConfig(max_retries=3, base_backoff=0.001, max_backoff=0.001, jitter=0.0)
    message = f"the registry {DSN} is unreachable"
    async with (
        FailingScheduler(2, message=message) as scheduler,
        SchedulerPortClient(scheduler.target) as port,
    ):
        service = WorkerManagementService(
            MockWorkerProvider(), registration=WorkerRegistrationAdapter(port, config)
        )
        worker = await service.provision_worker(DynamicWorkerConfig(labels={"api_token": SECRET}))
        agent = WorkerAgent(
            AgentConfig(schedulers=(scheduler.target,), worker_id="agent-5", labels={"token": SECRET})
        )
        running = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.connected.wait(), 10)
        agent.request_shutdown("test over")
        await asyncio.wait_for(running, 10)
        await service.decommission_worker(worker.worker_id)

    found = events(captured_logs.getvalue())
    retries = [e for e in found if e["event"] == "registration.retrying"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(
        e["error"] == "the registry postgresql://hodei:[redacted]@127.0.0.1:1/registry is unreachable"
        for e in retries
    )
    the(found, "registration.succeeded", worker_id=worker.worker_id, attempts=3)
    the(found, "worker.provisioned", worker_id=worker.worker_id)
    the(found, "agent.connected", worker_id="agent-5")
    the(found, "worker.connected", worker_id="agent-5")
    the(found, "decommission.destroyed", worker_id=worker.worker_id)
    assert SECRET not in captured_logs.getvalue()
