"""``hodei jobs run``: acquire a worker that fits, run a command on it, print its result, exit with its code."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import uuid
from typing import Annotated

import typer
from rich.markup import escape

from hodei.cli._common import SchedulerOption, errors, parse_labels, run_against_scheduler, until_signalled
from hodei.cli._security import (
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    TokenOption,
    scheduler_client,
)
from hodei.domain import Job, JobOutcome, JobResult
from hodei.pools import Requirements
from hodei.ports import AssignmentView

jobs_app = typer.Typer(help="Run jobs on the scheduler's workers.", no_args_is_help=True)

# Exit codes besides the job's own: a scheduler error is 1 (run_against_scheduler), a bad option 2.
TIMED_OUT_EXIT = 124  # as timeout(1)
CANCELLED_EXIT = 130  # as a shell's Ctrl-C
LOST_EXIT = 75  # EX_TEMPFAIL: the worker went away (or the assignment was dropped): run it again
NO_WORKER_EXIT = 69  # EX_UNAVAILABLE: no worker fitting was free within --wait

# A job's output is shown as it was, but for the control characters that would drive the terminal (an escape
# sequence, a carriage return rewriting lines): those are shown escaped.
_DRIVING = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    return _DRIVING.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def exit_code(result: JobResult) -> int:
    if result.outcome is JobOutcome.SUCCEEDED:
        return 0
    if result.outcome is JobOutcome.FAILED:
        return result.exit_code if 0 < result.exit_code < 256 else 1
    if result.outcome is JobOutcome.TIMED_OUT:
        return TIMED_OUT_EXIT
    if result.outcome is JobOutcome.CANCELLED:
        return CANCELLED_EXIT
    return LOST_EXIT


def _env(items: list[str]) -> dict[str, str]:
    environment: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--env")
        environment[key] = value
    return environment


@jobs_app.command("run", context_settings={"allow_interspersed_args": False})
def jobs_run(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
    pool: Annotated[str, typer.Option(help="Only a worker of this pool.")] = "",
    cpu: Annotated[int, typer.Option(help="At least this many cores.", min=0)] = 0,
    memory: Annotated[int, typer.Option(help="At least this many MB of memory.", min=0)] = 0,
    labels: Annotated[str, typer.Option(help="Only a worker with these labels, k=v,...")] = "",
    env: Annotated[
        list[str] | None, typer.Option("--env", help="NAME=VALUE for the job (repeatable).")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher is served first.")] = 0,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a worker that fits.", min=0)] = 300.0,
    timeout: Annotated[float, typer.Option(help="Seconds the job may run (0: no limit).", min=0)] = 0.0,
    job_id: Annotated[
        str, typer.Option(help="The job's id (default: a new one); a retry with it is idempotent.")
    ] = "",
    scheduler: SchedulerOption = "127.0.0.1:50051",
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
) -> None:
    """Acquire a worker that fits, run COMMAND on it, print the end of its output and exit with its exit code.
    Exit codes: the job's own; 124 it timed out; 130 cancelled (Ctrl-C releases the worker and stops the job);
    75 the worker was lost (run it again); 69 no worker was free within --wait; 1 the scheduler could not be
    asked; 2 a bad option."""
    requirements = Requirements(
        pool=pool or None, cpu_cores=cpu, memory_mb=memory, labels=parse_labels(labels)
    )
    job = Job(tuple(command), _env(env or []), timeout or None)
    name = job_id or f"job-{uuid.uuid4().hex[:12]}"
    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)

    async def run() -> JobResult:
        from hodei.errors import SchedulerTimeout

        async with connect() as client:
            try:
                acquired = await client.acquire_worker(
                    name, requirements, job=job, priority=priority, wait=wait
                )
            except SchedulerTimeout as error:
                errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
                raise typer.Exit(NO_WORKER_EXIT) from error
            assignment = acquired.assignment
            errors.print(
                escape(
                    f"{name}: running on {acquired.record.worker_id} (assignment {assignment.assignment_id})"
                ),
                highlight=False,
                soft_wrap=True,
            )

            async def until_ended() -> AssignmentView:
                while True:  # each renewal keeps the assignment, and answers as soon as it ends
                    view = await client.renew_assignment(
                        assignment.assignment_id, wait=assignment.lease_ttl / 3
                    )
                    if view.result is not None:
                        return view

            ended = asyncio.ensure_future(until_ended())
            stop = asyncio.ensure_future(until_signalled())
            await asyncio.wait({ended, stop}, return_when=asyncio.FIRST_COMPLETED)
            if ended.done():
                stop.cancel()
                return ended.result().result or JobResult(JobOutcome.WORKER_LOST)
            ended.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ended
            view = await client.release_worker(
                assignment.assignment_id,
                outcome=JobOutcome.CANCELLED,
                reason="cancelled by hodei jobs run",
                timeout=10,
            )
            return view.result or JobResult(JobOutcome.CANCELLED)

    result = run_against_scheduler(run(), scheduler=scheduler, tls_ca=tls_ca, tls_cert=tls_cert)
    if result.output_tail:
        sys.stdout.write(terminal_safe(result.output_tail))
        if not result.output_tail.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    said = f"{name}: {result.outcome.value}"
    if result.exit_code >= 0:
        said += f", exit code {result.exit_code}"
    if result.reason:
        said += f" ({result.reason})"
    errors.print(escape(terminal_safe(said)), highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code(result))
