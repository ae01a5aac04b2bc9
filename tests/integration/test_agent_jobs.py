"""The agent runs the jobs the scheduler assigns it down its Connect stream, against a real gRPC server on
loopback playing the scheduler's side (tests/integration/connect_double.py): results, timeouts, cancellation,
environment, hostile output, a stream cut while a job runs, drains and shutdowns, slots of one process; and end to
end, a job acquired on a real scheduler and run by a real agent process."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from hodei import SchedulerPortClient
from hodei.agent import AgentConfig, WorkerAgent
from hodei.domain import MAX_OUTPUT_TAIL, Assignment, Job, JobOutcome, JobResult, WorkerStatus
from hodei.lifecycle import CommandKind, WorkerCommand
from hodei.pools import Requirements
from hodei.ports import Acquired
from hodei.testing import EmbeddedScheduler, FaultProxy
from tests.helpers import connected, wait_for, wait_until
from tests.integration.connect_double import AgentCall, ConnectDouble
from tests.integration.helpers import CLI_ENV, HODEI, end, run_hodei

pytestmark = pytest.mark.timeout(60)

# A job that says it started, then waits until the test lets it go (a file in its working directory).
HELD = ("sh", "-c", "touch started; while [ ! -e go ]; do sleep 0.01; done; echo released")
# A job whose child (same process group) writes its pid, then outlives its parent's wait unless killed.
CHILD = ("sh", "-c", "sleep 60 & echo $! > child.tmp && mv child.tmp child; wait")


def run_job(
    assignment_id: str,
    command: Sequence[str] | None,
    *,
    job_id: str = "",
    environment: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> WorkerCommand:
    job = None if command is None else Job(tuple(command), environment or {}, timeout)
    assignment = Assignment(
        assignment_id=assignment_id,
        job_id=job_id or f"job-{assignment_id}",
        worker_id="w",
        incarnation=1,
        job=job,
    )
    return WorkerCommand(CommandKind.RUN_JOB, assignment=assignment)


def cancel_job(assignment_id: str, reason: str = "") -> WorkerCommand:
    return WorkerCommand(CommandKind.CANCEL_JOB, reason, assignment_id=assignment_id)


class Agents:
    """In-process agents dialing the double (or a proxy to a real scheduler), their jobs under ``work``; stopped
    at the end of the test."""

    def __init__(self, double: ConnectDouble | FaultProxy, work: Path) -> None:
        self.target = double.target
        self.double = double  # type: ignore[assignment]
        self.work = work
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, worker_id: str = "w", **options: object) -> WorkerAgent:
        config = AgentConfig(
            schedulers=(self.target,),
            worker_id=worker_id,
            cpu_cores=1,
            memory_mb=256,
            work_dir=self.work,
            reconnect_base=0.05,
            job_kill_grace=2.0,
            **options,  # type: ignore[arg-type]
        )
        agent = WorkerAgent(config)
        self.tasks.append(asyncio.create_task(agent.run()))
        return agent

    def job_dir(self, worker_id: str, job_id: str) -> Path:
        return self.work / worker_id / job_id

    async def started(self, worker_id: str, job_id: str) -> Path:
        """The job's working directory, once the job has said it started."""
        directory = self.job_dir(worker_id, job_id)
        await wait_until(lambda: (directory / "started").exists(), timeout=15)
        return directory

    async def child_of(self, worker_id: str, job_id: str) -> int:
        """The pid of the CHILD job's background process, alive."""
        path = self.job_dir(worker_id, job_id) / "child"
        await wait_until(path.exists, timeout=15)
        pid = int(path.read_text())
        assert alive(pid)
        return pid

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest_asyncio.fixture
async def double() -> AsyncIterator[ConnectDouble]:
    async with ConnectDouble() as started:
        yield started


@pytest_asyncio.fixture
async def agents(double: ConnectDouble, tmp_path: Path) -> AsyncIterator[Agents]:
    running = Agents(double, tmp_path / "work")
    yield running
    await running.stop()


async def first_call(
    agents: Agents, worker_id: str = "w", **options: object
) -> tuple[WorkerAgent, AgentCall]:
    agent = agents.start(worker_id, **options)
    return agent, await agents.double.call(worker_id)


