"""The shell executor: how ``hodei agent`` runs a job it was assigned.

Each job runs as its own process group, in a working directory of its own (created empty, removed after), with
an environment made of an allow-list of the agent's variables (never its join token or credentials), the job's
own variables, and ``HODEI_JOB_ID``. Its output (stdout and stderr, interleaved) is passed on as it comes and
its last ``tail_bytes`` are kept for the report. A job that outlives its ``timeout``, or is cancelled, gets
SIGTERM to its whole group, then SIGKILL after ``kill_grace`` seconds: nothing it started outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hodei._environment import passed_environment
from hodei._quoting import quote_short

__all__ = ["JOB_ID_VARIABLE", "PASSED_JOB_ENVIRONMENT", "JobOutcome", "JobResult", "JobSpec", "ShellExecutor"]

JOB_ID_VARIABLE = "HODEI_JOB_ID"
PASSED_JOB_ENVIRONMENT = ("PATH", "LANG", "TZ")
"""The agent's variables a job gets (when set), with the ``LC_*`` ones; ``HOME`` and ``TMPDIR`` are the job's
working directory."""

_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 64 * 1024


class JobOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"  # exit code 0
    FAILED = "failed"  # another exit code, or killed by a signal of its own
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    NOT_STARTED = "not_started"  # the command could not be started (not found, not executable)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """``JobSpec(job_id="build-1", command=["make", "test"], timeout=600)``; a shell line is
    ``command=["sh", "-c", "make && make test"]``."""

    job_id: str
    command: Sequence[str]
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    job_id: str
    outcome: JobOutcome
    exit_code: int | None  # None when it never started; negative: the signal that ended it
    output_tail: str  # the last bytes of its output, decoded (invalid UTF-8 replaced)
    duration: float
    message: str = ""  # why it did not start, or how it ended when not by itself


class ShellExecutor:
    """Runs jobs under ``work_root`` (one directory per job). ``await executor.run(job)`` returns its
    :class:`JobResult`; ``executor.cancel(job_id)`` ends a running job."""

    def __init__(self, work_root: Path, *, tail_bytes: int = 4096, kill_grace: float = 5.0) -> None:
        self.work_root = work_root
        self.tail_bytes = tail_bytes
        self.kill_grace = kill_grace
        self._cancelled: dict[str, asyncio.Event] = {}

    def cancel(self, job_id: str) -> bool:
        """Ends the job if it is running here; whether it was."""
        event = self._cancelled.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    @property
    def running(self) -> list[str]:
        return sorted(self._cancelled)

    async def run(self, job: JobSpec, on_output: Callable[[bytes], None] | None = None) -> JobResult:
        if not _JOB_ID.fullmatch(job.job_id):
            raise ValueError(
                "job_id must be 1 to 128 letters, digits, '.', '_' or '-', starting with one of the first two"
            )
        if not job.command:
            raise ValueError("command must not be empty")
        if job.job_id in self._cancelled:
            raise ValueError(f"job {job.job_id} is already running here")
        cancelled = self._cancelled[job.job_id] = asyncio.Event()
        workdir = self.work_root / job.job_id
        started = time.monotonic()
        try:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            creating = asyncio.ensure_future(
                asyncio.create_subprocess_exec(
                    *job.command,
                    cwd=workdir,
                    env=self._environment(job, workdir),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            try:
                process = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # Cancelled while the process was being made: it may run already (a busy loop finishes making
                # it after the job has started): its whole group goes, not only the leader asyncio would kill.
                with contextlib.suppress(OSError):
                    made = await creating
                    _signal_group(made.pid, signal.SIGKILL)
                    await made.wait()
                raise
            except OSError as error:
                return JobResult(
                    job_id=job.job_id,
                    outcome=JobOutcome.NOT_STARTED,
                    exit_code=None,
                    output_tail="",
                    duration=time.monotonic() - started,
                    message=f"cannot start {quote_short(job.command[0], 200)}: {error.strerror or error}",
                )
            try:
                return await self._supervise(process, job, cancelled, on_output, started)
            except BaseException:  # the run itself was cancelled (the agent stops): its group goes too
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()  # reaped (SIGKILL cannot be ignored), its pipes closed with it
                raise
        finally:
            del self._cancelled[job.job_id]
            shutil.rmtree(workdir, ignore_errors=True)

    async def _supervise(
        self,
        process: asyncio.subprocess.Process,
        job: JobSpec,
        cancelled: asyncio.Event,
        on_output: Callable[[bytes], None] | None,
        started: float,
    ) -> JobResult:
        tail = _Tail(self.tail_bytes)
        reader = asyncio.create_task(_pump(process, tail, on_output))
        ended = asyncio.create_task(process.wait())
        stop = asyncio.create_task(cancelled.wait())
        try:
            return await self._outcome(process, job, cancelled, tail, reader, ended, stop, started)
        finally:
            for task in (reader, ended, stop):
                task.cancel()

    async def _outcome(
        self,
        process: asyncio.subprocess.Process,
        job: JobSpec,
        cancelled: asyncio.Event,
        tail: _Tail,
        reader: asyncio.Task[None],
        ended: asyncio.Task[int],
        stop: asyncio.Task[bool],
        started: float,
    ) -> JobResult:
        done, _ = await asyncio.wait({ended, stop}, timeout=job.timeout, return_when=asyncio.FIRST_COMPLETED)
        if ended in done:
            outcome, message = None, ""
        else:
            outcome = JobOutcome.CANCELLED if cancelled.is_set() else JobOutcome.TIMED_OUT
            message = "cancelled" if cancelled.is_set() else f"ran past its timeout of {job.timeout:g} s"
            await self._end_group(process, ended)
        # The group leader has exited; what it left behind holding the pipe is ended too.
        _signal_group(process.pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(reader, self.kill_grace)
        except TimeoutError:  # a process that left the group (setsid) still holds the output open
            message = message or "its output was left open by a process outside its group"
        code = process.returncode
        if outcome is None:
            outcome = JobOutcome.SUCCEEDED if code == 0 else JobOutcome.FAILED
        return JobResult(
            job_id=job.job_id,
            outcome=outcome,
            exit_code=code,
            output_tail=tail.text(),
            duration=time.monotonic() - started,
            message=message,
        )

    async def _end_group(self, process: asyncio.subprocess.Process, ended: asyncio.Task[int]) -> None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(ended), self.kill_grace)
        except TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
            await ended

    def _environment(self, job: JobSpec, workdir: Path) -> dict[str, str]:
        environment = passed_environment(PASSED_JOB_ENVIRONMENT)
        environment.update(job.environment)
        environment.update({"HOME": str(workdir), "TMPDIR": str(workdir), JOB_ID_VARIABLE: job.job_id})
        return environment


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _pump(
    process: asyncio.subprocess.Process, tail: _Tail, on_output: Callable[[bytes], None] | None
) -> None:
    assert process.stdout is not None
    while chunk := await process.stdout.read(_CHUNK):
        tail.add(chunk)
        if on_output is not None:
            on_output(chunk)


class _Tail:
    """The last ``limit`` bytes of a stream, in constant memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk[-self.limit :]
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        return self.data.decode(errors="replace")
