"""``hodei pools …``: apply a pools file, list the pools, look at one, watch them live."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from hodei._views import plain
from hodei.cli._common import SchedulerOption, console, errors, run_against_scheduler, until_signalled
from hodei.cli._security import (
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    TokenOption,
    scheduler_client,
)
from hodei.domain import WorkerStatus
from hodei.lifecycle import WorkerEvent, WorkerEventKind

if TYPE_CHECKING:
    from hodei.pools import PoolSpec, PoolStatus, WaitingDemand

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
    console.print(pools_table(applied, [], f"{len(applied)} pool(s) applied to {escape(scheduler)}"))


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

    async def fetch() -> tuple[list[PoolStatus], list[WaitingDemand]]:
        async with connect() as client:
            return await client.list_pools(timeout=10), await client.get_demand(timeout=10)

    pools, demand = run_against_scheduler(fetch(), scheduler=scheduler, tls_ca=tls_ca, tls_cert=tls_cert)
    console.print(pools_table(pools, demand, f"{len(pools)} pool(s) on {escape(scheduler)}"))


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
        errors.print(plain(f"error: no pool {name!r} on {scheduler}"), highlight=False, soft_wrap=True)
        raise typer.Exit(NO_SUCH_POOL_EXIT)
    console.print(pool_detail(found))
    console.print(
        demand_table([d for d in demand if name in d.pools], f"jobs waiting that {escape(name)} fits")
    )


@pools_app.command("watch")
def pools_watch(
    scheduler: SchedulerOption = "127.0.0.1:50051",
    events: Annotated[int, typer.Option(help="Recent events shown under the table.")] = 8,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per event (JSON lines) instead of the live view.")
    ] = False,
    exit_after: Annotated[
        float, typer.Option(hidden=True, help="Stop after this many seconds (tests).")
    ] = 0.0,
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
    recent: deque[WorkerEvent] = deque(maxlen=events)

    async def watch() -> None:
        async with connect() as client:
            # Reach the scheduler (and pass its access control) before drawing anything.
            pools, demand = await client.list_pools(timeout=10), await client.get_demand(timeout=10)
            stream = client.watch_workers()
            if one_line_each:
                if not as_json:
                    print(plain(pools_lines(pools, demand)).plain, flush=True)
                async for event in stream:
                    if event.kind is WorkerEventKind.DEMAND and not event.demand:  # it says that, not what
                        event = replace(event, demand=tuple(await client.get_demand(timeout=10)))
                    line = pool_event_json(event) if as_json else plain(pool_event_line(event)).plain
                    print(line, flush=True)
                return
            changed = asyncio.Event()

            def render() -> Group:
                title = f"{len(pools)} pool(s) on {escape(scheduler)}"
                lines = [plain(pool_event_line(e)) for e in recent]
                return Group(pools_table(pools, demand, title), *lines)

            with Live(render(), console=console, refresh_per_second=8) as live:

                async def redraw() -> None:  # events coalesce while the pools are being read
                    nonlocal pools, demand
                    while True:
                        await changed.wait()
                        changed.clear()
                        pools, demand = (
                            await client.list_pools(timeout=10),
                            await client.get_demand(timeout=10),
                        )
                        live.update(render())

                redrawing = asyncio.create_task(redraw())
                try:
                    async for event in stream:
                        recent.append(event)
                        changed.set()
                        if redrawing.done():
                            redrawing.result()  # its error
                finally:
                    redrawing.cancel()

    async def watch_until_told() -> None:
        watching = asyncio.create_task(watch())
        stopping = asyncio.create_task(until_signalled())
        try:
            await asyncio.wait(
                {watching, stopping}, timeout=exit_after or None, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (watching, stopping):
                task.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
        with contextlib.suppress(asyncio.CancelledError):
            await watching  # its error, if it ended by one

    with contextlib.suppress(BrokenPipeError):  # the reader went away (| head): nothing more to say
        run_against_scheduler(watch_until_told(), scheduler=scheduler, tls_ca=tls_ca, tls_cert=tls_cert)


# --- the views ---------------------------------------------------------------------------------------------------


def _bounds(spec: PoolSpec) -> str:
    return f"{spec.min}/{spec.max}"


def _by_status(status: PoolStatus) -> str:
    return ", ".join(f"{n} {s.value}" for s in WorkerStatus if (n := status.workers.get(s, 0))) or "none"


def _waiting(status: PoolStatus, demand: Sequence[WaitingDemand]) -> int:
    """The jobs waiting that this pool fits (the scheduler's count; else the demand's, for the shapes it fits)."""
    return status.waiting or sum(d.waiting for d in demand if status.spec.name in d.pools)


def pools_table(pools: Sequence[PoolStatus], demand: Sequence[WaitingDemand], title: str) -> Table:
    """The pools, one a row. ``title`` is rich markup (escape what a client gave in it)."""
    table = Table(title=title)
    for column in ("pool", "kind", "provider", "min/max", "size", "by status", "waiting"):
        table.add_column(column, overflow="fold")
    for status in sorted(pools, key=lambda p: p.spec.name):
        spec = status.spec
        table.add_row(
            plain(spec.name),
            plain(spec.kind.value),
            plain(spec.provider.value),
            plain(_bounds(spec)),
            plain(str(status.size)),
            plain(_by_status(status)),
            plain(str(_waiting(status, demand))),
        )
    return table


def pools_lines(pools: Sequence[PoolStatus], demand: Sequence[WaitingDemand]) -> str:
    """The pools as plain lines (for a pipe), one a pool."""
    return "\n".join(
        f"pool {p.spec.name!a} {p.spec.kind.value} {p.spec.provider.value} {_bounds(p.spec)} size={p.size} "
        f"[{_by_status(p)}] waiting={_waiting(p, demand)}"
        for p in sorted(pools, key=lambda p: p.spec.name)
    )


def pool_detail(status: PoolStatus) -> Table:
    """One pool's definition, field by field, and its workers by status."""
    spec, template = status.spec, status.spec.template
    table = Table(title=f"pool {escape(spec.name)}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, str]] = [("kind", spec.kind.value), ("provider", spec.provider.value)]
    rows += [("min", str(spec.min)), ("max", str(spec.max))]
    if spec.kind.value == "dynamic":
        rows += [
            ("warm", str(spec.warm)),
            ("idle_timeout", f"{spec.idle_timeout:g} s"),
            ("scale_up_cooldown", f"{spec.scale_up_cooldown:g} s"),
            ("scale_down_cooldown", f"{spec.scale_down_cooldown:g} s"),
        ]
    rows += [
        ("max_provisioning", str(spec.max_provisioning)),
        ("provision_timeout", f"{spec.provision_timeout:g} s"),
        ("max_use_count", "-" if spec.max_use_count is None else str(spec.max_use_count)),
        (
            "template",
            f"cpu {template.cpu_cores}, memory {template.memory_mb} MB, disk {template.disk_mb} MB, "
            f"gpu {template.gpu_count}",
        ),
        ("labels", ",".join(f"{k}={v}" for k, v in sorted(template.labels.items())) or "-"),
        ("image", template.image or "-"),
        ("size", str(status.size)),
        ("by status", _by_status(status)),
        ("waiting", str(status.waiting)),
    ]
    for field, value in rows:
        table.add_row(field, plain(value))
    return table


def demand_table(demand: Sequence[WaitingDemand], title: str) -> Table:
    """What waits, one shape a row: how many, the oldest wait, the pools that fit it."""
    table = Table(title=title)
    for column in ("requirements", "waiting", "oldest wait", "pools that fit"):
        table.add_column(column, overflow="fold")
    for shape in demand:
        table.add_row(
            plain(shape.shape),
            plain(str(shape.waiting)),
            plain(f"{shape.oldest_wait:.1f} s"),
            plain(",".join(shape.pools) or "none"),
        )
    return table


def _demand_text(demand: Sequence[WaitingDemand]) -> str:
    return (
        "; ".join(f"{d.shape} waiting={d.waiting} pools={','.join(d.pools) or '-'}" for d in demand) or "none"
    )


def pool_event_line(event: WorkerEvent) -> str:
    """One event as one line: time, sequence, kind, then the demand (DEMAND) or the worker, its pool and status."""
    head = f"{event.time.isoformat(timespec='milliseconds')} #{event.sequence} {event.kind.value}"
    if event.kind is WorkerEventKind.DEMAND:
        return f"{head} {_demand_text(event.demand)}"
    record = event.record
    pool = record.pool if record is not None else "-"
    status = record.status.value if record is not None else "-"
    return f"{head} {event.worker_id or '-'} pool={pool} {status} {event.reason}".rstrip()


def pool_event_json(event: WorkerEvent) -> str:
    """One event as one JSON object on one line."""
    return json.dumps(
        {
            "time": event.time.isoformat(timespec="milliseconds"),
            "sequence": event.sequence,
            "kind": event.kind.value,
            "worker_id": event.worker_id,
            "pool": event.record.pool if event.record is not None else None,
            "status": event.record.status.value if event.record is not None else None,
            "reason": event.reason,
            "demand": [
                {
                    "requirements": d.shape,
                    "waiting": d.waiting,
                    "oldest_wait": d.oldest_wait,
                    "pools": list(d.pools),
                }
                for d in event.demand
            ],
        }
    )
