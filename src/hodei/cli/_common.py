"""What the command line's groups share: the consoles, the options every service takes (scheduler addresses,
logs, metrics), and how a command reports a scheduler's error."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import IO, TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from hodei.observability._http import MetricsEndpoint

# Piped output is not cut to 80 columns: every field stays whole on its line, for grep and friends.
console = Console(width=None if sys.stdout.isatty() else 1000)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 1000)
T = TypeVar("T")


def _refuse_malformed(text: str, parse: Callable[[str], object]) -> str:
    """``text``, unless ``parse`` refuses it (ValueError): then a bad-parameter error, before anything starts."""
    try:
        parse(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    return text


def check_scheduler_addresses(text: str) -> str:
    """Refuse a malformed ``--scheduler`` list before anything is dialled: every address needs its port (gRPC
    would dial a missing one as :443, and wrap one out of range)."""
    from hodei.transport._addresses import scheduler_addresses

    return _refuse_malformed(text, lambda given: scheduler_addresses(given, explicit_port=True))


def check_listen(text: str) -> str:
    """Refuse a ``--listen`` that is not ``HOST:PORT`` with a port in 0-65535 (0: any free port)."""
    from hodei.observability._http import parse_listen

    return _refuse_malformed(text, parse_listen)


SchedulerOption = Annotated[
    str,
    typer.Option(
        "--scheduler",
        "-s",
        help="Scheduler address, HOST:PORT; several replicas' as HOST:PORT,HOST:PORT,... (failed over).",
        callback=check_scheduler_addresses,
    ),
]


# The options of the watch commands (hodei workers watch, hodei pools watch).
RecentEventsOption = Annotated[int, typer.Option("--events", help="Recent events shown under the table.")]
JsonLinesOption = Annotated[
    bool, typer.Option("--json", help="One JSON object per event (JSON lines) instead of the live view.")
]
ExitAfterOption = Annotated[float, typer.Option(hidden=True, help="Stop after this many seconds (tests).")]


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"
    AUTO = "auto"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def log_format_option(envvar: str | None = None) -> Any:
    return typer.Option(
        "--log-format",
        envvar=envvar,
        help="Logs on stderr: json (one object per line), console, or auto (console on a TTY).",
    )


def log_level_option(envvar: str | None = None) -> Any:
    return typer.Option("--log-level", envvar=envvar, help="The least severe level logged.")


LogFormatOption = Annotated[LogFormat, log_format_option()]
LogLevelOption = Annotated[LogLevel, log_level_option()]


def observe(
    service: str,
    log_format: LogFormat,
    log_level: LogLevel,
    *,
    native: bool = False,
    stream: IO[str] | None = None,
) -> None:
    """Structured logs on stderr (or ``stream``), and traces if the ``OTEL_*`` environment names an exporter.
    ``native``: gRPC core's own log lines become structured events too (for long-running services)."""
    from hodei.observability._logging import configure_logging
    from hodei.observability._tracing import configure_tracing

    if native:
        from hodei.observability._native_log import route_native_log

        route_native_log()
    configure_logging(log_format.value, log_level.value, stream=stream)
    try:
        configure_tracing(service)
    except ValueError as error:
        errors.print(f"hodei: cannot trace: {error}", highlight=False)
        raise typer.Exit(2) from error


def check_metrics_listen(text: str) -> str:
    """Refuse a malformed ``--metrics-listen`` before anything starts; empty means no endpoint."""
    from hodei.observability._http import parse_listen

    return _refuse_malformed(text, parse_listen) if text else text


def metrics_listen_option(envvar: str | None = None) -> Any:
    return typer.Option(
        "--metrics-listen",
        envvar=envvar,
        help="Serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free port). Default: none.",
        callback=check_metrics_listen,
    )


MetricsListenOption = Annotated[str, metrics_listen_option()]


def start_metrics(endpoint: MetricsEndpoint, who: str) -> None:
    """Start serving metrics, or exit 1 saying why not (the address is taken, or cannot be bound)."""
    try:
        endpoint.start()
    except OSError as error:
        errors.print(f"{who}: cannot serve metrics on {endpoint.listen}: {error}", highlight=False)
        raise typer.Exit(1) from error


async def until_signalled(*signals: signal.Signals) -> None:
    """Return once one of ``signals`` arrives (default: SIGINT or SIGTERM). Their handlers stay for the rest
    of the loop's life, so that a second signal does not cut short the stop that the first one began."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals or (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def watch_until_told(watch: Coroutine[Any, Any, None], *, exit_after: float = 0.0) -> None:
    """Run ``watch`` (a watch command's stream) until it ends, SIGINT or SIGTERM arrives, or ``exit_after``
    seconds pass (0: no limit); raise its error, if it ended by one."""
    watching = asyncio.create_task(watch)
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


def run_against_scheduler(
    work: Coroutine[Any, Any, T], *, scheduler: str = "", tls_ca: str = "", tls_cert: str = ""
) -> T:
    """Run ``work``; a scheduler's error is one line and exit 1. When the scheduler at ``scheduler`` cannot be
    reached, the line says whether TLS is why (``tls_ca``, ``tls_cert``: this command's TLS options)."""
    from rich.markup import escape

    from hodei.errors import ErrorCode, SchedulerError
    from hodei.observability._native_log import silence_native_log

    silence_native_log()  # gRPC core's raw lines: what they would say, the error line says
    try:
        return asyncio.run(work)
    except SchedulerError as error:
        hint = tls_hint(scheduler, tls_ca, tls_cert) if error.code is ErrorCode.UNAVAILABLE else None
        said = f"{hint} ({error})" if hint else str(error)
        errors.print(f"[red]error:[/red] {escape(said)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from error


def tls_hint(scheduler: str, tls_ca: str, tls_cert: str) -> str | None:
    """Which TLS option is missing or too many, asked of each address in ``scheduler`` in turn; None if TLS
    is not the problem."""
    from hodei.transport._addresses import scheduler_addresses
    from hodei.transport._diagnosis import tls_mismatch

    for address in scheduler_addresses(scheduler) if scheduler else ():
        hint = tls_mismatch(address, tls=bool(tls_ca), client_cert=bool(tls_cert))
        if hint:
            return hint
    return None


def parse_label(item: str) -> tuple[str, str]:
    """``k=v`` -> ("k", "v")."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"label {item!r} is not KEY=VALUE")
    return key, value


def parse_labels(text: str) -> dict[str, str]:
    """``a=1,b=2`` -> {"a": "1", "b": "2"}."""
    return dict(parse_label(item) for item in filter(None, (part.strip() for part in text.split(","))))
