"""OpenTelemetry traces of the registration flow; off unless configured, and then nearly free.

One trace follows a worker across the process boundary::

    provision_worker                       (WorkerManagementService, control plane)
      register_worker.attempt              (one per attempt: worker id, attempt, error status, backoff)
        hodei.scheduler.v1.SchedulerService/RegisterWorker      (gRPC client span)
          hodei.scheduler.v1.SchedulerService/RegisterWorker    (the scheduler's server span)

The adapter called without a span of the caller's (not from ``provision_worker``) makes a ``register_worker``
span to hold its attempts.

The W3C trace context travels in the call's gRPC metadata (``traceparent``), injected by the client interceptor
of ``opentelemetry-instrumentation-grpc`` and read by its server interceptor.

:func:`configure_tracing` reads the standard environment: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``,
``none``; several comma-separated), ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the exporter's other ``OTEL_EXPORTER_OTLP_*``
variables, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` and
``OTEL_SDK_DISABLED``. With no exporter named nothing is installed: hodei makes no span, and its channels and
server get no interceptor. An application that installed an SDK tracer provider of its own (the global one)
gets hodei's spans there; tests hand :func:`configure_tracing` a provider of their own, as often as they like.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import Attributes

__all__ = [
    "ATTEMPT",
    "BACKOFF_S",
    "ERROR_CODE",
    "WORKERS",
    "WORKER_ID",
    "WORKER_TYPE",
    "client_interceptors",
    "configure_tracing",
    "continuing",
    "grouping_span",
    "mark_failed",
    "server_interceptors",
    "span",
    "trace_context",
    "tracer_provider",
    "tracing_enabled",
]

# Span attributes, named as the log fields that carry the same facts.
WORKER_ID = "hodei.worker_id"
WORKER_TYPE = "hodei.worker_type"
ATTEMPT = "hodei.attempt"
BACKOFF_S = "hodei.backoff_s"
ERROR_CODE = "hodei.error_code"
WORKERS = "hodei.workers"

TRACER_NAME = "hodei"
# Streams that live as long as an agent or a watcher would make spans hours long; health checks are noise.
UNTRACED_METHODS = ("Connect", "WatchWorkers")

_configured: trace.TracerProvider | None = None
_tracer: tuple[trace.TracerProvider, trace.Tracer] | None = None
_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)
_NOT_SET = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)  # what the global is until someone sets it


def configure_tracing(
    service_name: str,
    *,
    provider: trace.TracerProvider | None = None,
    environ: Mapping[str, str] | None = None,
) -> trace.TracerProvider | None:
    """Make hodei trace through ``provider``, or through an SDK provider built from the ``OTEL_*`` variables of
    ``environ`` (the process's by default); returns the provider, or ``None`` when tracing stays off.

    A provider built from the environment exports in batches (flushed when the process exits); it is hodei's
    alone: an application that wants one provider for everything installs it as the global provider (hodei
    uses that one when it configured none) or hands it in. Called again, it replaces what it configured; with
    no exporter in the environment it turns hodei's tracing off. Raises ``ValueError`` for an exporter it
    does not know.
    """
    global _configured
    if provider is not None:
        _configured = provider
        return provider
    _configured = None
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [name for name in names if name and name != "none"]
    if not names:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [_exporter(name, env) for name in dict.fromkeys(names)]
    # OTEL_SERVICE_NAME names the service over the caller's default (Resource.create would do the reverse).
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service_name})
    built = TracerProvider(resource=resource)
    for exporter in exporters:
        built.add_span_processor(BatchSpanProcessor(exporter))
    _configured = built
    return built


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        import sys

        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One span per line (JSON lines), on standard output as OpenTelemetry's console exporter does.
        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda s: s.to_json(indent=None) + "\n")
    if name in ("otlp", "otlp_proto_grpc"):
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol not in (None, "", "grpc"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: hodei exports OTLP over grpc only")
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name}: expected otlp, console or none")


def tracer_provider() -> trace.TracerProvider | None:
    """The provider hodei traces with: the configured one, else the global one if an application installed
    it, else ``None`` (tracing is off)."""
    if _configured is not None:
        return _configured
    found = trace.get_tracer_provider()
    if isinstance(found, _NOT_SET):
        return None
    return found


def tracing_enabled() -> bool:
    return tracer_provider() is not None


def span(name: str, attributes: Attributes = None) -> contextlib.AbstractContextManager[Span]:
    """``with span("register_worker.attempt", {...}) as current:`` — a span made current for the block, a child
    of the current one; when tracing is off, nothing (the invalid span, whose methods do nothing).

    An exception leaving the block is recorded on the span and sets its status to error.
    """
    global _tracer
    provider = tracer_provider()
    if provider is None:
        return _NO_SPAN
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, provider.get_tracer(TRACER_NAME))
    return _tracer[1].start_as_current_span(name, attributes=attributes)


def grouping_span(name: str, attributes: Attributes = None) -> contextlib.AbstractContextManager[Span]:
    """A span that groups what its block does (an operation's attempts) under one trace — made only when the
    caller has no span of its own, which groups them already (``provision_worker`` its attempts): a span
    fewer on the hot path. Otherwise as :func:`span`."""
    if tracer_provider() is None or trace.get_current_span().get_span_context().is_valid:
        return _NO_SPAN
    return span(name, attributes)


def mark_failed(current: Span, error: BaseException, *, code: str, **attributes: Any) -> None:
    """Error status on ``current`` (the exception recorded, ``hodei.error_code`` set) for an error the code
    handles inside the span's block."""
    current.set_attribute(ERROR_CODE, code)
    for key, value in attributes.items():
        current.set_attribute(key, value)
    current.record_exception(error)
    current.set_status(Status(StatusCode.ERROR, f"{code}: {error}"))


def _traced_method(details: Any) -> bool:
    method = details.method
    if isinstance(method, bytes):
        method = method.decode()
    service, _, name = str(method).lstrip("/").partition("/")
    return name not in UNTRACED_METHODS and not service.startswith("grpc.health.")


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The gRPC client interceptors that make the client spans and send the trace context; none when off."""
    provider = tracer_provider()
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=_traced_method
    )
    return list(interceptors)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The gRPC server interceptor that continues the caller's trace with a server span; none when off."""
    provider = tracer_provider()
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [
        aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=provider, filter_=_traced_method
        )
    ]


def trace_context() -> dict[str, str]:
    """The current trace as W3C headers (``traceparent``, ``tracestate``), to hand to another process in a
    message; empty when tracing is off or no span is current."""
    if tracer_provider() is None or not trace.get_current_span().get_span_context().is_valid:
        return {}
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier


@contextlib.contextmanager
def continuing(headers: Mapping[str, str]) -> Iterator[None]:
    """Spans made in the block continue the trace of ``headers`` (from :func:`trace_context`, maybe another
    process's); nothing when tracing is off or the headers say nothing usable."""
    if tracer_provider() is None or not headers:
        yield
        return
    from opentelemetry import context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # Only the two W3C headers, each bounded: they came over the network.
    carrier = {k: v[:512] for k, v in headers.items() if k in ("traceparent", "tracestate")}
    token = context.attach(TraceContextTextMapPropagator().extract(carrier))
    try:
        yield
    finally:
        context.detach(token)
