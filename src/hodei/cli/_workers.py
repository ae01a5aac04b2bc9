"""``hodei workers …``: look at the scheduler's workers, unregister one, watch the pool live."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated

import typer
from rich.markup import escape

from hodei._views import plain, workers_table
from hodei.cli._common import (
    ExitAfterOption,
    JsonLinesOption,
    RecentEventsOption,
    SchedulerOption,
    console,
    parse_labels,
    run_against_scheduler,
    watch_until_told,
)
from hodei.cli._security import (
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    TokenOption,
    scheduler_client,
)
from hodei.domain import WorkerRecord, WorkerStatus, WorkerType
from hodei.lifecycle import WorkerEvent

NOT_REGISTERED_EXIT = 3  # hodei workers unregister: no such worker

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

    records = run_against_scheduler(fetch(), scheduler=scheduler, tls_ca=tls_ca, tls_cert=tls_cert)
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
    """Unregister one worker. Exit codes: 0 unregistered; 3 no such worker (not_registered: nothing changed);
    1 the scheduler could not be asked; 2 a bad option."""
    from hodei.ports import UnregistrationStatus

    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)

    async def unregister() -> UnregistrationStatus:
        async with connect() as client:
            return await client.unregister_worker(worker_id, timeout=10)

    outcome = run_against_scheduler(unregister(), scheduler=scheduler, tls_ca=tls_ca, tls_cert=tls_cert)
    console.print(plain(f"{worker_id}: {outcome.value}"))
    if outcome is UnregistrationStatus.NOT_REGISTERED:
        raise typer.Exit(NOT_REGISTERED_EXIT)


@workers_app.command("watch")
def workers_watch(
    scheduler: SchedulerOption = "127.0.0.1:50051",
    events: RecentEventsOption = 8,
    as_json: JsonLinesOption = False,
    exit_after: ExitAfterOption = 0.0,
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
) -> None:
    """A live view of the pool: every worker and its status, with the latest lifecycle events. Without a
    terminal (or with --json), one line per event as it happens. Ends on SIGINT or SIGTERM."""
    import sys

    from rich.live import Live

    from hodei._views import PoolView

    view = PoolView(recent=events)
    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)
    one_line_each = as_json or not sys.stdout.isatty()

    async def watch() -> None:
        async with connect() as client:
            # Reach the scheduler (and pass its access control) before drawing anything: a dead address or a
            # refused token is one error line, not an empty table first.
            await client.list_workers(page_size=1, timeout=10)
            stream = client.watch_workers(include_snapshot=True)
            if one_line_each:
                async for event in stream:
                    print(event_json(event) if as_json else event_line(event), flush=True)
                return
            with Live(view.render(scheduler), console=console, refresh_per_second=8) as live:
                async for event in stream:
                    view.apply(event)
                    live.update(view.render(scheduler))

    with contextlib.suppress(BrokenPipeError):  # the reader went away (| head): nothing more to say
        run_against_scheduler(
            watch_until_told(watch(), exit_after=exit_after),
            scheduler=scheduler,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
        )


def event_line(event: WorkerEvent) -> str:
    """One event as one line of text: time, sequence, kind, worker, its status after, and the reason."""
    status = event.record.status.value if event.record is not None else "-"
    return (
        f"{event.time.isoformat(timespec='milliseconds')} #{event.sequence} {event.kind.value} "
        f"{event.worker_id or '-'} {status} {event.reason}".rstrip()
    )


def event_json(event: WorkerEvent) -> str:
    """One event as one JSON object on one line (the worker's labels with it, when the event carries its record)."""
    return json.dumps(
        {
            "time": event.time.isoformat(timespec="milliseconds"),
            "sequence": event.sequence,
            "kind": event.kind.value,
            "worker_id": event.worker_id,
            "status": event.record.status.value if event.record is not None else None,
            "labels": dict(event.record.labels) if event.record is not None else None,
            "reason": event.reason,
        }
    )
