"""``hodei control-plane run``: the control plane as a service — the pools' autoscaler and the reconciler over
agent processes. It parses its options and hands them to the composition root
(:func:`hodei._bootstrap.build_control_plane`, :func:`hodei._bootstrap.build_pool_autoscaler`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from hodei.cli._common import (
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    MetricsListenOption,
    SchedulerOption,
    console,
    errors,
    observe,
    start_metrics,
    until_signalled,
)
from hodei.cli._security import (
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    TokenOption,
    client_tls,
    minting_authority,
    read_token,
)

control_plane_app = typer.Typer(help="Run the control plane: the pools' autoscaler.", no_args_is_help=True)


@control_plane_app.command("run")
def control_plane_run(
    scheduler: SchedulerOption = "127.0.0.1:50051",
    pools: Annotated[
        str,
        typer.Option(
            help="A pools file (TOML) applied to the scheduler at start and again whenever it changes; an "
            "invalid one is refused and the pools keep their definitions. Default: size the pools the scheduler "
            "has (hodei pools apply).",
            show_default=False,
        ),
    ] = "",
    interval: Annotated[float, typer.Option(help="Seconds between the autoscaler's ticks.", min=0.01)] = 1.0,
    owner: Annotated[
        str,
        typer.Option(
            help="This control plane's owner id (control planes sharing a scheduler take distinct ones)."
        ),
    ] = "hodei",
    reconcile_interval: Annotated[
        float, typer.Option(help="Seconds between the reconciler's passes.", min=0.01)
    ] = 30.0,
    agent_logs: Annotated[
        str, typer.Option(help="Directory of the agents' logs (default: a new temporary directory).")
    ] = "",
    join_key: Annotated[
        str,
        typer.Option(
            envvar="HODEI_AUTH_KEY",
            help="The scheduler's token key (hodei token secret, or an Ed25519 private key): each agent started "
            "gets a join token made with it. Needed when the scheduler requires tokens.",
            show_default=False,
        ),
    ] = "",
    metrics_listen: MetricsListenOption = "",
    token: TokenOption = "",
    token_file: TokenFileOption = "",
    tls_ca: TlsCaOption = "",
    tls_cert: TlsCertOption = "",
    tls_key: TlsKeyOption = "",
    log_format: LogFormatOption = LogFormat.AUTO,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Keep the scheduler's pools of process workers at their size until SIGINT or SIGTERM; then retire the
    workers it started (they are its child processes)."""
    from hodei._bootstrap import build_control_plane, build_pool_autoscaler
    from hodei.management import PoolAutoscalerConfig, ReconcilerConfig
    from hodei.observability._http import MetricsEndpoint
    from hodei.observability._metrics import ControlPlaneMetrics, process_registry
    from hodei.pools import PoolFileError, load_pools
    from hodei.providers import ProcessProvider
    from hodei.security import JoinTokens

    observe("hodei-control-plane", log_format, log_level, native=True)
    if pools:
        try:
            load_pools(pools)
        except PoolFileError as error:
            errors.print(f"hodei control-plane: {error}", highlight=False, markup=False)
            raise typer.Exit(1) from error
    tls = client_tls(tls_ca, tls_cert, tls_key)
    credential = read_token(token, token_file)
    join_tokens = JoinTokens(minting_authority(Path(join_key), "--join-key")) if join_key else None
    metrics = ControlPlaneMetrics(process_registry())
    endpoint = MetricsEndpoint(metrics.registry, metrics_listen) if metrics_listen else None

    async def run() -> None:
        provider = ProcessProvider(
            scheduler, tls=tls, owner=owner, log_dir=agent_logs or None, join_tokens=join_tokens
        )
        service = build_control_plane(
            provider,
            scheduler=scheduler,
            metrics=metrics,
            credential=credential,
            tls=tls,
        )
        autoscaler = build_pool_autoscaler(
            service, pools_file=pools or None, config=PoolAutoscalerConfig(interval=interval)
        )
        try:
            async with service, service.reconciling(ReconcilerConfig(interval=reconcile_interval)):
                async with autoscaler:
                    console.print(
                        f"hodei control plane on {scheduler} (owner {owner}"
                        f"{', pools from ' + pools if pools else ''})",
                        highlight=False,
                        markup=False,
                    )
                    if endpoint is not None:
                        console.print(f"metrics on {endpoint.url}", highlight=False)
                    await until_signalled()
                # Its workers are its child processes: they go with it, unregistered first.
                workers = await provider.list_workers()
                await asyncio.gather(
                    *(service.decommission_worker(w.worker_id) for w in workers), return_exceptions=True
                )
        finally:
            await provider.aclose()
        console.print("hodei control plane stopped")

    if endpoint is not None:
        start_metrics(endpoint, "hodei control-plane")
    try:
        asyncio.run(run())
    finally:
        if endpoint is not None:
            endpoint.stop()
