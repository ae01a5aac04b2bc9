"""The ``hodei`` command. It only parses, calls the composition root, and prints."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hodei.cli._common import (
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    MetricsListenOption,
    check_listen,
    check_scheduler_addresses,
    console,
    errors,
    log_format_option,
    log_level_option,
    metrics_listen_option,
    observe,
    parse_label,
    parse_labels,
    start_metrics,
)
from hodei.cli._security import (
    WORKER_CREDENTIAL_TTL,
    AuthKeyOption,
    MetricsTlsCertOption,
    MetricsTlsClientCaOption,
    MetricsTlsKeyOption,
    ServeTlsCertOption,
    ServeTlsClientCaOption,
    ServeTlsKeyOption,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    WorkerCredentialTtlOption,
    client_tls,
    pki_app,
    read_token,
    serve_security,
    token_app,
)
from hodei.cli._workers import workers_app
from hodei.domain import WorkerType

if TYPE_CHECKING:
    pass

app = typer.Typer(help="hodei: workers that auto-register with the scheduler.", no_args_is_help=True)
scheduler_app = typer.Typer(help="Run the scheduler.", no_args_is_help=True)
app.add_typer(scheduler_app, name="scheduler")
app.add_typer(workers_app, name="workers")
app.add_typer(token_app, name="token")
app.add_typer(pki_app, name="pki")


@scheduler_app.command("serve")
def scheduler_serve(
    listen: Annotated[
        str,
        typer.Option(help="Address to listen on, HOST:PORT (port 0: any free port).", callback=check_listen),
    ] = "127.0.0.1:50051",
    heartbeat_interval: Annotated[float, typer.Option(help="Seconds between agents' heartbeats.")] = 5.0,
    lease_ttl: Annotated[
        float, typer.Option(help="Seconds without a heartbeat before a worker is LOST.")
    ] = 15.0,
    lost_grace: Annotated[float, typer.Option(help="Seconds a LOST worker is kept before removal.")] = 60.0,
    recovery_window: Annotated[
        float, typer.Option(help="Seconds after start in which nobody expires.")
    ] = 30.0,
    sweep_interval: Annotated[float, typer.Option(help="Seconds between liveness sweeps.")] = 1.0,
    heartbeat_budget: Annotated[
        float,
        typer.Option(
            help="Heartbeats per second the scheduler aims to receive, whatever the fleet's size: each agent's "
            "interval (and lease) grows with the agents connected when it says hello. 0: off, every agent "
            "heartbeats every --heartbeat-interval.",
            min=0,
        ),
    ] = 0.0,
    mass_expiry_threshold: Annotated[
        float,
        typer.Option(help="Share of leased workers unreachable at once beyond which removals slow down."),
    ] = 0.5,
    max_in_flight: Annotated[
        int,
        typer.Option(help="Registrations worked on at once; beyond, RESOURCE_EXHAUSTED with a retry delay."),
    ] = 1000,
    max_hellos_in_flight: Annotated[
        int,
        typer.Option(
            help="Agents' hellos worked on at once; beyond, RESOURCE_EXHAUSTED with a retry delay that spreads "
            "the agents waiting (after a restart, the whole fleet) over time.",
            min=1,
        ),
    ] = 2000,  # _bounds.DEFAULT_MAX_HELLOS_IN_FLIGHT (not imported: the CLI imports the scheduler lazily)
    store: Annotated[
        str,
        typer.Option(
            help="Registry store: memory, sqlite:///PATH (relative) or sqlite:////PATH (absolute), or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB (shared by several replicas). "
            "Default: sqlite in $XDG_STATE_HOME/hodei (~/.local/state/hodei/registry.db).",
            show_default=False,
        ),
    ] = "",
    metrics_listen: MetricsListenOption = "",
    auth_key: AuthKeyOption = "",
    worker_credential_ttl: WorkerCredentialTtlOption = WORKER_CREDENTIAL_TTL,
    tls_cert: ServeTlsCertOption = "",
    tls_key: ServeTlsKeyOption = "",
    tls_client_ca: ServeTlsClientCaOption = "",
    metrics_tls_cert: MetricsTlsCertOption = "",
    metrics_tls_key: MetricsTlsKeyOption = "",
    metrics_tls_client_ca: MetricsTlsClientCaOption = "",
    max_streams: Annotated[
        int,
        typer.Option(help="Agents' and watchers' streams open at once; beyond, RESOURCE_EXHAUSTED.", min=1),
    ] = 20_000,
    max_streams_per_peer: Annotated[
        int, typer.Option(help="Streams open at once from one IP address.", min=1)
    ] = 5_000,
    max_message_bytes: Annotated[
        int, typer.Option(help="The largest request accepted (RESOURCE_EXHAUSTED beyond).", min=1024)
    ] = 24 * 1024 * 1024,
    max_connections: Annotated[
        int,
        typer.Option(
            help="Connections held at once; one beyond is closed as soon as it is accepted. "
            "Default: the open-files limit (raised to its hard limit at start) minus a reserve "
            "(the larger of 256 and a twentieth of it).",
            show_default=False,
            min=0,
        ),
    ] = 0,
    log_format: LogFormatOption = LogFormat.AUTO,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Serve the scheduler's worker registry over gRPC until SIGINT or SIGTERM."""
    from hodei._bootstrap import build_scheduler, default_store_url, open_store
    from hodei.errors import SchedulerError, StoreError
    from hodei.lifecycle import LivenessConfig
    from hodei.observability._http import MetricsEndpoint
    from hodei.observability._logging import redact_text
    from hodei.observability._metrics import SchedulerMetrics, process_registry
    from hodei.server._connections import ConnectionWatch, default_max_connections, raise_open_files_limit
    from hodei.server._limits import ServerLimits

    liveness = LivenessConfig(
        heartbeat_interval=heartbeat_interval,
        lease_ttl=lease_ttl,
        lost_grace=lost_grace,
        recovery_window=recovery_window,
        sweep_interval=sweep_interval,
        mass_expiry_threshold=mass_expiry_threshold,
        heartbeat_budget=heartbeat_budget,
    )

    observe("hodei-scheduler", log_format, log_level, native=True)
    soft_before, soft, hard = raise_open_files_limit()
    max_connections = max_connections or default_max_connections(soft)
    security, metrics_tls = serve_security(
        auth_key,
        worker_credential_ttl,
        (tls_cert, tls_key, tls_client_ca),
        (metrics_tls_cert, metrics_tls_key, metrics_tls_client_ca),
    )
    try:
        limits = ServerLimits(
            max_streams=max_streams,
            max_streams_per_peer=max_streams_per_peer,
            max_message_bytes=max_message_bytes,
            max_connections=max_connections,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error

    # The registry holds many long-lived objects; the default gen-0 threshold (700) makes the collector walk
    # them over and over under load. Freeze what start-up made, and collect young objects less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)

    async def serve() -> None:
        try:
            opened = await open_store(store or default_store_url())
        except (StoreError, ValueError) as error:
            reason = error.message if isinstance(error, SchedulerError) else str(error)
            reason = redact_text(reason)
            errors.print(
                f"hodei scheduler: cannot open the registry store: {reason}", highlight=False, markup=False
            )
            raise typer.Exit(1) from error
        registry = process_registry()
        endpoint = MetricsEndpoint(registry, metrics_listen, tls=metrics_tls) if metrics_listen else None
        watch = ConnectionWatch(max_connections, registry)
        try:
            if endpoint is not None:
                start_metrics(endpoint, "hodei scheduler")
            server = build_scheduler(
                listen=listen,
                store=opened.store,
                leadership=opened.leadership,
                relay=opened.relay,
                liveness=liveness,
                max_in_flight=max_in_flight,
                max_hellos_in_flight=max_hellos_in_flight,
                metrics=SchedulerMetrics(registry),
                security=security,
                limits=limits,
            )
            try:
                address = await server.start()
            except OSError as error:
                errors.print(f"hodei scheduler: {error.strerror or error}", highlight=False, markup=False)
                raise typer.Exit(1) from error
            # Said once serving (a start that fails says one line, its reason): the limit was raised before
            # anything was opened.
            logging.getLogger("hodei.scheduler").log(
                logging.INFO if soft >= hard else logging.WARNING,
                "scheduler.open_files_limit",
                extra={
                    "soft_before": soft_before,
                    "soft": soft,
                    "hard": hard,
                    "max_connections": max_connections,
                },
            )
            shown = opened.shown
            if security.auth or security.tls is not None:
                shown += f"; auth: {'on' if security.auth else 'off'}, tls: {security.tls_mode}"
            console.print(f"hodei scheduler listening on {address} (store: {shown})", highlight=False)
            if endpoint is not None:
                console.print(f"metrics on {endpoint.url}", highlight=False)
            watch.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
            finally:
                await watch.stop()
                await server.stop()
                console.print("hodei scheduler stopped")
        finally:
            if endpoint is not None:
                endpoint.stop()
            await opened.store.close()

    asyncio.run(serve())


@app.command()
def agent(
    scheduler: Annotated[
        str,
        typer.Option(
            "--scheduler",
            "-s",
            envvar="HODEI_SCHEDULER",
            help="Scheduler address(es), HOST:PORT[,HOST:PORT...].",
            callback=check_scheduler_addresses,
        ),
    ],
    worker_id: Annotated[
        str, typer.Option(envvar="HODEI_WORKER_ID", help="This worker's id (default: hostname and pid).")
    ] = "",
    labels: Annotated[str, typer.Option(envvar="HODEI_LABELS", help="Labels, k=v,...")] = "",
    label: Annotated[
        list[str] | None, typer.Option(help="One label, k=v (repeatable; values may hold commas).")
    ] = None,
    pool: Annotated[str, typer.Option(envvar="HODEI_POOL", help="The worker's pool.")] = "default",
    worker_type: Annotated[
        WorkerType, typer.Option("--worker-type", envvar="HODEI_WORKER_TYPE", help="How this worker is run.")
    ] = WorkerType.PROCESS,
    cpu_cores: Annotated[
        int, typer.Option(envvar="HODEI_CPU_CORES", help="CPU cores offered (default: all).")
    ] = 0,
    memory_mb: Annotated[
        int, typer.Option(envvar="HODEI_MEMORY_MB", help="Memory offered in MB (default: all).")
    ] = 0,
    parent_pid: Annotated[
        int, typer.Option(help="Shut down when this process exits (set by providers).")
    ] = 0,
    metrics_listen: Annotated[str, metrics_listen_option("HODEI_METRICS_LISTEN")] = "",
    join_token: Annotated[
        str,
        typer.Option(
            envvar="HODEI_JOIN_TOKEN",
            help="The join token (or worker credential) to register with; prefer the environment or "
            "--token-file, which other users of the machine cannot read.",
            show_default=False,
        ),
    ] = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
    spawn: Annotated[
        int,
        typer.Option(
            envvar="HODEI_SPAWN",
            min=1,
            help="Worker slots in this process: N workers (WORKER_ID-1 ... WORKER_ID-N), each registered, leased "
            "and drained on its own, all over one connection to the scheduler.",
        ),
    ] = 1,
    log_format: Annotated[LogFormat, log_format_option("HODEI_LOG_FORMAT")] = LogFormat.AUTO,
    log_level: Annotated[LogLevel, log_level_option("HODEI_LOG_LEVEL")] = LogLevel.INFO,
) -> None:
    """Run the worker agent: register, heartbeat, obey the scheduler; SIGTERM drains and unregisters. With
    --spawn N, N workers in one process (a slot refused ends alone; the process exits 2 if any was refused)."""
    import logging
    import os
    import socket
    from dataclasses import replace

    from rich.markup import escape

    from hodei.agent import AgentConfig, AgentRefused, WorkerAgent
    from hodei.agent._slots import SharedChannels, run_slots, slot_ids
    from hodei.observability._http import MetricsEndpoint
    from hodei.observability._logging import redact_text
    from hodei.observability._metrics import AgentMetrics, process_registry
    from hodei.transport._client import scheduler_addresses

    observe("hodei-agent", log_format, log_level, native=True)
    options: dict[str, Any] = {
        "schedulers": scheduler_addresses(scheduler),  # the addresses its --scheduler check accepted
        "worker_id": worker_id or f"{socket.gethostname()}-{os.getpid()}",
        "labels": {**parse_labels(labels), **dict(parse_label(item) for item in label or ())},
        "pool": pool,
        "worker_type": worker_type,
        "token": read_token(join_token, token_file, option="--join-token"),
        "tls": client_tls(tls_ca, tls_cert, tls_key),
    }
    if cpu_cores:
        options["cpu_cores"] = cpu_cores
    if memory_mb:
        options["memory_mb"] = memory_mb
    if parent_pid:
        options["parent_pid"] = parent_pid
    registry = process_registry()
    config = AgentConfig(**options)
    metrics = AgentMetrics(registry)
    channels = SharedChannels(config.tls) if spawn > 1 else None
    slots = [
        WorkerAgent(replace(config, worker_id=slot), metrics=metrics, channels=channels)
        for slot in slot_ids(config.worker_id, spawn)
    ]
    endpoint = MetricsEndpoint(registry, metrics_listen) if metrics_listen else None
    if endpoint is not None:
        start_metrics(endpoint, "hodei agent")
        logging.getLogger("hodei.agent").info("agent.metrics_serving", extra={"url": endpoint.url})

    def stop(reason: str) -> None:
        for slot in slots:
            slot.request_shutdown(reason)

    async def run() -> list[AgentRefused]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig.name)
        try:
            return await run_slots(slots)
        finally:
            if channels is not None:
                await channels.aclose()

    try:
        refusals = asyncio.run(run())
    finally:
        if endpoint is not None:
            endpoint.stop()
    for refused in refusals:
        message = redact_text(str(refused))
        if refused.cause.code.name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            message += " (check the agent's token: --join-token, HODEI_JOIN_TOKEN or --token-file)"
        errors.print(f"[red]hodei agent: {escape(message)}[/red]", highlight=False, soft_wrap=True)
    if refusals:
        raise typer.Exit(2)


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
) -> None:
    """Measure registration throughput, latency, CPU and memory against the targets; or, with
    ``--scenario fleet``, a fleet of agents: cold start, steady heartbeats, SIGKILL and restart."""
    import json
    import tempfile
    from collections import Counter

    if scenario == ["fleet"]:
        _bench_fleet(agents, store=store, steady=steady, slots=slots, json_out=json_out)
        return

    from hodei.bench.report import results_table
    from hodei.bench.runner import SCENARIOS, Scale, run_benchmark
    from hodei.bench.security import BenchSecurity
    from hodei.observability._native_log import silence_native_log

    names = scenario or list(SCENARIOS)
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


def _bench_fleet(agents: int, *, store: str, steady: float, slots: int, json_out: str) -> None:
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
                run_fleet(agents, store=store, steady=steady, slots=slots, progress=progress)
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
) -> None:
    """Start a scheduler, provision agent processes, watch them become AVAILABLE, decommission them."""
    from hodei._demo import run_demo

    # The demo's story is on stdout; only trouble is logged.
    observe("hodei-demo", LogFormat.CONSOLE, LogLevel.WARNING)
    if not asyncio.run(run_demo(console, workers, hold=hold)):
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
