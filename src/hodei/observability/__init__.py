"""Observability: Prometheus metrics, structured logs and OpenTelemetry traces of the registration flow.

What a program calls: :func:`configure_logging` and :func:`configure_tracing` once per process; a metrics class
per part (:class:`ControlPlaneMetrics`, :class:`SchedulerMetrics`, :class:`AgentMetrics`), all registered into
one registry (:func:`process_registry` adds the process's own CPU, memory and GC metrics), which a
:class:`MetricsEndpoint` serves.
"""

from hodei.observability._http import MetricsEndpoint
from hodei.observability._logging import LogFormat, configure_logging
from hodei.observability._metrics import AgentMetrics, ControlPlaneMetrics, SchedulerMetrics, process_registry
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
