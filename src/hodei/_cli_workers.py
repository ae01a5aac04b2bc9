"""``hodei workers …``: look at the scheduler's workers, unregister one, watch the pool live."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import typer
from rich.markup import escape

from hodei._cli_common import SchedulerOption, console, parse_labels, run_against_scheduler
from hodei._cli_security import (
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    TokenOption,
    scheduler_client,
)
from hodei.domain import WorkerRecord, WorkerStatus, WorkerType
from hodei.views import plain, workers_table

workers_app = typer.Typer(help="Look at and manage the scheduler's workers.", no_args_is_help=True)


@workers_app.command("list")
def workers_list(
    scheduler: SchedulerOption = "127.0.0.1:50051",
    status: Annotated[list[WorkerStatus] | None, typer.Option(help="Only this status (repeatable).")] = None,
    worker_type: Annotated[WorkerType | None, typer.Option("--type", help="Only this worker type.")] = None,
    labels: Annotated[str, typer.Option(help="Only workers with these labels, k=v,...")] = "",
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
) -> None:
    """List the registered workers."""
    from hodei.ports import WorkerFilter

    worker_filter = WorkerFilter(
        statuses=frozenset(status or ()), worker_type=worker_type, labels=parse_labels(labels)
    )
    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)

    async def fetch() -> list[WorkerRecord]:
        records: list[WorkerRecord] = []
        async with connect() as client:
            token = ""
            while True:
                page = await client.list_workers(worker_filter, page_size=1000, page_token=token, timeout=10)
                records += page.workers
                token = page.next_page_token
                if not token:
                    return records

    records = run_against_scheduler(fetch())
    console.print(workers_table(records, f"{len(records)} worker(s) on {escape(scheduler)}"))


@workers_app.command("unregister")
def workers_unregister(
    worker_id: str,
    scheduler: SchedulerOption = "127.0.0.1:50051",
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
) -> None:
    """Unregister one worker (idempotent)."""
    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)

    async def unregister() -> str:
        async with connect() as client:
            return (await client.unregister_worker(worker_id, timeout=10)).value

    console.print(plain(f"{worker_id}: {run_against_scheduler(unregister())}"))


@workers_app.command("watch")
def workers_watch(
    scheduler: SchedulerOption = "127.0.0.1:50051",
    events: Annotated[int, typer.Option(help="Recent events shown under the table.")] = 8,
    exit_after: Annotated[
        float, typer.Option(hidden=True, help="Stop after this many seconds (tests).")
    ] = 0.0,
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
) -> None:
    """A live view of the pool: every worker and its status, with the latest lifecycle events."""
    from rich.live import Live

    from hodei.views import PoolView

    view = PoolView(recent=events)
    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)

    async def watch() -> None:
        async with connect() as client:
            with Live(view.render(scheduler), console=console, refresh_per_second=8) as live:
                async for event in client.watch_workers(include_snapshot=True):
                    view.apply(event)
                    live.update(view.render(scheduler))

    async def watch_until() -> None:
        if exit_after:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch(), exit_after)
        else:
            await watch()

    run_against_scheduler(watch_until())
