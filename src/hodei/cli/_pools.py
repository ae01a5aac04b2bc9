"""``hodei pools …``: apply a pools file, list the pools, look at one, watch them live."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from hodei._pool_views import (
    PoolsView,
    demand_table,
    pool_detail,
    pool_event_json,
    pool_event_line,
    pools_lines,
    pools_table,
)
from hodei._quoting import quote_short
from hodei._views import plain
from hodei.cli._common import (
    ExitAfterOption,
    JsonLinesOption,
    RecentEventsOption,
    SchedulerOption,
    console,
    errors,
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
from hodei.lifecycle import WorkerEventKind

if TYPE_CHECKING:
    from hodei.pools import PoolStatus, WaitingDemand

NO_SUCH_POOL_EXIT = 3  # hodei pools status: no such pool

pools_app = typer.Typer(help="Apply, list and watch the scheduler's resource pools.", no_args_is_help=True)


@pools_app.command("apply")
def pools_apply(
    file: Annotated[Path, typer.Argument(help="The pools file (TOML).", show_default=False)],
    scheduler: SchedulerOption = "127.0.0.1:50051",
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
) -> None:
    """Replace the scheduler's pools with those of FILE. An invalid file is refused (FILE:LINE: FIELD: what is
    wrong; exit 1) and the pools keep their definitions."""
    from hodei.pools import PoolFileError, parse_pools
    from hodei.pools._file import read_pool_file

    try:
        text = read_pool_file(file)
        parse_pools(text, source=str(file))
    except PoolFileError as error:
        errors.print(plain(f"error: {error}"), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error
    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)

    async def apply() -> list[PoolStatus]:
        async with connect() as client:
            return await client.apply_pools(str(file), text, timeout=10)

    applied = run_against_scheduler(apply(), scheduler=scheduler, tls_ca=tls_ca, tls_cert=tls_cert)
    console.print(pools_table(applied, f"{len(applied)} pool(s) applied to {escape(scheduler)}"))


@pools_app.command("list")
def pools_list(
    scheduler: SchedulerOption = "127.0.0.1:50051",
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
) -> None:
    """The pools: their kind, provider and bounds, their workers by status, and the jobs waiting for them."""
    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)

    async def fetch() -> list[PoolStatus]:
        async with connect() as client:
            return await client.list_pools(timeout=10)

    pools = run_against_scheduler(fetch(), scheduler=scheduler, tls_ca=tls_ca, tls_cert=tls_cert)
    console.print(pools_table(pools, f"{len(pools)} pool(s) on {escape(scheduler)}"))


@pools_app.command("status")
def pools_status(
    name: Annotated[str, typer.Argument(help="The pool's name.", show_default=False)],
    scheduler: SchedulerOption = "127.0.0.1:50051",
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
) -> None:
    """One pool in detail, and the jobs waiting that it fits. Exit codes: 0; 3 no such pool; 1 the scheduler
    could not be asked."""
    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)

    async def fetch() -> tuple[list[PoolStatus], list[WaitingDemand]]:
        async with connect() as client:
            return await client.list_pools(timeout=10), await client.get_demand(timeout=10)

    pools, demand = run_against_scheduler(fetch(), scheduler=scheduler, tls_ca=tls_ca, tls_cert=tls_cert)
    found = next((p for p in pools if p.spec.name == name), None)
    if found is None:
        errors.print(
            plain(f"error: no pool {quote_short(name)} on {scheduler}"), highlight=False, soft_wrap=True
        )
        raise typer.Exit(NO_SUCH_POOL_EXIT)
    console.print(pool_detail(found))
    console.print(
        demand_table([d for d in demand if name in d.pools], f"jobs waiting that {escape(name)} fits")
    )


@pools_app.command("watch")
def pools_watch(
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
    """A live view of the pools: sizes by status and jobs waiting, redrawn as workers change and jobs wait,
    are bound and released, with the latest of those events. Without a terminal (or with --json), the pools
    once, then one line per event as it happens. Ends on SIGINT or SIGTERM."""
    import sys

    from rich.live import Live

    connect = scheduler_client(scheduler, token, token_file, tls_ca, tls_cert, tls_key)
    one_line_each = as_json or not sys.stdout.isatty()
    view = PoolsView(scheduler, recent=events)

    async def watch() -> None:
        async with connect() as client:
            # Reach the scheduler (and pass its access control) before drawing anything.
            pools = await client.list_pools(timeout=10)
            stream = client.watch_workers()
            if one_line_each:
                if not as_json:
                    print(plain(pools_lines(pools)).plain, flush=True)
                async for event in stream:
                    if event.kind is WorkerEventKind.DEMAND and not event.demand:  # it says that, not what
                        event = replace(event, demand=tuple(await client.get_demand(timeout=10)))
                    line = pool_event_json(event) if as_json else plain(pool_event_line(event)).plain
                    print(line, flush=True)
                return
            view.update(pools)
            changed = asyncio.Event()
            with Live(view.render(), console=console, refresh_per_second=8) as live:

                async def redraw() -> None:  # events coalesce while the pools are being read
                    while True:
                        await changed.wait()
                        changed.clear()
                        view.update(await client.list_pools(timeout=10))
                        live.update(view.render())

                redrawing = asyncio.create_task(redraw())
                try:
                    async for event in stream:
                        view.apply(event)
                        changed.set()
                        if redrawing.done():
                            redrawing.result()  # its error
                finally:
                    redrawing.cancel()

    with contextlib.suppress(BrokenPipeError):  # the reader went away (| head): nothing more to say
        run_against_scheduler(
            watch_until_told(watch(), exit_after=exit_after),
            scheduler=scheduler,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
        )
