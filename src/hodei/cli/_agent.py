"""``hodei agent``: the worker agent, one worker or ``--spawn N`` slots over one connection."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated, Any

import typer

from hodei.cli._common import (
    LogFormat,
    LogLevel,
    check_scheduler_addresses,
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
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    client_tls,
    read_token,
)
from hodei.domain import WorkerType


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
    work_dir: Annotated[
        str,
        typer.Option(
            envvar="HODEI_WORK_DIR",
            help="Where the jobs the scheduler assigns run: a directory per job under DIR/WORKER_ID, removed when "
            "it ends (default: $XDG_STATE_HOME/hodei/work).",
        ),
    ] = "",
    log_format: Annotated[LogFormat, log_format_option("HODEI_LOG_FORMAT")] = LogFormat.AUTO,
    log_level: Annotated[LogLevel, log_level_option("HODEI_LOG_LEVEL")] = LogLevel.INFO,
) -> None:
    """Run the worker agent: register, heartbeat, obey the scheduler; SIGTERM drains and unregisters. With
    --spawn N, N workers in one process (a slot refused ends alone; the process exits 2 if any was refused)."""
    import logging
    import os
    import socket
    from dataclasses import replace
    from pathlib import Path

    from rich.markup import escape

    from hodei.agent import AgentConfig, AgentRefused, WorkerAgent
    from hodei.agent._slots import SharedChannels, run_slots, slot_ids
    from hodei.observability._http import MetricsEndpoint
    from hodei.observability._logging import redact_text
    from hodei.observability._metrics import AgentMetrics, process_registry
    from hodei.transport._addresses import scheduler_addresses

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
    if work_dir:
        options["work_dir"] = Path(work_dir).absolute()
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
