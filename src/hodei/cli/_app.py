"""The ``hodei`` command. It only parses, calls the composition root, and prints."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from hodei.cli._agent import agent
from hodei.cli._common import LogFormat, LogLevel, console, errors, observe
from hodei.cli._control_plane import control_plane_app
from hodei.cli._jobs import jobs_app
from hodei.cli._pools import pools_app
from hodei.cli._scheduler import scheduler_app
from hodei.cli._security import pki_app, token_app
from hodei.cli._workers import workers_app

app = typer.Typer(help="hodei: workers that auto-register with the scheduler.", no_args_is_help=True)
app.add_typer(scheduler_app, name="scheduler")
app.add_typer(workers_app, name="workers")
app.add_typer(jobs_app, name="jobs")
app.add_typer(pools_app, name="pools")
app.add_typer(control_plane_app, name="control-plane")
app.add_typer(token_app, name="token")
app.add_typer(pki_app, name="pki")
app.command()(agent)


@app.command()
def bench(
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", help="Run only these scenarios (repeatable); default: all."),
    ] = None,
    target: Annotated[
        str, typer.Option(help="Benchmark this scheduler instead of starting one per scenario.")
    ] = "",
    quick: Annotated[bool, typer.Option(help="Small counts: a smoke run, not a measurement.")] = False,
    json_out: Annotated[
        str, typer.Option("--json", help="Also write the results as JSON to this file ('-': stdout).")
    ] = "",
    tls: Annotated[bool, typer.Option(help="The schedulers serve TLS (a throw-away CA).")] = False,
    auth: Annotated[bool, typer.Option(help="The schedulers require tokens (operator, join).")] = False,
    store: Annotated[
        str,
        typer.Option(
            help="The registry store of every scheduler the bench starts: sqlite, memory or postgres."
        ),
    ] = "sqlite",
    agents: Annotated[
        int, typer.Option(help="--scenario fleet: how many agents (each its own connection).", min=1)
    ] = 1000,
    steady: Annotated[float, typer.Option(help="--scenario fleet: seconds of heartbeats measured.")] = 30.0,
    slots: Annotated[
        int,
        typer.Option(help="--scenario fleet: worker slots per host, each host's over one connection.", min=1),
    ] = 1,
    heartbeat: Annotated[
        float,
        typer.Option(
            help="--scenario fleet: the heartbeat interval the scheduler hands out, in seconds.", min=0.1
        ),
    ] = 5.0,
    floor: Annotated[
        bool,
        typer.Option(
            help="--scenario fleet: first measure the same agents against a server with nothing of hodei's "
            "behind gRPC (gRPC's own cost)."
        ),
    ] = True,
) -> None:
    """Measure registration throughput, latency, CPU and memory against the targets; or, with
    ``--scenario fleet``, a fleet of agents: cold start, steady heartbeats, SIGKILL and restart."""
    import json
    import tempfile
    from collections import Counter

    if scenario == ["fleet"]:
        _bench_fleet(
            agents,
            store=store,
            steady=steady,
            slots=slots,
            heartbeat=heartbeat,
            floor=floor,
            json_out=json_out,
        )
        return

    from hodei.bench.report import results_table
    from hodei.bench.runner import POOL_SCENARIOS, SCENARIOS, Scale, run_benchmark
    from hodei.bench.security import BenchSecurity
    from hodei.observability._native_log import silence_native_log

    names = [
        n for name in scenario or list(SCENARIOS) for n in (POOL_SCENARIOS if name == "pools" else (name,))
    ]
    # Warnings (retries under load, say) go to a file, summarised after the table, so that the progress bars
    # and the table stay whole. Traced if the OTEL_* environment says so; its scheduler processes inherit it.
    silence_native_log()
    warnings = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept (and named) after the run if not empty
        "w", prefix="hodei-bench-", suffix=".log", delete=False, encoding="utf-8"
    )
    observe("hodei-bench", LogFormat.JSON, LogLevel.WARNING, stream=warnings)
    scale = Scale.quick() if quick else Scale()
    try:
        results = asyncio.run(
            run_benchmark(
                names,
                scale,
                target=target or None,
                console=errors,
                security=BenchSecurity(tls=tls, auth=auth),
                store=store,
            )
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    finally:
        warnings.close()
    document = json.dumps([r.to_json() for r in results], indent=2)
    if json_out == "-":
        print(document)
    else:
        console.print(results_table(results))
        if json_out:
            Path(json_out).write_text(document + "\n")
    logged = Counter(json.loads(line)["event"] for line in Path(warnings.name).read_text().splitlines())
    if logged:
        by_event = ", ".join(f"{n} {event}" for event, n in logged.most_common())
        errors.print(f"logged during the run: {by_event} (in {warnings.name})", highlight=False, markup=False)
    else:
        Path(warnings.name).unlink()


def _bench_fleet(
    agents: int, *, store: str, steady: float, slots: int, heartbeat: float, floor: bool, json_out: str
) -> None:
    import json

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from hodei.bench.fleet import fleet_table, run_fleet

    observe("hodei-bench", LogFormat.CONSOLE, LogLevel.WARNING)
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
    )
    with Progress(*columns, TimeElapsedColumn(), console=errors) as bar:
        phases: dict[str, Any] = {}

        def progress(phase: str, done: float, total: float) -> None:
            if phase not in phases:
                phases[phase] = bar.add_task(phase, total=total)
            bar.update(phases[phase], completed=done, total=total)

        try:
            report = asyncio.run(
                run_fleet(
                    agents,
                    store=store,
                    steady=steady,
                    heartbeat=heartbeat,
                    slots=slots,
                    floor=floor,
                    progress=progress,
                )
            )
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
    document = json.dumps(report.to_json(), indent=2)
    if json_out == "-":
        print(document)
        return
    console.print(fleet_table([report]))
    if json_out:
        Path(json_out).write_text(document + "\n")


@app.command()
def demo(
    workers: Annotated[int, typer.Option(min=1, max=200, help="How many workers to provision.")] = 5,
    hold: Annotated[
        float, typer.Option(help="Seconds to keep the workers running before decommissioning.")
    ] = 0.0,
    pools: Annotated[
        bool,
        typer.Option(
            "--pools",
            help="Instead: a dynamic pool grows from 0 on a burst of --workers jobs, runs them, shrinks back.",
        ),
    ] = False,
) -> None:
    """Start a scheduler, provision agent processes, watch them become AVAILABLE, decommission them; with
    ``--pools``, let a pool's autoscaler do it for a burst of jobs."""
    # The demo's story is on stdout; only trouble is logged.
    observe("hodei-demo", LogFormat.CONSOLE, LogLevel.WARNING)
    if pools:
        from hodei._demo_pools import run_pools_demo

        succeeded = asyncio.run(run_pools_demo(console, workers))
    else:
        from hodei._demo import run_demo

        succeeded = asyncio.run(run_demo(console, workers, hold=hold))
    if not succeeded:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print hodei's version."""
    from hodei import __version__

    console.print(__version__)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main() -> None:
    """The ``hodei`` console script. On a terminal, typer's rich help and error boxes; otherwise (a pipe, a file,
    CI) plain help and every usage error as one line on stderr, so that no width or path length can wrap it."""
    import sys

    if sys.stdout.isatty() and sys.stderr.isatty():
        with contextlib.suppress(KeyboardInterrupt):
            app()
        return
    # typer vendors click in its recent versions and uses click itself in older ones: find its exception base
    # by name rather than by a private import.
    click_exception: type[Any] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    app.rich_markup_mode = None
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        code = 130
    except click_exception as error:
        code = getattr(error, "exit_code", 1)
        if type(error).__name__ == "NoArgsIsHelpError":  # the help, asked for by giving no arguments
            error.show()
        else:
            context = getattr(error, "ctx", None)
            where = context.command_path if context is not None else "hodei"
            hint = f" (see '{where} --help')" if context is not None else ""
            print(f"{where}: error: {_one_line(error.format_message())}{hint}", file=sys.stderr, flush=True)
    except typer.Abort:
        print("hodei: aborted", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