async def test_a_failing_job_is_reported_failed_with_its_exit_code_and_both_streams_in_the_tail(
    agents: Agents,
) -> None:
    _, call = await first_call(agents)
    call.send(run_job("a-1", ["sh", "-c", "echo out; echo err >&2; exit 3"]))

    result = await call.result("a-1")

    assert result == JobResult(JobOutcome.FAILED, exit_code=3, output_tail="out\nerr\n", reason="")
    assert not agents.job_dir("w", "job-a-1").exists()  # its working directory went with it


async def test_a_job_that_exits_0_succeeds_and_the_heartbeats_count_it_while_it_runs(agents: Agents) -> None:
    agent, call = await first_call(agents)
    call.send(run_job("a-1", HELD))
    directory = await agents.started("w", "job-a-1")
    assert agent.running_jobs == ["a-1"]
    await wait_until(lambda: any(usage.running_jobs == 1 for usage in call.heartbeats))

    (directory / "go").touch()
    result = await call.result("a-1")

    assert result == JobResult(JobOutcome.SUCCEEDED, exit_code=0, output_tail="released\n")
    assert agent.running_jobs == []
    seen = len(call.heartbeats)
    await wait_until(lambda: len(call.heartbeats) > seen)
    assert call.heartbeats[-1].running_jobs == 0


@pytest.mark.parametrize(
    ("timeout", "cancel", "outcome", "reason"),
    [
        (1.0, None, JobOutcome.TIMED_OUT, "ran past its timeout of 1 s"),
        (None, "the holder released it", JobOutcome.CANCELLED, "cancelled: 'the holder released it'"),
        (None, "", JobOutcome.CANCELLED, "cancelled"),
    ],
)
async def test_a_job_past_its_timeout_or_cancelled_ends_with_its_whole_process_group(
    agents: Agents, timeout: float | None, cancel: str | None, outcome: JobOutcome, reason: str
) -> None:
    _, call = await first_call(agents)
    call.send(run_job("a-1", CHILD, timeout=timeout))
    child = await agents.child_of("w", "job-a-1")

    if cancel is not None:
        call.send(cancel_job("a-1", cancel))
    result = await call.result("a-1")

    assert (result.outcome, result.exit_code, result.reason) == (outcome, -signal.SIGTERM, reason)
    await wait_until(lambda: not alive(child))


