"""Observability: Prometheus metrics, structured logs and OpenTelemetry traces of the registration flow.

What a program calls: :func:`configure_logging` and :func:`configure_tracing` once per process; a metrics class
per part (:class:`ControlPlaneMetrics`, :class:`SchedulerMetrics`, :class:`AgentMetrics`), all registered into
one registry (:func:`process_registry` adds the process's own CPU, memory and GC metrics), which a
:class:`MetricsEndpoint` serves. Logging, tracing and the HTTP endpoint are imported on first use, so that
the parts that only count (every one of hodei's, the scheduler's core among them) load neither structlog, gRPC nor
an HTTP server.
"""

from typing import TYPE_CHECKING

from hodei._lazy import lazy_names
from hodei.observability._metrics import AgentMetrics, ControlPlaneMetrics, SchedulerMetrics, process_registry

if TYPE_CHECKING:
    from hodei.observability._http import MetricsEndpoint
    from hodei.observability._logging import LogFormat, configure_logging
    from hodei.observability._tracing import configure_tracing

__all__ = [
    "AgentMetrics",
    "ControlPlaneMetrics",
    "LogFormat",
    "MetricsEndpoint",
    "SchedulerMetrics",
    "configure_logging",
    "configure_tracing",
    "process_registry",
]

__getattr__ = lazy_names(
    __name__,
    {
        "LogFormat": "hodei.observability._logging",
        "MetricsEndpoint": "hodei.observability._http",
        "configure_logging": "hodei.observability._logging",
        "configure_tracing": "hodei.observability._tracing",
    },
)
