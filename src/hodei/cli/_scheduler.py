"""``hodei scheduler serve``: parses its options and hands them to the composition root
(:class:`hodei._bootstrap.SchedulerHost`), which owns the scheduler, its store and what runs beside it."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from hodei.cli._common import (
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    MetricsListenOption,
    check_listen,
    console,
    errors,
    observe,
    until_signalled,
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
    WorkerCredentialTtlOption,
    serve_security,
)

scheduler_app = typer.Typer(help="Run the scheduler.", no_args_is_help=True)


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
        float,
        typer.Option(
            help="Seconds after start in which nobody expires (longer while agents told to come back later are "
            "still returning, up to 4 times as long)."
        ),
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
    from hodei._bootstrap import SchedulerHost, default_store_url, open_store
    from hodei.errors import SchedulerError, StoreError
    from hodei.lifecycle import LivenessConfig
    from hodei.observability._logging import redact_text
    from hodei.observability._metrics import SchedulerMetrics, process_registry
    from hodei.server._connections import default_max_connections, raise_open_files_limit
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

    async def serve() -> None:
        try:
            opened = await open_store(store or default_store_url())
        except (StoreError, ValueError) as error:
            reason = error.message if isinstance(error, SchedulerError) else str(error)
            errors.print(
                f"hodei scheduler: cannot open the registry store: {redact_text(reason)}",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(1) from error
        host = await SchedulerHost.on_store(
            opened,
            metrics=SchedulerMetrics(process_registry()),
            metrics_listen=metrics_listen,
            metrics_tls=metrics_tls,
            max_connections=max_connections,
            tune_gc=True,
            listen=listen,
            liveness=liveness,
            max_in_flight=max_in_flight,
            max_hellos_in_flight=max_hellos_in_flight,
            security=security,
            limits=limits,
        )
        try:
            try:
                address = await host.start()
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
            shown = host.shown
            if security.auth or security.tls is not None:
                shown += f"; auth: {'on' if security.auth else 'off'}, tls: {security.tls_mode}"
            console.print(f"hodei scheduler listening on {address} (store: {shown})", highlight=False)
            if host.metrics_url:
                console.print(f"metrics on {host.metrics_url}", highlight=False)
            await until_signalled()
        finally:
            await host.stop()
        console.print("hodei scheduler stopped")

    asyncio.run(serve())