async def test_a_cancel_for_an_unknown_assignment_is_ignored_and_logged(
    agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    _, call = await first_call(agents)
    with caplog.at_level(logging.WARNING, logger="hodei.agent"):
        call.send(cancel_job("nope\x1b[2J"))
        call.send(run_job("a-1", ["true"]))
        result = await call.result("a-1")

    assert result.outcome is JobOutcome.SUCCEEDED
    assert [a for a, _ in call.finished] == ["a-1"]  # nothing was said of the unknown one
    unknown = [r for r in caplog.records if r.getMessage() == "job.cancel_unknown"]
    assert [(r.worker_id, r.assignment_id) for r in unknown] == [("w", "'nope\\x1b[2J'")]  # type: ignore[attr-defined]


async def test_the_job_gets_its_environment_and_not_the_agents_secrets(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_SECRET", "s3cr3t")
    _, call = await first_call(agents)
    script = 'echo "var=$JOB_VAR secret=${AGENT_SECRET-unset} id=$HODEI_JOB_ID home=$HOME"'
    call.send(run_job("a-1", ["sh", "-c", script], job_id="build-7", environment={"JOB_VAR": "x y"}))

    result = await call.result("a-1")

    home = agents.job_dir("w", "build-7")
    assert result.output_tail == f"var=x y secret=unset id=build-7 home={home}\n"


async def test_hostile_output_is_reported_bounded_and_printable(agents: Agents) -> None:
    _, call = await first_call(agents)
    script = "import sys; sys.stdout.buffer.write(b'x' * 2**20 + b'\\n\\x1b[31mred\\x00\\xff\\xfe end\\n')"
    call.send(run_job("a-1", [sys.executable, "-c", script]))

    result = await call.result("a-1")

    # The last 4096 bytes, ESC and NUL and the invalid bytes each made U+FFFD (3 bytes), cut back to 4096.
    assert result.output_tail == "x" * 4071 + "\n\ufffd[31mred\ufffd\ufffd\ufffd end\n"
    assert len(result.output_tail.encode()) == MAX_OUTPUT_TAIL
    assert result.outcome is JobOutcome.SUCCEEDED


async def test_a_second_job_while_one_runs_is_refused_busy_and_the_first_goes_on(agents: Agents) -> None:
    _, call = await first_call(agents)
    call.send(run_job("a-1", HELD))
    directory = await agents.started("w", "job-a-1")

    call.send(run_job("a-2", ["true"]))
    call.send(run_job("a-1", HELD))  # the running one repeated: not run twice, not answered
    refused = await call.result("a-2")
    (directory / "go").touch()
    first = await call.result("a-1")

    assert refused == JobResult(JobOutcome.FAILED, reason="busy")
    assert first.outcome is JobOutcome.SUCCEEDED
    assert [a for a, _ in call.finished] == ["a-2", "a-1"]


@pytest.mark.parametrize(
    ("command", "job_id", "reason"),
    [
        (None, "job-1", "the assignment has no job to run"),
        (["sh", "-c", "true"], "../escape", "job_id must be 1 to 128 letters"),
        (["/no/such/program"], "job-1", "cannot start '/no/such/program': No such file or directory"),
        (["sh", "-c", "echo \x00"], "job-1", "job.command[2]: must not contain NUL"),
    ],
)
async def test_a_job_that_cannot_run_is_reported_failed_with_why(
    agents: Agents, command: list[str] | None, job_id: str, reason: str
) -> None:
    _, call = await first_call(agents)
    call.send(run_job("a-1", command, job_id=job_id))

    result = await call.result("a-1")

    assert (result.outcome, result.exit_code, result.output_tail) == (JobOutcome.FAILED, -1, "")
    assert result.reason.startswith(reason)


async def test_a_job_whose_directory_cannot_be_made_is_reported_failed(
    double: ConnectDouble, tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file"
    blocked.touch()
    agents = Agents(double, blocked)  # the work directory is a file: nothing can be made under it
    try:
        _, call = await first_call(agents)
        call.send(run_job("a-1", ["true"]))
        result = await call.result("a-1")
    finally:
        await agents.stop()

    assert (result.outcome, result.exit_code) == (JobOutcome.FAILED, -1)
    assert result.reason.startswith("cannot prepare the job's directory: [Errno 20] Not a directory")


async def test_a_job_outlives_a_cut_stream_the_next_hello_names_it_and_its_result_comes_on_the_new_stream(
    agents: Agents,
) -> None:
    _, first = await first_call(agents)
    assert first.running_jobs == []
    first.send(run_job("a-1", HELD))
    directory = await agents.started("w", "job-a-1")

    first.cut()
    second = await agents.double.call("w", 1)
    assert second.running_jobs == ["a-1"]
    assert second.hello.incarnation == first.hello.incarnation + 1

    (directory / "go").touch()
    result = await second.result("a-1")

    assert result.outcome is JobOutcome.SUCCEEDED
    assert first.finished == []


async def test_a_result_that_ended_while_no_stream_was_up_is_named_in_the_hello_and_sent_after_it(
    agents: Agents,
) -> None:
    agent, first = await first_call(agents, reconnect_max=0.2)
    first.send(run_job("a-1", HELD))
    directory = await agents.started("w", "job-a-1")
    await agents.double.go_down(first)
    (directory / "go").touch()
    await wait_until(lambda: agent.running_jobs == [])
    assert agent.jobs.unreported == ["a-1"]

    agents.double.refusing = False
    second = await agents.double.call("w", 1)

    assert second.running_jobs == ["a-1"]
    assert (await second.result("a-1")).outcome is JobOutcome.SUCCEEDED
    await wait_until(lambda: agent.jobs.unreported == [])


async def test_a_drain_waits_for_the_running_job_then_reports_drained_after_its_result(
    agents: Agents,
) -> None:
    agent, call = await first_call(agents)
    call.send(run_job("a-1", HELD))
    directory = await agents.started("w", "job-a-1")

    call.send(WorkerCommand(CommandKind.DRAIN, "maintenance", deadline=30.0))
    await wait_until(lambda: call.kinds() == ["draining"])
    call.send(run_job("a-2", ["true"]))  # no new job while draining
    assert await call.result("a-2") == JobResult(JobOutcome.FAILED, reason="draining")
    assert agent.running_jobs == ["a-1"]  # still running: the drain waits for it

    (directory / "go").touch()
    await wait_until(lambda: call.kinds()[-1:] == ["drained"])

    assert call.kinds() == ["draining", "job_finished:a-2", "job_finished:a-1", "drained"]
    assert call.reports == [(WorkerStatus.DRAINING, False), (WorkerStatus.DRAINING, True)]
    assert (await call.result("a-1")).outcome is JobOutcome.SUCCEEDED


async def test_a_drain_cancels_the_job_still_running_at_its_deadline(
    agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    _, call = await first_call(agents)
    call.send(run_job("a-1", CHILD))
    child = await agents.child_of("w", "job-a-1")

    with caplog.at_level(logging.WARNING, logger="hodei.agent"):
        call.send(WorkerCommand(CommandKind.DRAIN, "", deadline=0.2))
        await wait_until(lambda: call.kinds()[-1:] == ["drained"], timeout=15)

    assert call.kinds() == ["draining", "job_finished:a-1", "drained"]
    result = await call.result("a-1")
    assert (result.outcome, result.reason) == (JobOutcome.CANCELLED, "cancelled: 'the drain deadline passed'")
    assert not alive(child)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("agent.drain")] == [
        "agent.drain_deadline"
    ]


async def test_a_shutdown_waits_for_the_running_job_reports_it_then_the_agent_ends(agents: Agents) -> None:
    agent, call = await first_call(agents)
    call.send(run_job("a-1", HELD))
    directory = await agents.started("w", "job-a-1")

    call.send(WorkerCommand(CommandKind.SHUTDOWN, "scale down"))
    await wait_until(lambda: call.kinds() == ["draining"])
    assert not agents.tasks[0].done()
    (directory / "go").touch()
    await asyncio.wait_for(asyncio.shield(agents.tasks[0]), 15)

    assert call.kinds() == ["draining", "job_finished:a-1", "drained"]
    assert (await call.result("a-1")).outcome is JobOutcome.SUCCEEDED
    assert agent.unregistered is False  # the double does not implement UnregisterWorker


async def test_an_agent_stopped_while_a_job_runs_and_no_stream_is_up_ends_the_job(agents: Agents) -> None:
    agent, call = await first_call(agents, reconnect_max=0.2)
    call.send(run_job("a-1", CHILD))
    child = await agents.child_of("w", "job-a-1")
    await agents.double.go_down(call)

    agent.request_shutdown("test")
    await asyncio.wait_for(asyncio.shield(agents.tasks[0]), 15)

    assert not alive(child)
    assert agent.jobs.running == []


async def test_spawned_slots_each_run_their_own_job_at_the_same_time(
    double: ConnectDouble, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    agent = await asyncio.create_subprocess_exec(
        HODEI, "agent", "-s", double.target, "--worker-id", "host", "--spawn", "2", "--work-dir", str(work),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
    )  # fmt: skip
    try:
        calls = [await double.call("host-1"), await double.call("host-2")]
        for n, call in enumerate(calls, 1):
            call.send(run_job(f"a-{n}", [*HELD[:2], HELD[2] + "; echo $HODEI_JOB_ID"], job_id=f"job-{n}"))
        # Both have started before either is let go: they run at the same time, each in its slot's directory.
        directories = [work / "host-1" / "job-1", work / "host-2" / "job-2"]
        await wait_until(lambda: all((d / "started").exists() for d in directories), timeout=15)
        for directory in directories:
            (directory / "go").touch()

        results = [await call.result(f"a-{n}") for n, call in enumerate(calls, 1)]

        assert results == [
            JobResult(JobOutcome.SUCCEEDED, exit_code=0, output_tail=f"released\njob-{n}\n") for n in (1, 2)
        ]
        agent.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(agent.communicate(), 30)
        assert agent.returncode == 0, stderr.decode()
    finally:
        await end(agent)


async def test_end_to_end_a_job_acquired_on_a_real_scheduler_runs_on_a_real_agent_process(
    tmp_path: Path,
) -> None:
    async with EmbeddedScheduler() as scheduler:
        agent = await asyncio.create_subprocess_exec(
            HODEI, "agent", "-s", scheduler.target, "--worker-id", "e2e", "--cpu-cores", "1",
            "--memory-mb", "256", "--work-dir", str(tmp_path / "work"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
        )  # fmt: skip
        try:
            await wait_for(lambda: connected(scheduler, "e2e"), timeout=30)
            client = scheduler.client()

            acquired = await client.acquire_worker(
                "job-7", Requirements(), job=Job(("sh", "-c", "echo seven; exit 7")), wait=10
            )
            view = await client.renew_assignment(acquired.assignment.assignment_id, wait=20)

            assert acquired.record.worker_id == "e2e"
            assert view.result == JobResult(JobOutcome.FAILED, exit_code=7, output_tail="seven\n")

            async def available_again() -> bool:
                record = await scheduler.get_worker("e2e")
                assert record is not None
                return (record.status, record.assignment, record.use_count) == (
                    WorkerStatus.AVAILABLE,
                    None,
                    1,
                )

            await wait_for(available_again, timeout=10)
            # The same through the command line: the job's output, and its exit code as the command's.
            ran = await run_hodei(
                "jobs", "run", "--scheduler", scheduler.target, "--pool", "default", "--job-id", "cli-1",
                "--", "sh", "-c", "echo from-cli; exit 5",
            )  # fmt: skip
            assert (ran.returncode, ran.stdout) == (5, "from-cli\n"), ran.stderr
            agent.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(agent.communicate(), 30)
            assert agent.returncode == 0, stderr.decode()
            assert await scheduler.get_worker("e2e") is None  # it unregistered itself
        finally:
            await end(agent)


@dataclass(frozen=True)
class Real:
    """A real scheduler, a fault proxy in front of it, and in-process agents dialing the proxy."""

    scheduler: EmbeddedScheduler
    proxy: FaultProxy
    agents: Agents

    async def acquired(
        self, job_id: str, command: Sequence[str]
    ) -> tuple[WorkerAgent, SchedulerPortClient, Acquired]:
        """Agent ``w`` connected, then acquired for a job running ``command``."""
        agent = self.agents.start("w")
        await wait_for(lambda: connected(self.scheduler, "w"))
        client = self.scheduler.client()
        return agent, client, await client.acquire_worker(job_id, Requirements(), job=Job(tuple(command)))


@pytest_asyncio.fixture
async def real(tmp_path: Path) -> AsyncIterator[Real]:
    async with EmbeddedScheduler() as scheduler, FaultProxy(upstream=scheduler.target) as proxy:
        running = Agents(proxy, tmp_path / "work")
        yield Real(scheduler, proxy, running)
        await running.stop()


async def test_end_to_end_a_job_outlives_a_reset_connection_and_its_result_ends_the_assignment(
    real: Real,
) -> None:
    agent, client, acquired = await real.acquired("held", HELD)
    directory = await real.agents.started("w", "held")

    real.proxy.reset_all()
    await wait_until(lambda: agent.connections == 2, timeout=15)
    record = await real.scheduler.get_worker("w")
    assert record is not None and record.incarnation == agent.incarnation  # the agent's new incarnation ...
    kept = replace(acquired.assignment, incarnation=agent.incarnation)
    assert (record.status, record.assignment) == (WorkerStatus.BUSY, kept)  # ... still bound to the job
    (directory / "go").touch()
    view = await client.renew_assignment(acquired.assignment.assignment_id, wait=20)

    assert view.result == JobResult(JobOutcome.SUCCEEDED, exit_code=0, output_tail="released\n")
    await wait_for(lambda: connected(real.scheduler, "w"))  # AVAILABLE, on its new stream


async def test_end_to_end_a_holder_that_releases_a_running_job_cancels_it_on_the_agent(real: Real) -> None:
    agent, client, acquired = await real.acquired("child", CHILD)
    child = await real.agents.child_of("w", "child")

    await client.release_worker(
        acquired.assignment.assignment_id, outcome=JobOutcome.CANCELLED, reason="no longer"
    )

    await wait_until(lambda: not alive(child), timeout=15)
    await wait_until(lambda: agent.jobs.unreported == [], timeout=15)  # its result was sent, and ignored
    assert [c.kind for c in agent.commands] == [CommandKind.RUN_JOB, CommandKind.CANCEL_JOB]
