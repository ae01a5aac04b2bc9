"""Structured logs: structlog over the standard library, JSON lines for services, readable text for terminals.

hodei's modules log through ``logging.getLogger(__name__)`` with the event's context in ``extra``; a library
user who configures nothing gets Python's defaults. :func:`configure_logging` (the CLI calls it) puts one
handler on the root logger whose structlog formatter makes every record, hodei's and everyone else's, one event:

- ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` (hodei's events are stable names such as
  ``registration.retrying``), every ``extra`` key as a field of its own, and ``trace_id``/``span_id`` (hex)
  while an OpenTelemetry span is recording;
- no secret: values of keys that look like secrets (:data:`SECRET_KEY`) become ``"[redacted]"``, and passwords
  inside text (``scheme://user:PASSWORD@host``, ``password=…``, ``"token": "…"``, ``Bearer …``, a JSON Web
  Token anywhere) are masked in every string, the event and tracebacks included (tracebacks never show local
  variables), in time linear in the text (:mod:`hodei.observability._redaction`).

:func:`log_worker_event` logs one scheduler lifecycle event (the registry's ``EventHub`` publishes every change).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from hodei.lifecycle import WorkerEvent, WorkerEventKind
from hodei.observability._redaction import REDACTED, SECRET_KEY, redact, redact_text

__all__ = [
    "REDACTED",
    "SECRET_KEY",
    "LogFormat",
    "configure_logging",
    "log_worker_event",
    "redact",
    "redact_text",
]

LogFormat = Literal["json", "console", "auto"]

_LOG_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    record: logging.LogRecord | None = event_dict.get("_record")
    created = datetime.fromtimestamp(record.created, UTC) if record is not None else datetime.now(UTC)
    event_dict["timestamp"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return event_dict


def _add_extra(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The ``extra={...}`` of a standard-library call, each key a field (structlog's own marks excluded)."""
    record: logging.LogRecord | None = event_dict.get("_record")
    if record is not None and not event_dict.get("_from_structlog"):
        for key, value in record.__dict__.items():
            if key not in _LOG_RECORD_KEYS and not key.startswith("_"):
                event_dict.setdefault(key, value)
    return event_dict


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``trace_id`` and ``span_id`` of the current OpenTelemetry span, when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


class _HodeiHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler :func:`configure_logging` installed (and replaces when called again)."""


def configure_logging(
    fmt: LogFormat = "json", level: int | str = "info", *, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record, as one structured event, to ``stream`` (standard error by default).

    ``fmt``: ``json`` (one JSON object per line, for services and log shippers), ``console`` (aligned
    ``key=value`` text), or ``auto`` (console when ``stream`` is a terminal, JSON otherwise). ``level``: a
    level name (``debug``, ``info``, ``warning``…) or number. Calling it again replaces the previous setup;
    handlers that others put on the root logger stay. Returns the handler it put on the root logger.
    """
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    if fmt not in ("json", "console"):
        raise ValueError(f"log format {fmt!r}: expected json, console or auto")
    numeric = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r}: expected debug, info, warning, error or critical")
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=str)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty(), pad_event_to=32)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
        ],
        processors=[
            _add_timestamp,
            _add_extra,
            add_trace_context,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            # Tracebacks as plain text, before redaction: the console's rich tracebacks would show locals.
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = _HodeiHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _HodeiHandler)]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler


# -- the scheduler's lifecycle events ---------------------------------------------------------------------

_events_log = logging.getLogger("hodei.scheduler._events")

_EVENT_LEVELS: Mapping[WorkerEventKind, int] = {
    WorkerEventKind.LOST: logging.WARNING,
    WorkerEventKind.EXPIRED: logging.WARNING,
    WorkerEventKind.EXPIRY_SLOWED: logging.WARNING,
}
_POOL_EVENTS = frozenset({WorkerEventKind.EXPIRY_SLOWED, WorkerEventKind.EXPIRY_RESUMED})


# Registrations are logged by the gRPC service, one line per call (a batch of 10,000 is one line, not 10,000).
_LOGGED_ELSEWHERE = frozenset({WorkerEventKind.REGISTERED, WorkerEventKind.UPDATED, WorkerEventKind.SNAPSHOT})


def log_worker_event(event: WorkerEvent) -> None:
    """One log line for one lifecycle event: ``worker.connected``, ``worker.lost``, ``worker.expired`` (removed
    after its grace), ``pool.expiry_slowed``…, with ``worker_id``, ``status``, ``incarnation``, ``reason``.

    Registrations (``worker.registered``, ``worker.updated``) are the gRPC service's to log."""
    level = _EVENT_LEVELS.get(event.kind, logging.INFO)
    if event.kind in _LOGGED_ELSEWHERE or not _events_log.isEnabledFor(level):
        return
    fields: dict[str, Any] = {"sequence": event.sequence}
    if event.worker_id:
        fields["worker_id"] = event.worker_id
    if event.record is not None:
        fields["status"] = event.record.status.value
        fields["worker_type"] = event.record.worker_type.value
        fields["incarnation"] = event.record.incarnation
    if event.reason:
        fields["reason"] = event.reason
    scope = "pool" if event.kind in _POOL_EVENTS else "worker"
    _events_log.log(level, f"{scope}.{event.kind.value}", extra=fields)
