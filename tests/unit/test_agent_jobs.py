"""AgentJobs on its own (a real executor, no stream): the output tail as reported, results kept while no stream
takes them, and an agent that stops not waiting on a job that will not end."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psutil
import pytest

from hodei.agent._executor import ShellExecutor
from hodei.agent._jobs import AgentJobs
from hodei.domain import Assignment, Job, JobOutcome, JobResult, bounded_tail
from tests.helpers import wait_until


def assignment(assignment_id: str, *command: str) -> Assignment:
    return Assignment(
        assignment_id=assignment_id,
        job_id=f"job-{assignment_id}",
        worker_id="w",
        incarnation=1,
        job=Job(command),
    )


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("a\tb\r\n\x1b[1m\x00\x7f\x85.", 4096, "a\tb\r\n\ufffd[1m\ufffd\ufffd\ufffd."),
        ("a" + "é" * 2048, 4096, "é" * 2048),  # 4097 bytes: the first one goes
        ("aé", 2, "é"),
        ("aé", 1, ""),  # half a character is not shown
        ("x" * 10, 4, "xxxx"),
    ],
)
def test_the_tail_is_at_most_limit_bytes_of_valid_text_without_terminal_controls(
    text: str, limit: int, expected: str
) -> None:
    tail = bounded_tail(text, limit)
    assert tail == expected
    assert len(tail.encode()) <= limit


@pytest.mark.parametrize(
    "text",
    [
        "é" * 5000 + "\x1b" * 3000,  # control characters at the end, replaced by 3-byte characters
        "\x00" * 2000 + "x" * 10,
        "\ud800" * 5000,  # lone surrogates: one byte each once replaced
        "a\r\n" * 100_000,
        "😀" * 3000,
    ],
)
def test_the_tail_of_a_long_text_is_the_tail_of_the_whole_text(text: str) -> None:
    """Only the last ``limit`` characters are read: the result is what the whole text would give."""
    whole = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", "\ufffd", text).encode(errors="replace")
    assert bounded_tail(text) == whole[-4096:].decode(errors="ignore")


async def test_results_beyond_those_kept_drop_the_oldest_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = AgentJobs(ShellExecutor(tmp_path), "w", keep=2)
    with caplog.at_level(logging.WARNING, logger="hodei.agent"):
        for n in (1, 2):
            jobs.start(assignment(f"a-{n}", "true"), refuse="draining")
        oldest = await jobs.next_result()
        jobs.start(assignment("a-3", "true"), refuse="draining")
        jobs.sent(oldest)  # it was dropped meanwhile: nothing else goes

    assert oldest == ("a-1", JobResult(JobOutcome.FAILED, reason="draining"))
    assert jobs.unreported == ["a-2", "a-3"]
    dropped = [r for r in caplog.records if r.getMessage() == "job.result_dropped"]
    assert [r.assignment_id for r in dropped] == ["a-1"]  # type: ignore[attr-defined]
    assert await jobs.reported(0.01) is False


async def test_closing_stops_a_job_that_ignores_sigterm_and_kills_its_group_at_once(tmp_path: Path) -> None:
    jobs = AgentJobs(ShellExecutor(tmp_path, kill_grace=60.0), "w")
    script = "trap '' TERM; sleep 60 & echo $! > child.tmp && mv child.tmp child; wait"
    jobs.start(assignment("a-1", "sh", "-c", script))
    child_file = tmp_path / "job-a-1" / "child"
    await wait_until(child_file.exists)
    child = psutil.Process(int(child_file.read_text()))

    await jobs.aclose(0.2)  # far less than the executor's kill grace

    assert (jobs.running, jobs.unreported) == ([], [])  # a job ended with the agent has nothing to report
    await wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE)


def test_jobs_run_under_the_state_directory_or_where_a_user_with_no_home_can_write(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os
    import tempfile

    from hodei.agent._config import default_work_dir

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_work_dir() == tmp_path / "state" / "hodei" / "work"
    # A state directory that cannot be made (here: under a file; in a container: a user with no home).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker / "state"))
    assert default_work_dir() == Path(tempfile.gettempdir()) / f"hodei-{os.getuid()}" / "work"
