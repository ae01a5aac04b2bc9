"""The shell executor runs real processes: exit codes, its own directory and environment, timeouts and
cancellation that end the whole process group, and the tail of the output."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from hodei.agent._executor import JobOutcome, JobSpec, ShellExecutor
from tests.helpers import wait_for

PY = sys.executable


def sh(line: str, **fields: object) -> JobSpec:
    return JobSpec(job_id=str(fields.pop("job_id", "job-1")), command=["sh", "-c", line], **fields)  # type: ignore[arg-type]


@pytest.fixture
def executor(tmp_path: Path) -> ShellExecutor:
    return ShellExecutor(tmp_path / "jobs", tail_bytes=4096, kill_grace=2.0)


async def test_a_job_exits_with_its_code_and_its_output_tail(executor: ShellExecutor) -> None:
    ok = await executor.run(sh("echo hello; echo oops >&2"))
    failed = await executor.run(sh("exit 7"))

    assert (ok.outcome, ok.exit_code, ok.output_tail) == (JobOutcome.SUCCEEDED, 0, "hello\noops\n")
    assert (failed.outcome, failed.exit_code, failed.output_tail) == (JobOutcome.FAILED, 7, "")


async def test_only_the_last_bytes_of_a_large_output_are_kept_and_every_byte_is_passed_on(
    tmp_path: Path,
) -> None:
    executor = ShellExecutor(tmp_path / "jobs", tail_bytes=64)
    seen = bytearray()
    script = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4000 + b'THE-END')"

    result = await executor.run(JobSpec(job_id="big", command=[PY, "-c", script]), on_output=seen.extend)

    expected = bytes(range(256)) * 4000 + b"THE-END"
    assert bytes(seen) == expected
    assert result.output_tail == expected[-64:].decode(errors="replace")


async def test_a_job_runs_in_a_directory_of_its_own_removed_after(
    executor: ShellExecutor, tmp_path: Path
) -> None:
    result = await executor.run(sh('pwd; echo "$HOME $TMPDIR"; touch made-here; ls', job_id="dir-job"))

    workdir = str(tmp_path / "jobs" / "dir-job")
    assert result.output_tail == f"{workdir}\n{workdir} {workdir}\nmade-here\n"
    assert not (tmp_path / "jobs" / "dir-job").exists()


async def test_a_job_gets_its_own_variables_and_never_the_agents_secrets(
    executor: ShellExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HODEI_JOIN_TOKEN", "secret-join-token")
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")

    result = await executor.run(
        JobSpec(job_id="env-job", command=["env"], environment={"BUILD": "42"}), on_output=None
    )

    variables = dict(line.split("=", 1) for line in result.output_tail.splitlines())
    assert "HODEI_JOIN_TOKEN" not in variables and "DATABASE_PASSWORD" not in variables
    assert variables["BUILD"] == "42"
    assert variables["HODEI_JOB_ID"] == "env-job"
    assert variables["LC_ALL"] == "C.UTF-8"


async def test_a_job_past_its_timeout_is_ended_with_everything_it_started(
    executor: ShellExecutor, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # A child that ignores SIGTERM and a grandchild in the background: both must go.
    line = f"trap '' TERM; sleep 300 & echo $! > {pid_file}; echo started; sleep 300"

    result = await executor.run(sh(line, timeout=0.5))

    assert result.outcome is JobOutcome.TIMED_OUT
    assert result.exit_code == -9  # SIGTERM ignored: SIGKILL after the grace
    assert result.output_tail == "started\n"
    assert result.message == "ran past its timeout of 0.5 s"
    grandchild = int(pid_file.read_text())
    await wait_for(lambda: _gone(grandchild), timeout=5)


async def test_a_cancelled_job_is_ended_and_reported_cancelled(executor: ShellExecutor) -> None:
    run = asyncio.create_task(executor.run(sh("echo go; sleep 300", job_id="long")))
    await wait_for(lambda: _true("long" in executor.running), timeout=5)
    assert executor.cancel("nope") is False

    assert executor.cancel("long") is True
    result = await asyncio.wait_for(run, 10)

    assert (result.outcome, result.exit_code, result.message) == (JobOutcome.CANCELLED, -15, "cancelled")
    assert executor.running == []


async def test_a_run_cancelled_from_outside_ends_the_jobs_whole_group(
    executor: ShellExecutor, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    run = asyncio.create_task(
        executor.run(sh(f"sleep 300 & echo $! > {pid_file}; sleep 300", job_id="stopping"))
    )
    await wait_for(lambda: _true(pid_file.exists() and pid_file.read_text().strip() != ""), timeout=5)
    child = int(pid_file.read_text())

    run.cancel()  # the agent stops while the job runs
    with pytest.raises(asyncio.CancelledError):
        await run

    await wait_for(lambda: _gone(child), timeout=5)
    assert executor.running == []
    assert not (tmp_path / "jobs" / "stopping").exists()


async def test_a_command_that_cannot_start_is_reported_not_started(executor: ShellExecutor) -> None:
    result = await executor.run(JobSpec(job_id="nope", command=["/nonexistent/tool", "--x"]))

    assert (result.outcome, result.exit_code) == (JobOutcome.NOT_STARTED, None)
    assert result.message == "cannot start '/nonexistent/tool': No such file or directory"


@pytest.mark.parametrize("job_id", ["", "../escape", "a/b", "x" * 129, "-flag", "\x00"])
async def test_a_job_id_that_could_leave_the_work_root_is_refused(
    executor: ShellExecutor, job_id: str
) -> None:
    with pytest.raises(ValueError, match="job_id must be"):
        await executor.run(JobSpec(job_id=job_id, command=["true"]))


async def _gone(pid: int) -> bool:
    return _not_running(pid)


def _not_running(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting to be reaped by its parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


async def _true(value: bool) -> bool:
    return value


async def test_a_run_cancelled_while_its_process_is_still_being_made_ends_the_whole_group(
    executor: ShellExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A busy event loop may finish making the process well after the job started: cancelled then, the run
    # must still end everything the job started (asyncio alone would kill only the leader).
    made = asyncio.Event()
    real = asyncio.create_subprocess_exec

    async def slow_to_return(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await real(*args, **kwargs)
        made.set()
        await asyncio.sleep(1)  # returned late: the run is cancelled meanwhile
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", slow_to_return)
    pid_file = tmp_path / "child.pid"
    run = asyncio.create_task(
        executor.run(sh(f"sleep 300 & echo $! > {pid_file}; sleep 300", job_id="early"))
    )
    await asyncio.wait_for(made.wait(), 5)
    await wait_for(lambda: _true(pid_file.exists() and pid_file.read_text().strip() != ""), timeout=5)
    child = int(pid_file.read_text())

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    await wait_for(lambda: _gone(child), timeout=5)
    assert executor.running == []
    assert not (tmp_path / "jobs" / "early").exists()
