"""configure_tracing from the standard OTEL_* variables: off unless an exporter is named, the service named as
the environment says, exporters it cannot honour refused by name. (Spans across the gRPC hop are checked in
tests/integration/test_tracing.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import INVALID_SPAN

from hodei.observability import _tracing as tracing


@pytest.fixture(autouse=True)
def tracing_off_afterwards() -> Iterator[None]:
    try:
        yield
    finally:
        provider = tracing.tracer_provider()
        tracing.configure_tracing("hodei-tests", environ={})
        if isinstance(provider, TracerProvider):
            provider.shutdown()


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": " , none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},  # an endpoint alone names no exporter
    ],
)
def test_without_an_exporter_tracing_stays_off_and_costs_no_span(environ: dict[str, str]) -> None:
    assert tracing.configure_tracing("hodei-tests", environ=environ) is None

    assert tracing.tracer_provider() is None and not tracing.tracing_enabled()
    with tracing.span("register_worker.attempt", {tracing.ATTEMPT: 1}) as current:
        assert current is INVALID_SPAN
    assert tracing.client_interceptors() == [] and tracing.server_interceptors() == []


def test_the_console_exporter_makes_an_sdk_provider_named_by_otel_service_name() -> None:
    provider = tracing.configure_tracing(
        "hodei-scheduler", environ={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "sched-eu-1"}
    )

    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "sched-eu-1"
    assert tracing.tracer_provider() is provider
    assert len(tracing.client_interceptors()) == 4 and len(tracing.server_interceptors()) == 1
    with tracing.span("provision_worker") as current:
        assert current.is_recording()


def test_without_otel_service_name_the_service_is_named_by_the_caller() -> None:
    provider = tracing.configure_tracing("hodei-agent", environ={"OTEL_TRACES_EXPORTER": "otlp"})

    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "hodei-agent"


def test_otlp_over_http_is_refused_since_only_the_grpc_exporter_is_installed() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}

    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"):
        tracing.configure_tracing("hodei-tests", environ=environ)
    assert tracing.tracer_provider() is None


def test_a_provider_handed_in_replaces_the_previous_one_and_is_used_at_once() -> None:
    first, second = TracerProvider(), TracerProvider()

    tracing.configure_tracing("a", provider=first)
    tracing.configure_tracing("b", provider=second)

    assert tracing.tracer_provider() is second
    with tracing.span("decommission_worker") as current:
        assert current.is_recording()
