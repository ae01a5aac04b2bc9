"""AgentJobs: the jobs the scheduler assigns one worker, run in the shell executor, their results kept until sent.

A worker runs one job at a time: a second RUN_JOB while one runs is answered FAILED ("busy"), one while the
worker drains FAILED ("draining"). A job outlives the stream it came on: when the stream breaks, the job goes on,
the agent's next hello names it, and its result is sent on whichever stream is up when it ends. Results not yet
sent are kept (at most :data:`KEPT_RESULTS`, the oldest dropped first) until one is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from hodei._quoting import clip, quote_short
from hodei.agent._executor import JobOutcome as ExecutorOutcome
from hodei.agent._executor import JobResult as ExecutorResult
from hodei.agent._executor import JobSpec, ShellExecutor
from hodei.domain import MAX_REASON_LENGTH, Assignment, JobOutcome, JobResult, bounded_tail
from hodei.observability import _tracing as tracing

__all__ = ["KEPT_RESULTS", "AgentJobs"]

JOB_ID = "hodei.job_id"
ASSIGNMENT_ID = "hodei.assignment_id"
JOB_OUTCOME = "hodei.job_outcome"
JOB_EXIT_CODE = "hodei.exit_code"

log = logging.getLogger("hodei.agent")

KEPT_RESULTS = 8
"""Results of ended jobs kept while no stream takes them (a worker runs one job at a time: a few suffice)."""

_OUTCOMES = {
    ExecutorOutcome.SUCCEEDED: JobOutcome.SUCCEEDED,
    ExecutorOutcome.FAILED: JobOutcome.FAILED,
    ExecutorOutcome.TIMED_OUT: JobOutcome.TIMED_OUT,
    ExecutorOutcome.CANCELLED: JobOutcome.CANCELLED,
    ExecutorOutcome.NOT_STARTED: JobOutcome.FAILED,
}
# What a terminal would act on (escape sequences, NUL, DEL, C1); tabs and line ends are output.
_REASON_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _reason(text: str) -> str:
    """A reason as the scheduler accepts one: no control characters, at most MAX_REASON_LENGTH characters."""
    return _REASON_CONTROL.sub("?", text)[:MAX_REASON_LENGTH]


@dataclass(slots=True)
class _Running:
    assignment: Assignment
    task: asyncio.Task[None]
    cancel_reason: str = ""


class AgentJobs:
    """The jobs of one worker (``worker_id``), run by ``executor``.

    ``running`` names the assignments whose job runs; ``unreported`` those the scheduler has not yet been told
    about (running, or ended and not yet sent); :meth:`next_result` / :meth:`sent` hand the ended ones to the
    stream that reports them.
    """

    def __init__(
        self,
        executor: ShellExecutor,
        worker_id: str,
        *,
        keep: int = KEPT_RESULTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.executor = executor
        self.worker_id = worker_id
        self._clock = clock
        self._running: dict[str, _Running] = {}
        self._ended: collections.deque[tuple[str, JobResult]] = collections.deque(maxlen=keep)
        self._change = asyncio.Event()  # set (and replaced) at every change of what runs or waits to be sent

    @property
    def running(self) -> list[str]:
        return list(self._running)

    @property
    def unreported(self) -> list[str]:
        return [*self._running, *(assignment_id for assignment_id, _ in self._ended)]

    def start(self, assignment: Assignment, *, refuse: str = "") -> None:
        """Run the assignment's job; or answer it FAILED at once with reason ``refuse``, or "busy" while another
        runs. An assignment already running or not yet reported is not run twice (a repeated command)."""
        assignment_id = assignment.assignment_id
        if assignment_id in self.unreported:
            log.warning("job.repeated", extra=self._fields(assignment))
            return
        if not refuse and self._running:
            refuse = "busy"
        if refuse:
            log.warning("job.refused", extra=self._fields(assignment, reason=refuse))
            self._ended_with(assignment_id, JobResult(JobOutcome.FAILED, reason=refuse))
            return
        task = asyncio.create_task(self._run(assignment), name=f"job {clip(assignment_id)}")
        self._running[assignment_id] = _Running(assignment, task)

    def cancel(self, assignment_id: str, reason: str = "") -> bool:
        """Cancel the job of a running assignment (its whole process group); whether it was running here."""
        running = self._running.get(assignment_id)
        if running is None:
            log.warning(
                "job.cancel_unknown",
                extra={"worker_id": self.worker_id, "assignment_id": quote_short(assignment_id)},
            )
            return False
        running.cancel_reason = f"cancelled: {quote_short(reason)}" if reason else "cancelled"
        self.executor.cancel(running.assignment.job_id)
        return True

    def cancel_all(self, reason: str) -> None:
        for assignment_id in self.running:
            self.cancel(assignment_id, reason)

    async def idle(self, timeout: float | None) -> bool:
        """Wait at most ``timeout`` seconds (None: no limit) until no job runs; whether none does."""
        return await self._wait(lambda: not self._running, timeout)

    async def reported(self, timeout: float | None) -> bool:
        """Wait at most ``timeout`` seconds until every ended job's result was sent; whether each was."""
        return await self._wait(lambda: not self._ended, timeout)

    async def next_result(self) -> tuple[str, JobResult]:
        """The oldest result not yet sent (waiting for one); :meth:`sent` once the scheduler has it."""
        await self._until(lambda: bool(self._ended))
        return self._ended[0]

    def sent(self, result: tuple[str, JobResult]) -> None:
        with contextlib.suppress(ValueError):  # dropped meanwhile, for a newer one (more ended than are kept)
            self._ended.remove(result)
        self._notify()

    async def aclose(self, grace: float) -> None:
        """Cancel every job, give them ``grace`` seconds to end (SIGTERM, then SIGKILL after the executor's
        kill grace), then stop them at once (their process groups are killed)."""
        self.cancel_all("the agent stops")
        if not await self.idle(grace):
            tasks = [running.task for running in self._running.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        until = asyncio.ensure_future(self._until(predicate))
        try:
            await asyncio.wait({until}, timeout=timeout)
        finally:
            until.cancel()
        return predicate()

    async def _until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._change.wait()

    async def _run(self, assignment: Assignment) -> None:
        try:
            # One trace from the holder's acquire to the job: the span continues the scheduler's.
            with (
                tracing.continuing(assignment.trace_context),
                tracing.span("job.run", self._span_attributes(assignment)) as current,
            ):
                result = await self._outcome(assignment)
                current.set_attribute(JOB_OUTCOME, result.outcome.value)
                current.set_attribute(JOB_EXIT_CODE, result.exit_code)
        finally:  # a job cancelled with the agent itself has no result to report
            del self._running[assignment.assignment_id]
            self._notify()
        self._ended_with(assignment.assignment_id, result)

    async def _outcome(self, assignment: Assignment) -> JobResult:
        job = assignment.job
        started = self._clock()
        result: JobResult
        if job is None:
            result = JobResult(JobOutcome.FAILED, reason="the assignment has no job to run")
        elif violations := job.violations():
            result = JobResult(JobOutcome.FAILED, reason=_reason("; ".join(map(str, violations))))
        else:
            log.info(
                "job.started",
                extra=self._fields(assignment, command=quote_short(" ".join(job.command))),
            )
            spec = JobSpec(
                job_id=assignment.job_id,
                command=job.command,
                environment=job.environment,
                timeout=job.timeout,
            )
            try:
                ran = await self.executor.run(spec)
            except ValueError as error:  # a job id the executor cannot name a directory after
                result = JobResult(JobOutcome.FAILED, reason=_reason(str(error)))
            except OSError as error:  # its working directory cannot be made (the work dir unwritable, full)
                result = JobResult(
                    JobOutcome.FAILED, reason=_reason(f"cannot prepare the job's directory: {error}")
                )
            else:
                result = self._result(assignment.assignment_id, ran)
        log.info(
            "job.finished",
            extra=self._fields(
                assignment,
                outcome=result.outcome.value,
                exit_code=result.exit_code,
                duration_s=round(self._clock() - started, 3),
                reason=clip(result.reason, 200),
            ),
        )
        return result

    @staticmethod
    def _span_attributes(assignment: Assignment) -> dict[str, str | int]:
        return {
            tracing.WORKER_ID: assignment.worker_id,
            JOB_ID: clip(assignment.job_id),
            ASSIGNMENT_ID: assignment.assignment_id[:64],
        }

    def _result(self, assignment_id: str, ran: ExecutorResult) -> JobResult:
        running = self._running[assignment_id]
        reason = ran.message
        if ran.outcome is ExecutorOutcome.CANCELLED:
            reason = running.cancel_reason or reason
        return JobResult(
            _OUTCOMES[ran.outcome],
            exit_code=-1 if ran.exit_code is None else ran.exit_code,
            output_tail=bounded_tail(ran.output_tail),
            reason=_reason(reason),
        )

    def _ended_with(self, assignment_id: str, result: JobResult) -> None:
        if len(self._ended) == self._ended.maxlen:
            dropped, _ = self._ended[0]
            log.warning(
                "job.result_dropped", extra={"worker_id": self.worker_id, "assignment_id": clip(dropped)}
            )
        self._ended.append((assignment_id, result))
        self._notify()

    def _notify(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _fields(self, assignment: Assignment, **fields: object) -> dict[str, object]:
        return {
            "worker_id": self.worker_id,
            "assignment_id": clip(assignment.assignment_id),
            "job_id": clip(assignment.job_id),
            **fields,
        }
